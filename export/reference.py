"""What Keras itself computes, as the reference every parity check compares against.

Both functions call Keras's own noise layers (`layer(x, training=True)`) with every other layer in
inference mode, through the same walk the exporter uses for batching the passes.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..runtime.errors import ExportError

from .attention import call_attention, is_attention, keras_dropout
from .attention import keras_draw as attention_draw
from .attention import seed_generator as attention_seed_generator
from .noise import ALPHA_P, alpha_affine, as_shape, dims_of, gaussian_dropout_stddev, spec_for
from .recurrent import is_recurrent, keras_drawn_masks
from .signature import input_names
from .trace import Walk, split_passes, tile_passes


def model_inputs(model, x) -> list:
    """x (an array for a one-input model, or a dict by graph input name) as a list in model order."""
    if isinstance(x, dict):
        return [np.asarray(x[name], np.float32) for name in input_names(model)]
    return [np.asarray(x, np.float32)]


def _samples(model, x, passes, noise, selected=None):
    """One [T, B, ...] array per model output."""
    xs = [tf.convert_to_tensor(v) for v in model_inputs(model, x)]
    t = tf.constant(passes, tf.int64)
    walk = Walk(noise, t, selected)
    ys, tiled = walk.run(model, xs, [False] * len(xs))
    return [split_passes(tf.cast(y if is_tiled else tile_passes(y, t), tf.float32), t).numpy()
            for y, is_tiled in zip(ys, tiled)]


def _one_or_list(outputs):
    return outputs[0] if len(outputs) == 1 else outputs


def _keras_call(layer, args, kwargs):
    if is_attention(layer):  # the query's Keras mask put back (export/attention.py)
        return call_attention(layer, args, kwargs, keras_dropout(layer))
    return layer(*args, **{**kwargs, "training": True})


def keras_mc_samples(model, x, passes, selected=None, chunk=250):
    """[T, B, ...] samples with Keras's own noise layers on (its own random draws): one array per
    model output, the array itself for a one-output model."""
    runs = []
    for start in range(0, passes, chunk):
        n = min(chunk, passes - start)
        runs.append(_samples(model, x, n, lambda layer, args, kwargs, i, tiled: _keras_call(layer, args, kwargs),
                             selected))
    return _one_or_list([np.concatenate(pieces, 0) for pieces in zip(*runs)])


def keras_masked_samples(model, x, passes, selected=None):
    """One Keras MC run that also records, per noise call, the random tensor Keras drew.

    Keras 3 draws noise statelessly from (shape, seed): saving the layer's seed state, calling it
    on a probe of the noise shape and restoring the state replays the very draw the real call
    makes. The probe's output is turned back into the standard uniform/normal tensor the ONNX
    graph expects in place of its random node. Returns (samples as keras_mc_samples gives them,
    [noise tensors]).
    """
    recorded = []

    def noise(layer, args, kwargs, index, tiled):
        if is_recurrent(layer):
            # Keras draws them as its call would and keeps them cached for that very call.
            recorded.extend(keras_drawn_masks(layer, args))
            return _keras_call(layer, args, kwargs)
        if is_attention(layer):
            keras_call, generator = keras_dropout(layer), attention_seed_generator(layer)

            def recording(p):
                state = generator.state.numpy()
                recorded.append(attention_draw(layer, p))
                generator.state.assign(state)
                return keras_call(p)

            return call_attention(layer, args, kwargs, recording)
        record(layer, args[0])
        return _keras_call(layer, args, kwargs)

    def record(layer, h):
        if type(layer).__name__ == "TimeDistributed":
            # Keras's step calls draw one after another from the inner layer's generator.
            inner = layer.layer
            generator = _seed_generator(inner)
            state = generator.state.numpy()
            if h.shape[1] is None:
                raise ExportError(f"'{layer.name}': the reference replays TimeDistributed draws on a static time axis")
            steps = [keras_draw(inner, h[:, i]) for i in range(h.shape[1])]
            generator.state.assign(state)
            recorded.append(np.stack(steps, 1))
            return
        generator = _seed_generator(layer)
        state = generator.state.numpy()
        recorded.append(keras_draw(layer, h))
        generator.state.assign(state)

    samples = _one_or_list(_samples(model, x, passes, noise, selected))
    return samples, recorded


def keras_draw(layer, h):
    """The standard uniform/normal tensor equivalent to the draw the layer's next training-mode
    call on h makes (the generator advances, as that call's would)."""
    spec = spec_for(layer)
    shape = as_shape(spec.noise_shape(layer, dims_of(h)))
    if spec.kind == "GaussianNoise":
        probe = own_call(layer, tf.zeros(shape))
        r = probe / layer.stddev
    elif spec.kind == "GaussianDropout":
        probe = own_call(layer, tf.ones(shape))
        r = (probe - 1.0) / gaussian_dropout_stddev(layer.rate)
    else:
        # Dropout kinds and AlphaDropout keep an element iff its uniform draw >= rate;
        # 1.0 / 0.0 reproduce exactly that decision.
        probe = own_call(layer, tf.ones(shape))
        r = tf.cast(tf.abs(probe - _dropped_value(layer, spec.kind)) > 1e-4, tf.float32)
    return r.numpy()


def own_call(layer, x):
    """The layer class's training-mode call, also while an attention layer stands in for its inner
    Dropout's (export/attention.py)."""
    return type(layer).call(layer, x, training=True)


def _seed_generator(layer):
    """The layer's own seed generator, else Keras's global one (StochasticDepth draws from it)."""
    from keras.src.random.seed_generator import global_seed_generator

    return getattr(layer, "seed_generator", None) or global_seed_generator()


def _dropped_value(layer, kind):
    if kind != "AlphaDropout":
        return 0.0
    a, b = alpha_affine(layer.rate)
    return a * ALPHA_P + b  # a * (1 * 0 + ALPHA_P * 1) + b for a dropped 1.0
