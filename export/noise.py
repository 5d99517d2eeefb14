"""One small declared spec per Keras noise layer kind.

Each spec says which distribution its random tensor is drawn from, what shape that tensor has,
and how the layer applies it: the exact formula of Keras's own `call(training=True)`, written
against an explicit random tensor so the exporter can later replace that tensor by an ONNX
random node (and tests can feed Keras's own masks in its place).

`on` is a float scalar, 1.0 for the Monte Carlo passes and 0.0 for the deterministic pass: it
scales the rate/stddev, and with rate 0 every formula below is the exact identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

# SELU constants, as in keras.layers.AlphaDropout.
_ALPHA = 1.6732632423543772848170429916717
_SCALE = 1.0507009873554804934193349852946
ALPHA_P = -_ALPHA * _SCALE


@dataclass(frozen=True)
class NoiseSpec:
    kind: str
    distribution: str  # "uniform" on [0, 1) or "normal" N(0, 1)
    strength: Callable  # layer -> float: the rate, or the stddev for GaussianNoise
    noise_shape: Callable  # (layer, dims of the input) -> dims of the random tensor
    apply: Callable  # (layer, x, r, on) -> tensor; x broadcasts against r


def dims_of(x, rows=None):
    """Per-axis sizes of x: ints where the shape is static, int64 scalars elsewhere.

    Static sizes let the random tensor's shape depend on the batch alone, not on the layer's
    computed input, so onnxruntime may draw it while the layers before it still run.
    """
    dynamic = tf.shape(x, out_type=tf.int64)
    dims = [d if d is not None else dynamic[i] for i, d in enumerate(x.shape)]
    if rows is not None:
        dims[0] = rows
    return dims


def as_shape(dims):
    return tf.stack([tf.cast(d, tf.int64) for d in dims])


def _full_shape(layer, dims):
    return dims


def _dropout_noise_shape(layer, dims):
    # keras.backend.tensorflow.random._get_concrete_noise_shape: None entries take the input's size.
    if layer.noise_shape is None:
        return dims
    return [dims[i] if v is None else v for i, v in enumerate(layer.noise_shape)]


def _spatial_noise_shape(layer, dims):
    # Whole feature maps drop together: keep batch and channel axes, broadcast the spatial ones.
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    keep = {0, 1} if channels_first else {0, len(dims) - 1}
    return [d if i in keep else 1 for i, d in enumerate(dims)]


def _dropout(layer, x, r, on):
    # Scale x first: where the passes start, x is still the plain batch, B rows instead of T*B.
    # (tf.where would save the Cast, but tf2onnx turns a broadcasting SelectV2 into arithmetic.)
    rate = layer.rate * on
    return (x * (1.0 / (1.0 - rate))) * tf.cast(r >= rate, x.dtype)


def gaussian_dropout_stddev(rate):
    """keras.layers.GaussianDropout's noise stddev for a drop rate."""
    return math.sqrt(rate / (1.0 - rate))


def alpha_affine(rate):
    """keras.layers.AlphaDropout's (a, b): output = a * x + b, with dropped x set to ALPHA_P.
    Works on floats and on tensors (the rate is scaled by `on` in the graph)."""
    a = ((1.0 - rate) * (1.0 + rate * ALPHA_P**2)) ** -0.5
    return a, -a * ALPHA_P * rate


def _gaussian_dropout(layer, x, r, on):
    stddev = gaussian_dropout_stddev(layer.rate) * on
    return x * (1.0 + stddev * r)


def _gaussian_noise(layer, x, r, on):
    return x + (layer.stddev * on) * r


def _alpha_dropout(layer, x, r, on):
    rate = layer.rate * on
    kept = tf.cast(r >= rate, x.dtype)
    a, b = alpha_affine(rate)
    return a * (x * kept + ALPHA_P * (1.0 - kept)) + b


def _stochastic_depth(layer, x, r, on):
    # keras.src.applications.convnext.StochasticDepth: (x / keep) * floor(keep + u), per sample.
    keep = 1.0 - layer.drop_path_rate * on
    return (x / keep) * tf.floor(keep + r)


def _per_sample_shape(layer, dims):
    return [dims[0]] + [1] * (len(dims) - 1)


