"""Build the MC graph: a tf.function with the T passes batched inside, converted by tf2onnx.

The noise layers read their random tensors from extra function inputs (`noise_<i>`), so the
converted graph has no TF random op for tf2onnx to drop, seed to 0 or fold into a constant.
`attach_random_nodes` then turns each of those inputs into an ONNX random node with its own
seed; before that step the graph is the test-only "masks as inputs" variant the parity tests
feed with Keras's own masks.

Each layer's random tensor is the concatenation of two parts, one of them empty: the rows of
the `masks` input that belong to it (a shared mask set, one row per pass: [T, *per-pass shape],
broadcast over the batch), and the random node's draw, whose shape has its rows axis multiplied
by "masks is empty" (so [T*B, ...] in independent mode and nothing in shared mode). One file
thus serves both modes in every binding (docs/FORMAT.md: Mask sets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import tensorflow as tf
from onnx import TensorProto, helper, numpy_helper

from ..runtime.errors import ExportError, first_line

from .attention import call_attention, inner_dropout, is_attention
from .noise import SPECS, as_shape, dims_of, spec_for
from .onnx_edits import reads
from .recurrent import RecurrentDraw, call_with_masks, draw_dims, is_recurrent, masks_from_uniform, recurrent_draws, recurrent_kind
from .signature import input_specs, output_prefixes
from .trace import Walk, split_passes, tile_passes
from .workarounds import keep_zero_pads_out_of_maxpool

OPSET = 17
IR_VERSION = 8  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 writes 14 unless told
RANDOM_PREFIX = "mcdrop_random/"
MASKS = "masks"  # the shared mask set input (docs/FORMAT.md: Mask sets)
_TINY = np.finfo(np.float32).tiny
RANDOM_OPS = {"RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Multinomial", "Bernoulli"}


def random_nodes(graph):
    return [n for n in graph.node if n.op_type in RANDOM_OPS]


def seed_of(node):
    return next((a.f for a in node.attribute if a.name == "seed"), None)


@dataclass
class NoiseCall:
    """One random tensor of the graph: a noise layer call's, one mask kind of an RNN call's, or an
    attention layer call's attention dropout (its inner Dropout's spec)."""

    layer: object
    rank: int
    recurrent: RecurrentDraw | None = None

    @property
    def spec(self):
        return SPECS["Dropout"] if is_attention(self.layer) else spec_for(self.layer)

    @property
    def distribution(self):
        return "uniform" if self.recurrent else self.spec.distribution

    @property
    def kind(self):
        if self.recurrent:
            return f"{recurrent_kind(self.layer)} {self.recurrent.part}"
        if is_attention(self.layer):
            return f"{type(self.layer).__name__} dropout"
        return self.spec.kind

    @property
    def rate(self):
        if self.recurrent:
            return self.recurrent.rate
        return self.spec.strength(inner_dropout(self.layer) if is_attention(self.layer) else self.layer)

    @property
    def part(self):
        return self.recurrent.part if self.recurrent else ""


def find_noise_calls(model, selected):
    """Trace once symbolically to learn which noise layers run, in order, and their ranks."""
    calls = []

    def record(layer, args, kwargs, index, tiled):
        if is_recurrent(layer):
            calls.extend(NoiseCall(layer, len(draw_dims(draw, args[0], None)), draw) for draw in recurrent_draws(layer))
            return layer(*args, **{**kwargs, "training": False})
        if is_attention(layer):
            def probabilities(p):
                calls.append(NoiseCall(layer, len(p.shape)))
                return p

            return call_attention(layer, args, kwargs, probabilities)
        calls.append(NoiseCall(layer, len(args[0].shape)))
        return args[0]

    specs = input_specs(model)

    @tf.function(input_signature=specs)
    def probe(*xs):
        Walk(record, tf.constant(1, tf.int64), selected).run(model, list(xs), [False] * len(xs))
        return xs[0]

    probe.get_concrete_function()
    return calls


def _entropy(p, axis=None):
    # 0 * log 0 = 0: clamp inside the log only.
    terms = p * tf.math.log(tf.maximum(p, _TINY))
    return -tf.reduce_sum(terms, axis) if axis is not None else -terms


def head_outputs(samples, head):
    """mean, variance (population, two-pass) and the entropy measures the graph can compute."""
    mean = tf.reduce_mean(samples, 0)
    variance = tf.reduce_mean(tf.square(samples - mean), 0)
    out = {"samples": samples, "mean": mean, "variance": variance}
    if head in ("softmax", "logits"):
        predictive = _entropy(mean, -1)
        expected = tf.reduce_mean(_entropy(samples, -1), 0)
    elif head in ("binary", "multilabel"):

        def bernoulli(p):
            return _entropy(p) + _entropy(1.0 - p)

        predictive = bernoulli(mean)
        expected = tf.reduce_mean(bernoulli(samples), 0)
    else:
        return out
    out.update(
        predictive_entropy=predictive,
        expected_entropy=expected,
        mutual_information=tf.maximum(predictive - expected, 0.0),
    )
    return out


def mc_function(model, heads, calls, selected, repeat_all=False):
    """The tf.function: (inputs..., passes, stochastic, noise_0..k) -> samples, mean, variance, ...
    for each output (named with its prefix, export/signature.py), one head per output.

    repeat_all tiles the input itself, so every layer runs T times: only the benchmark that
    measures what running the deterministic part once saves uses it.
    """
    inputs = input_specs(model)
    signature = inputs + [
        tf.TensorSpec([], tf.int64, name="passes"),
        tf.TensorSpec([], tf.bool, name="stochastic"),
        tf.TensorSpec([None, None], tf.float32, name=MASKS),
    ] + [tf.TensorSpec([None] * c.rank, tf.float32, name=f"noise_{i}") for i, c in enumerate(calls)]
    prefixes = output_prefixes(model)

    stats = {}

    @tf.function(input_signature=signature)
    def fn(*args):
        xs, (passes, stochastic, masks), noise = (list(args[:len(inputs)]), args[len(inputs):len(inputs) + 3],
                                                  args[len(inputs) + 3:])
        on = tf.cast(stochastic, tf.float32)
        batch = tf.shape(xs[0], out_type=tf.int64)[0]
        rows = passes * batch  # T*B
        drawing = tf.cast(tf.equal(tf.size(masks), 0), tf.int64)  # 1: independent, 0: shared masks
        shapes, layout = [], MaskColumns()

        def random_tensor(i, dims, axis=0):
            """Call i's tensor with its rows axis `axis` sized T (shared) or T*B (independent)."""
            per_pass = [d for j, d in enumerate(dims) if j != axis]
            one = tf.constant(1, tf.int64)
            shapes.append(as_shape(dims) * tf.stack([drawing if j == axis else one for j in range(len(dims))]))
            fed = layout.take(masks, per_pass)  # [T or 0, *per_pass]
            if axis:
                fed = tf.transpose(fed, [1, 0, *range(2, len(dims))])
            return tf.concat([fed, noise[i]], axis)

        def apply(layer, args, kwargs, index, tiled):
            if is_recurrent(layer):
                cell_masks = []
                for k, draw in enumerate(recurrent_draws(layer)):
                    count, _, *features = draw_dims(draw, args[0], rows)
                    r = random_tensor(index + k, [count, rows, *features], axis=1)
                    # A shared set has T rows: repeat each pass's masks for every sequence of the batch.
                    r = tf.reshape(tf.broadcast_to(tf.reshape(r, as_shape([count, passes, -1, *features])),
                                                   as_shape([count, passes, batch, *features])),
                                   as_shape([count, rows, *features]))
                    cell_masks.append((draw, masks_from_uniform(r, draw.rate * on, draw.count)))
                return call_with_masks(layer, args, kwargs, cell_masks)
            if is_attention(layer):
                # The attention probabilities [T*B, heads, query, key] get the inner Dropout's op.
                return call_attention(layer, args, kwargs, lambda p: noisy(inner_dropout(layer), p, index, True,
                                                                          SPECS["Dropout"]))
            return noisy(layer, args[0], index, tiled)

        def noisy(layer, h, index, tiled, spec=None):
            spec = spec or spec_for(layer)
            dims = spec.noise_shape(layer, dims_of(h, rows))
            # View the draw as [T, B or 1, ...]; h is [1, B, ...] where the passes start here, else
            # [T, B, ...]: the shared set's single row per pass broadcasts over the batch.
            r = tf.reshape(random_tensor(index, dims), as_shape([passes, -1, *dims[1:]]))
            x = tf.reshape(h, as_shape([passes, -1, *dims_of(h)[1:]])) if tiled else h[None]
            out = spec.apply(layer, x, r, on)
            return tf.reshape(out, as_shape([-1, *dims_of(h)[1:]]))

        walk = Walk(apply, passes, selected, broadcast_noise=True)
        if repeat_all:
            xs = [tile_passes(x, passes) for x in xs]
        ys, tiled = walk.run(model, xs, [repeat_all] * len(xs))
        out = {}
        for y, is_tiled, head, prefix in zip(ys, tiled, heads, prefixes):
            if not is_tiled:
                y = tile_passes(y, passes)  # an output no randomness reaches: T identical passes
            samples = split_passes(tf.cast(y, tf.float32), passes)
            if head == "logits":
                samples = tf.nn.softmax(samples, -1)
            out.update({prefix + name: value for name, value in head_outputs(samples, head).items()})
        out.update({f"noise_shape_{i}": s for i, s in enumerate(shapes)})
        stats.update(activation_floats=walk.activation_floats, once_floats=walk.once_floats, tiled_at=walk.tiled_at,
                     mask_layout=layout.entries if layout.shareable else None, mask_floats=layout.floats)
        return out

    return fn, signature, stats


