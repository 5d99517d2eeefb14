"""Finds layers whose randomness the exported file would lose.

mcdrop keeps the noise layers it knows live (export/noise.py) and runs every other layer in
inference mode. A layer that draws random numbers of its own in training mode (an LSTM's
`dropout` / `recurrent_dropout`, a custom layer calling `keras.random.*`) would then be silently
deterministic in the file, and the uncertainty understated. So the model is traced once with
training=True, each layer's call is timed by the graph operations it adds, and every random
operation is laid at the innermost layer that created it. Layers mcdrop keeps live, or that the
user chose to leave out (--mc-layers), are not reported.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from ..runtime.errors import ExportError

# TensorFlow op types that draw random numbers, stateful and stateless alike: every one of them
# has one of these in its name (RandomUniform, StatelessRandomNormalV2, RandomGamma, Multinomial,
# TruncatedNormal, ParameterizedTruncatedNormal, ...).
RANDOM_OP_MARKERS = ("Random", "Multinomial", "TruncatedNormal")


def layers_drawing_random_numbers(model, input_specs) -> Dict[str, List[str]]:
    """{layer name: [random op types]} for every layer whose call draws random numbers in training
    mode, each op laid at the innermost layer that created it (also inside an RNN's loop body,
    which is a graph of its own), then reported at its outermost drawing layer (an LSTM, not its
    cell)."""
    import tensorflow as tf

    records, wrapped = [], []
    for layer in model._flatten_layers(include_self=False):
        original = layer.call

        def timed(*args, _layer=layer, _call=original, **kwargs):
            graph = tf.compat.v1.get_default_graph()
            start = len(graph.get_operations())
            out = _call(*args, **kwargs)
            records.append((_layer, graph, start, len(graph.get_operations())))
            return out

        layer.call = timed  # an instance attribute, removed below
        wrapped.append(layer)
    try:
        from .signature import as_model_inputs

        @tf.function(input_signature=input_specs)
        def trace(*xs):
            return model(as_model_inputs(model, xs), training=True)

        trace.get_concrete_function()
    finally:
        for layer in wrapped:
            del layer.call
    drawing: Dict[object, List[str]] = {}
    by_size = sorted(records, key=lambda record: record[3] - record[2])
    for graph in {id(record[1]): record[1] for record in records}.values():
        for index, op in enumerate(graph.get_operations()):
            if not any(marker in op.type for marker in RANDOM_OP_MARKERS):
                continue
            owner = next((layer for layer, g, start, end in by_size if g is graph and start <= index < end), None)
            if owner is not None:
                drawing.setdefault(owner, []).append(op.type)
    chains = _ancestors(model)
    found: Dict[str, List[str]] = {}
    for layer, ops in drawing.items():
        outer = next((parent for parent in chains.get(id(layer), []) if parent in drawing), layer)
        found.setdefault(outer.name, []).extend(ops)
    return found


def _ancestors(model) -> Dict[int, list]:
    """id(layer) -> the layers that contain it, outermost first (the model itself left out)."""
    chains: Dict[int, list] = {}

    def visit(layer, chain):
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            if id(sub) not in chains:
                chains[id(sub)] = chain
                visit(sub, chain + [sub])

    visit(model, [])
    return chains


def check_no_lost_randomness(model, input_specs, kept: Iterable[str], ignored: Optional[Iterable[str]]) -> None:
    """ExportError naming each layer whose randomness the file would drop, unless the user listed
    it in `ignored` (--ignore-random-layers). `kept`: the noise layers the file keeps live or the
    user deliberately left out."""
    kept, ignored = set(kept), set(ignored or ())
    names = {layer.name: layer for layer in model._flatten_layers(include_self=False)}
    unknown = sorted(ignored - set(names))
    if unknown:
        raise ExportError(f"--ignore-random-layers: the model has no layer named {', '.join(unknown)}")
    chains = _ancestors(model)

    def within(name):  # the layer and the layers holding it
        return {name} | {parent.name for parent in chains.get(id(names.get(name)), [])}

    # Keeping or ignoring a layer covers what it contains (a Bidirectional's RNNs, a nested model).
    lost = {name: ops for name, ops in layers_drawing_random_numbers(model, input_specs).items()
            if not within(name) & (kept | ignored)}
    refused = sorted(lost)
    if refused:
        shown = ", ".join(f"'{name}' ({type(names[name]).__name__})" for name in refused[:3])
        shown += f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise ExportError(
            f"layer{'s' if len(refused) > 1 else ''} {shown} draw{'' if len(refused) > 1 else 's'} random "
            "numbers in training mode that mcdrop cannot keep live (RNN dropout, custom random layers); "
            "the file would run them deterministic and understate the uncertainty. Pass "
            f"--ignore-random-layers {','.join(refused)} to export them deterministic anyway")
