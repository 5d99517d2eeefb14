"""Attention dropout kept live: keras.layers.MultiHeadAttention.

Keras's MultiHeadAttention holds an inner `Dropout` (`_dropout_layer`, built with the layer's
`dropout` rate, also 0) and calls it, in `_compute_attention`, on the attention probabilities:
softmax over the keys (with the attention mask, causal mask and the inputs' Keras masks applied)
-> dropout -> einsum with the values. The mask is therefore one [batch, heads, query, key] draw
per call, scaled by 1/(1 - rate). With `dropout=0` Keras never calls the inner layer.

As for RNN cells (export/recurrent.py), the exporter lets Keras's own code run (projections,
masks, causal mask, einsums, `return_attention_scores`) and only stands in for that inner Dropout
while the layer is called with training=True: its call becomes the exporter's noise op (or
records Keras's own draw, for the parity tests). Nothing else in the layer reads `training`.
"""

from __future__ import annotations

import contextlib

from ..runtime.errors import ExportError

KINDS = ("MultiHeadAttention",)


def is_attention(layer) -> bool:
    """A Keras MultiHeadAttention (or a subclass of it), built: it holds its inner Dropout."""
    return any(cls.__name__ in KINDS and cls.__module__.startswith("keras") for cls in type(layer).__mro__) \
        and getattr(layer, "_dropout_layer", None) is not None


def attention_rate(layer) -> float:
    return float(layer.dropout)


def inner_dropout(layer):
    """The Dropout layer whose rate, seed and semantics the attention dropout is."""
    return layer._dropout_layer


@contextlib.contextmanager
def _dropout_replaced(layer, dropout):
    """Within the block, the inner Dropout's call is `dropout(probabilities)` in training mode
    (an instance attribute shadowing the class's call, removed on exit)."""
    inner = inner_dropout(layer)
    used = []

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


def _with_query_mask(args, kwargs):
    """MultiHeadAttention reads the query's Keras mask from the query tensor itself (a padded
    Embedding's `mask_zero`), not from its `query_mask` argument; the walk's tensors (tiled with
    the passes) carry none, so put the one Keras recorded for this call back on it."""
    from keras.src import backend

    mask = kwargs.get("query_mask")
    if mask is None:
        return args, kwargs
    args, kwargs = list(args), dict(kwargs)
    if args:
        args[0] = _identity(args[0])
        backend.set_keras_mask(args[0], mask)
    else:
        kwargs["query"] = _identity(kwargs["query"])
        backend.set_keras_mask(kwargs["query"], mask)
    return args, kwargs


def _identity(x):
    # A new tensor to carry the mask: the one in the walk may be read by other layers too.
    import tensorflow as tf

    return tf.identity(x)


def call_attention(layer, args, kwargs, dropout=None):
    """layer(*args, **kwargs) as in Keras's functional run; with `dropout` (a function of the
    attention probabilities), in training mode with `dropout` applied where Keras applies its
    inner Dropout, else in inference mode."""
    args, kwargs = _with_query_mask(args, kwargs)
    if dropout is None:
        return layer(*args, **{**kwargs, "training": False})
    with _dropout_replaced(layer, dropout) as used:
        outputs = layer(*args, **{**kwargs, "training": True})
    if len(used) != 1:
        raise ExportError(
            f"layer '{layer.name}' ({type(layer).__name__}) applied its attention dropout {len(used)} times in one "
            "call (MultiHeadAttention applies it once); mcdrop cannot keep it live. Pass --ignore-random-layers "
            f"{layer.name} to export it deterministic")
    return outputs


def keras_dropout(layer):
    """The inner Dropout's own training-mode call: Keras's draw, for the reference."""
    inner = inner_dropout(layer)
    return lambda probabilities: type(inner).call(inner, probabilities, training=True)