class MaskColumns:
    """Where each call's masks sit in a row of the `masks` input: one row per pass, the calls'
    per-pass values side by side, in call order (docs/FORMAT.md: Mask sets). A call whose
    per-pass shape is known only at run time (an image size left open) makes the file
    independent-only: no call then reads `masks`."""

    def __init__(self):
        self.entries, self.floats, self.shareable = [], 0, True

    def take(self, masks, per_pass):
        static = all(isinstance(d, int) for d in per_pass)
        self.shareable &= static
        size = int(np.prod(per_pass)) if static else 0
        self.entries.append({"offset": self.floats, "shape": list(per_pass) if static else None})
        part = masks[:, self.floats:self.floats + size] if static else masks[:, :0]
        self.floats += size
        return tf.reshape(part, as_shape([-1, *per_pass]))


def convert(model, heads, calls, selected, opset=OPSET, repeat_all=False):
    """tf2onnx conversion of mc_function; returns the masks-as-inputs ModelProto and trace stats."""
    import tf2onnx

    fn, signature, stats = mc_function(model, heads, calls, selected, repeat_all)
    concrete = fn.get_concrete_function(*signature)  # tf2onnx traces the same (cached) function
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=opset)
    except Exception as err:  # tf2onnx raises bare exceptions for unsupported ops
        raise ExportError(f"tf2onnx could not convert the model: {first_line(err)}") from err
    proto.ir_version = IR_VERSION
    freeze_captured_constants(proto, concrete, len(signature))
    keep_zero_pads_out_of_maxpool(proto)
    return proto, stats