def _rate(layer):
    return float(layer.rate)


SPECS = {
    spec.kind: spec
    for spec in (
        NoiseSpec("Dropout", "uniform", _rate, _dropout_noise_shape, _dropout),
        NoiseSpec("SpatialDropout1D", "uniform", _rate, _spatial_noise_shape, _dropout),
        NoiseSpec("SpatialDropout2D", "uniform", _rate, _spatial_noise_shape, _dropout),
        NoiseSpec("SpatialDropout3D", "uniform", _rate, _spatial_noise_shape, _dropout),
        NoiseSpec("GaussianDropout", "normal", _rate, _full_shape, _gaussian_dropout),
        NoiseSpec("GaussianNoise", "normal", lambda layer: float(layer.stddev), _full_shape, _gaussian_noise),
        NoiseSpec("AlphaDropout", "uniform", _rate, _dropout_noise_shape, _alpha_dropout),
        NoiseSpec("StochasticDepth", "uniform", lambda layer: float(layer.drop_path_rate), _per_sample_shape,
                  _stochastic_depth),
    )
}


def _time_distributed(inner: NoiseSpec) -> NoiseSpec:
    """TimeDistributed(noise layer): Keras calls the inner layer once per timestep (a Python loop
    over a static time axis, keras/src/layers/rnn/time_distributed.py), each call drawing its
    own [batch, ...] tensor: together one [batch, time, ...] tensor, the inner noise shape per
    step. The formulas are elementwise, so they apply to all steps at once."""
    return NoiseSpec(
        f"TimeDistributed {inner.kind}", inner.distribution,
        lambda layer: inner.strength(layer.layer),
        lambda layer, dims: [dims[0], dims[1], *inner.noise_shape(layer.layer, [dims[0], *dims[2:]])[1:]],
        lambda layer, x, r, on: inner.apply(layer.layer, x, r, on),
    )


def spec_for(layer) -> NoiseSpec | None:
    """The noise spec of a Keras layer, or None for a deterministic layer.

    Matched on the class's own name and its bases, so subclasses of Dropout (a common way to
    write "always-on" MC dropout) are recognised too.
    """
    if type(layer).__name__ == "TimeDistributed" and type(layer).__module__.startswith("keras"):
        inner = spec_for(layer.layer)
        return _time_distributed(inner) if inner is not None else None
    for cls in type(layer).__mro__:
        spec = SPECS.get(cls.__name__)
        if spec is not None and cls.__module__.startswith("keras"):
            return spec
    return None


def is_noise_layer(layer) -> bool:
    """A layer whose training-mode randomness mcdrop keeps live: a noise layer, an RNN whose cells
    have dropout (export/recurrent.py), or a MultiHeadAttention with dropout (export/attention.py).
    Rate 0 included for noise layers: such a layer is simply inactive."""
    from .attention import attention_rate, is_attention
    from .recurrent import cells_of, is_recurrent, rnn_parts

    if spec_for(layer) is not None:
        return True
    if is_attention(layer):
        return attention_rate(layer) > 0
    return is_recurrent(layer) and any(cell.dropout > 0 or cell.recurrent_dropout > 0
                                       for _, rnn in rnn_parts(layer) for cell in cells_of(rnn))


def is_active(layer) -> bool:
    """A layer with no random draw is the identity (a noise layer with rate/stddev 0) or plain
    inference (an RNN whose rates are 0, or 1, which Keras's cells ignore): no random node."""
    from .attention import attention_rate, is_attention
    from .recurrent import is_recurrent, recurrent_draws

    spec = spec_for(layer)
    if spec is not None:
        return spec.strength(layer) > 0
    if is_attention(layer):
        return 0 < attention_rate(layer) < 1
    return is_recurrent(layer) and bool(recurrent_draws(layer))


def noise_layers(model) -> list:
    """Every noise layer of a model (nested models included), not looking inside one: a
    Bidirectional's own copies of its RNN are part of it, and an attention layer's inner Dropout
    of it (also with rate 0, when the attention layer is no noise layer)."""
    from .attention import is_attention

    found, seen = [], set()

    def visit(layer):
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if is_noise_layer(sub):
                found.append(sub)
            elif not is_attention(sub):
                visit(sub)

    visit(model)
    return found
