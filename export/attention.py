"""Attention dropout kept live: keras.layers.MultiHeadAttention, GroupedQueryAttention,
Attention and AdditiveAttention.

Keras's MultiHeadAttention (and GroupedQueryAttention) holds an inner `Dropout`
(`_dropout_layer`, built with the layer's `dropout` rate, also 0) and calls it, in
`_compute_attention`, on the attention probabilities: softmax over the keys (with the attention
mask, causal mask and the inputs' Keras masks applied) -> dropout -> einsum with the values. The
mask is therefore one [batch, heads, query, key] draw per call, scaled by 1/(1 - rate). With
`dropout=0` Keras never calls the inner layer. Attention and AdditiveAttention do the same on
their [batch, query, key] weights with `backend.random.dropout(weights, rate, seed=<the layer's
seed generator>)` (keras/src/layers/attention/attention.py, `_apply_scores`).

As for RNN cells (export/recurrent.py), the exporter lets Keras's own code run (projections,
masks, causal mask, einsums, `return_attention_scores`) and only stands in for that one dropout
while the layer is called with training=True: it becomes the exporter's noise op (or records
Keras's own draw, for the parity tests). Nothing else in these layers reads `training`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..runtime.errors import ExportError

WITH_INNER_DROPOUT = ("MultiHeadAttention", "GroupedQueryAttention")
DRAWING_THEMSELVES = ("Attention",)  # AdditiveAttention is one


def _kind(layer):
    for cls in type(layer).__mro__:
        if cls.__module__.startswith("keras") and cls.__name__ in WITH_INNER_DROPOUT + DRAWING_THEMSELVES:
            return cls.__name__
    return None


def is_attention(layer) -> bool:
    """A Keras attention layer with a dropout argument (MultiHeadAttention built: it holds its
    inner Dropout)."""
    kind = _kind(layer)
    if kind in WITH_INNER_DROPOUT:
        return getattr(layer, "_dropout_layer", None) is not None
    return kind is not None


def attention_rate(layer) -> float:
    return float(layer.dropout)


@dataclass(frozen=True)
class PlainDropout:
    """What the Dropout spec (export/noise.py) reads of an attention layer that draws its dropout
    itself: Keras's `backend.random.dropout` without a noise shape is Dropout's formula."""

    rate: float
    noise_shape: None = None


def inner_dropout(layer):
    """The layer whose rate, noise shape and semantics the attention dropout's are."""
    if _kind(layer) in WITH_INNER_DROPOUT:
        return layer._dropout_layer
    return PlainDropout(attention_rate(layer))


@contextlib.contextmanager
def _dropout_replaced(layer, dropout):
    """Within the block, the layer's attention dropout is `dropout(probabilities)` in training
    mode: the inner Dropout's call shadowed by an instance attribute, or for layers that draw
    themselves, `backend.random.dropout` when called with the layer's seed generator (the swap is
    process-wide while the call lasts, as export/convertible_ops.py's)."""
    used = []
    if _kind(layer) in WITH_INNER_DROPOUT:
        inner = inner_dropout(layer)

        def call(inputs, training=None):
            if not training:
                return inputs
            used.append(True)
            return dropout(inputs)

        inner.call = call
        try:
            yield used
        finally:
            del inner.call
        return
    from keras.src import backend

    original = backend.random.dropout

    def drawn(inputs, rate, noise_shape=None, seed=None):
        if seed is not getattr(layer, "seed_generator", None):
            return original(inputs, rate, noise_shape, seed)
        used.append(True)
        return dropout(inputs)

    drawn.original = original  # for Keras's own draws while the swap lasts (keras_dropout)
    backend.random.dropout = drawn
    try:
        yield used
    finally:
        backend.random.dropout = original


def call_attention(layer, args, kwargs, dropout=None):
    """layer(*args, **kwargs) as in Keras's functional run; with `dropout` (a function of the
    attention probabilities), in training mode with `dropout` applied where Keras applies its
    inner Dropout, else in inference mode."""
    if dropout is None:
        return layer(*args, **{**kwargs, "training": False})
    with _dropout_replaced(layer, dropout) as used:
        outputs = layer(*args, **{**kwargs, "training": True})
    if len(used) != 1:
        raise ExportError(
            f"layer '{layer.name}' ({type(layer).__name__}) applied its attention dropout {len(used)} times in one "
            f"call ({_kind(layer)} applies it once); mcdrop cannot keep it live. Pass --ignore-random-layers "
            f"{layer.name} to export it deterministic")
    return outputs


def keras_dropout(layer):
    """The attention dropout as Keras draws it (its own generator), for the reference."""
    if _kind(layer) in WITH_INNER_DROPOUT:
        inner = inner_dropout(layer)
        return lambda probabilities: type(inner).call(inner, probabilities, training=True)
    from keras.src import backend

    def drawn(probabilities):
        dropout = getattr(backend.random.dropout, "original", backend.random.dropout)
        return dropout(probabilities, attention_rate(layer), seed=layer.seed_generator)

    return drawn


def keras_draw(layer, probabilities):
    """1.0 kept / 0.0 dropped: the uniform-equivalent of the draw the attention dropout's next call
    on `probabilities` makes (the generator advances, as that call's would)."""
    import tensorflow as tf

    probe = keras_dropout(layer)(tf.ones(tf.shape(probabilities)))
    return tf.cast(probe > 0, tf.float32).numpy()


def seed_generator(layer):
    return inner_dropout(layer).seed_generator if _kind(layer) in WITH_INNER_DROPOUT else layer.seed_generator