def freeze_captured_constants(proto, concrete, arguments):
    """Turn the graph inputs that tf2onnx made of captured constant tensors into initializers.

    A layer that keeps its state as a plain tensor rather than a variable (Normalization's mean
    and variance, adapted or given) is captured by the tf.function as an extra input; tf2onnx
    freezes captured variables but lists every other capture as a graph input, which nobody can
    feed. The function's own inputs come first, then one per capture, in order.
    """
    captured = {}
    for placeholder, value in zip(concrete.inputs[arguments:], concrete.captured_inputs):
        if value.dtype != tf.resource:
            captured[placeholder.name] = value
    inputs = [i for i in proto.graph.input if i.name in captured]
    for graph_input in inputs:
        proto.graph.input.remove(graph_input)
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(captured[graph_input.name]),
                                                               graph_input.name))
    expected = {spec.name for spec in concrete.structured_input_signature[0]}
    extra = sorted(i.name for i in proto.graph.input if i.name not in expected)
    if extra:
        raise ExportError(f"the converted graph has inputs nobody can feed ({', '.join(extra[:3])}); "
                          "a layer's state was not frozen into the file")


def drop_outputs(proto, prefix):
    keep = [o for o in proto.graph.output if not o.name.startswith(prefix)]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)


def masks_as_inputs(proto):
    """The test-only variant: noise tensors stay graph inputs."""
    variant = onnx.ModelProto()
    variant.CopyFrom(proto)
    drop_outputs(variant, "noise_shape_")
    return variant


