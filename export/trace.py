"""Run a Keras model's layer graph ourselves, so noise layers can be swapped and passes batched.

Keras's own call applies one `training` flag to every layer; MC dropout needs the noise layers
on and everything else (BatchNorm above all) in inference mode, whatever `training=` the model
was built with. The walk also tracks, per tensor, whether it already carries the T passes
(batch T*B, pass-major) or still the plain batch B: a layer runs on the plain batch until
randomness first reaches one of its inputs, so the deterministic part of the model runs once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf
from keras import tree

from ..runtime.errors import ExportError

from .attention import call_attention, is_attention
from .convertible_ops import convertible_ops
from .noise import is_active, is_noise_layer, noise_layers, spec_for
from .recurrent import is_recurrent, recurrent_draws


def tile_passes(x, passes):
    """[B, ...] -> [T*B, ...], pass-major (row t*B + b is pass t of input b)."""
    multiples = tf.concat([tf.reshape(tf.cast(passes, tf.int32), [1]), tf.ones([len(x.shape) - 1], tf.int32)], 0)
    return tf.tile(x, multiples)


def tile_with_mask(x, passes):
    """tile_passes, keeping the Keras mask a tensor carries (an Embedding's mask_zero): layers
    such as MultiHeadAttention read it from the tensor itself, not from their node's arguments."""
    from keras.src import backend

    tiled = tile_passes(x, passes)
    mask = backend.get_keras_mask(x)
    if mask is not None:
        backend.set_keras_mask(tiled, tile_passes(mask, passes))
    return tiled


def split_passes(y, passes):
    """[T*B, ...] -> [T, B, ...]."""
    shape = tf.shape(y)
    return tf.reshape(y, tf.concat([tf.reshape(tf.cast(passes, tf.int32), [1]), [-1], shape[1:]], 0))


def sub_model(layer):
    """The functional graph inside a nested model, or None for a plain layer."""
    import keras

    if isinstance(layer, keras.Sequential):
        if layer._functional is None:
            raise ExportError(f"nested Sequential '{layer.name}' has no input shape; build it with keras.Input first")
        return layer._functional
    if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
        return layer
    return None


def layer_graph(model):
    """The functional graph of a model; a subclassed model has none we can read."""
    graph = sub_model(model)
    if graph is None:
        raise ExportError(
            f"'{model.name}' is a subclassed model; mcdrop can export Sequential and Functional models "
            "(nested ones too), whose layer graph it can read"
        )
    return graph


def draws_of(layer) -> list:
    """The random tensors one call of an active noise layer reads: one for a noise layer, one per
    mask kind and direction for a recurrent layer (export/recurrent.py)."""
    return recurrent_draws(layer) if is_recurrent(layer) else [None]


@dataclass
class Walk:
    """One walk through the model.

    noise: called as noise(layer, args, kwargs, first_draw, tiled) for every selected, active noise
    layer call; returns the layer's output with T*B rows. first_draw is the index of the call's
    first random tensor (draws_of lists them). args[0] has T*B rows already (tiled=True), or, where
    the passes start at a noise layer (not an RNN) and broadcast_noise is set, still the plain
    batch (tiled=False): the noise op itself can then broadcast it, and no tiled copy is made.
    selected: names of the noise layers to keep stochastic (None = all).
    """

    noise: Callable
    passes: object
    selected: set | None = None
    broadcast_noise: bool = False
    calls: list = field(default_factory=list)  # noise layers called, in order
    draws: int = 0  # random tensors read so far
    activation_floats: int = 0  # per-sample activations of the repeated part, for the memory bound
    once_floats: int = 0  # per-input activations of the part that runs once
    tiled_at: list = field(default_factory=list)  # layers where the passes start repeating

    def is_stochastic(self, layer) -> bool:
        return is_active(layer) and (self.selected is None or layer.name in self.selected)

    def run(self, model, inputs: list, tiled: list[bool]):
        graph = layer_graph(model)
        values = {}
        for ref, value, is_tiled in zip(graph.inputs, inputs, tiled):
            values[id(ref)] = (as_input_dtype(value, ref), is_tiled)
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                if node.is_input or not node.operation:
                    continue
                self._run_node(node, values)
        outputs = [values[id(ref)] for ref in graph.outputs]
        return [v for v, _ in outputs], [t for _, t in outputs]

    def _run_node(self, node, values):
        layer = node.operation
        refs = node.input_tensors
        any_tiled = any(values[id(r)][1] for r in refs)
        stochastic = is_noise_layer(layer) and self.is_stochastic(layer)
        inside = [] if stochastic else [sub for sub in hidden_noise_layers(layer) if self.is_stochastic(sub)]
        broadcast = stochastic and self.broadcast_noise and not any_tiled and spec_for(layer) is not None
        if broadcast:
            self.tiled_at.append(layer.name)
            local = {id(r): values[id(r)][0] for r in refs}
            out_tiled = True
        elif any_tiled or stochastic or inside:
            # Randomness joins here: every input must carry the T passes.
            if not all(values[id(r)][1] for r in refs):
                self.tiled_at.append(layer.name)
            local = {id(r): values[id(r)][0] if values[id(r)][1] else tile_with_mask(values[id(r)][0], self.passes)
                     for r in refs}
            out_tiled = True
        else:
            local = {id(r): values[id(r)][0] for r in refs}
            out_tiled = False
        args, kwargs = node.arguments.fill_in(local)

        if stochastic:
            self.calls.append(layer)
            outputs = self.noise(layer, args, kwargs, self.draws, not broadcast)
            self.draws += len(draws_of(layer))
            if spec_for(layer) is not None:
                keep_mask(args[0], outputs, self.passes if broadcast else None)
        elif spec_for(layer) is not None:
            outputs = args[0]  # inactive or not selected: Keras's inference mode is the identity
        elif is_attention(layer):
            outputs = call_attention(layer, args, kwargs)  # attention dropout 0, or left deterministic
        elif is_noise_layer(layer):
            outputs = layer(*args, **{**kwargs, "training": False})  # an RNN left deterministic
        elif sub_model(layer) is not None:
            flat = tree.flatten(args[0]) if args else tree.flatten(kwargs.get("inputs"))
            outs, outs_tiled = self.run(layer, flat, [out_tiled] * len(flat))
            # A nested model may leave some outputs untouched by noise; keep them as they are.
            outputs = outs if len(outs) > 1 else outs[0]
            for ref, is_tiled, value in zip(node.outputs, outs_tiled, outs):
                values[id(ref)] = (value, is_tiled)
            return
        else:
            # Functional graphs may also hold bare keras.ops operations (MobileNetV3's adds and
            # multiplies): they have neither sublayers nor a training mode.
            if hasattr(layer, "_flatten_layers"):
                kwargs["training"] = False  # BatchNorm & co. stay in inference mode
            with convertible_ops(), self._reaching(layer, inside):
                outputs = layer(*args, **kwargs)

        for ref, value in zip(node.outputs, tree.flatten(outputs)):
            values[id(ref)] = (value, out_tiled)
            if out_tiled:
                self.activation_floats += per_sample_size(ref.shape)
            else:
                self.once_floats += per_sample_size(ref.shape)

    @contextlib.contextmanager
    def _reaching(self, layer, inside):
        """While `layer` (a custom layer, a keras-hub TransformerEncoder) runs its own call in
        inference mode, each selected noise layer it holds is this walk's noise call: its `call`
        is shadowed by an instance attribute that hands the call to `self.noise`, with the
        shadow lifted meanwhile so that Keras's own call (the reference, an attention layer's
        projections) runs as it would. Each call takes the next random tensors, in call order."""
        def reach(sub):
            def call(*args, **kwargs):
                kwargs.pop("training", None)
                del sub.call
                try:
                    self.calls.append(sub)
                    outputs = self.noise(sub, args, kwargs, self.draws, True)
                    self.draws += len(draws_of(sub))
                finally:
                    sub.call = call
                if spec_for(sub) is not None:
                    keep_mask(args[0], outputs)
                return outputs
            return call

        for sub in inside:
            sub.call = reach(sub)
        try:
            yield
        finally:
            for sub in inside:
                del sub.call


def hidden_noise_layers(layer) -> list:
    """The noise layers a layer's own call runs (a custom layer, a keras-hub TransformerEncoder),
    not looking inside one (an attention layer's inner Dropout is its own, export/attention.py);
    none for noise layers, nested models (the walk goes through their graph) and bare ops."""
    if not hasattr(layer, "_flatten_layers") or is_noise_layer(layer) or sub_model(layer) is not None:
        return []
    return noise_layers(layer)


def as_input_dtype(value, ref):
    """The graph takes every input as float; Keras's functional call casts it to its Input's
    dtype first (int32 token ids and padding masks). Done here too, so that the casts inside the
    model see the values Keras's do: without it the converted graph read keras-hub's float
    padding mask 0.13 as 1 where Keras's cast to int32 gives 0."""
    from keras.src import backend

    dtype = backend.standardize_dtype(ref.dtype)
    if "int" in dtype or dtype == "bool":
        mask = backend.get_keras_mask(value)
        value = tf.cast(value, dtype)
        if mask is not None:
            backend.set_keras_mask(value, mask)
    return value


def keep_mask(x, y, passes=None):
    """A noise layer passes its input's Keras mask on, as Keras's own call does (tiled where the
    passes start at it)."""
    from keras.src import backend

    mask = backend.get_keras_mask(x)
    if mask is not None and backend.get_keras_mask(y) is None:
        backend.set_keras_mask(y, mask if passes is None else tile_passes(mask, passes))


def per_sample_size(shape) -> int:
    dims = [d for d in shape[1:]]
    return int(np.prod([d if d is not None else 1 for d in dims])) if dims else 1