def random_node_names(calls):
    """One name per noise call: the layer's name, with /2, /3... for a layer called again."""
    seen, names = {}, []
    for call in calls:
        name = call.layer.name + (f"/{call.part}" if call.part else "")
        seen[name] = seen.get(name, 0) + 1
        names.append(RANDOM_PREFIX + name + (f"/{seen[name]}" if seen[name] > 1 else ""))
    return names


def attach_random_nodes(proto, calls, seeds):
    """Replace each noise_<i> input by ConstantOfShape(noise_shape_<i>) -> Random*Like(seed).

    Seeds are distinct per node: onnxruntime seeds each node's generator from its own attribute,
    and equal seeds would give equal masks. The runtime rewrites them per session.
    """
    graph = proto.graph
    names = {f"noise_{i}" for i in range(len(calls))}
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    drop_outputs(proto, "noise_shape_")

    nodes = []
    for i, (call, seed, base) in enumerate(zip(calls, seeds, random_node_names(calls))):
        # ConstantOfShape gives RandomXLike a tensor of the noise shape, which is dynamic (T*B);
        # only its shape is read, so make it bool: a quarter of the bytes to fill.
        nodes.append(
            helper.make_node(
                "ConstantOfShape",
                [f"noise_shape_{i}"],
                [base + "/like"],
                name=base + "/like",
                value=helper.make_tensor("value", TensorProto.BOOL, [1], [False]),
            )
        )
        kind = "RandomUniformLike" if call.distribution == "uniform" else "RandomNormalLike"
        nodes.append(
            helper.make_node(kind, [base + "/like"], [f"noise_{i}"], name=base, dtype=TensorProto.FLOAT, seed=float(seed))
        )
    graph.node.extend(nodes)
    topological_sort(graph)
    return proto


def topological_sort(graph):
    """ONNX wants producers before consumers; the noise inputs we replaced were readable anywhere."""
    produced = {out for n in graph.node for out in n.output}
    needs = [[name for name in reads(n) if name in produced] for n in graph.node]
    known, ordered, pending = set(), [], list(zip(graph.node, needs))
    while pending:
        still = [(n, deps) for n, deps in pending if not all(d in known for d in deps)]
        if len(still) == len(pending):
            raise ExportError("internal: the converted graph has a cycle")
        for n, deps in pending:
            if all(d in known for d in deps):
                ordered.append(n)
        for n in ordered[len(ordered) - (len(pending) - len(still)) :]:
            known.update(n.output)
        pending = still
    ordered = [_copy(n) for n in ordered]  # detach before clearing the repeated field
    del graph.node[:]
    graph.node.extend(ordered)


def _copy(node):
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy
