"""The analytic profile (docs/FORMAT.md: Analytic outputs; docs/DESIGN.md: Analytic mode): a
moment-propagation graph beside the stochastic one, in the same file, that `predict(method=
"analytic")` runs in one pass instead of T.

From the first dropout on, each tensor is carried as its mean and variance, units taken as
independent (Postels et al. 2019; Brach et al. 2020):
- a keep mask (GreaterOrEqual of a uniform draw with the rate) is Bernoulli: mean 1 - rate, variance
  mean * (1 - mean); a product with it gives inverted dropout's var' = (var + mean^2) / keep - mean^2;
- MatMul, Gemm and Conv take the mean through W and the variance through W * W; Add, Sub, Mul and Div
  by a constant are affine; moves (Reshape, Transpose, Slice, ...) move both;
- ReLU: the moments of a rectified Gaussian (Erf and Exp);
- the last dropout's output is drawn as a Gaussian, `DRAWS` fixed draws, and the rest of the graph
  (the layers after the last dropout, the softmax) runs on the draws: exact for a linear suffix up to
  the Gaussian, and it keeps the logits' covariance that a per-unit variance would lose.
Anything else on the stochastic path (MaxPool, attention, recurrent layers, Gaussian noise) is
refused with one line: the approximation has no rule for it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..runtime.analytic import PREFIX  # the reader's names are the writer's
from ..runtime.errors import InputError, ModelFileError
from ..export.onnx_edits import needed_nodes
from . import analytic_covariance as covariance
from .portable import MOVES, RANDOM_OPS
# Gaussian draws of the last dropout's output that the suffix runs on (Latin hypercube): 512 moved
# the MLP's held-out gap to MC T=1000 by 0.001 only (docs/DESIGN.md: Analytic mode).
DRAWS = 256
DRAW_SEED = 0
UNIFORM_OPS = ("RandomUniformLike", "RandomUniform")
# MOVES (convert/portable.py) move values without computing on them: applied to the mean and the variance alike.
LAYER_KINDS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")
# Where a variance under this is 0: the rectified Gaussian's formulas divide by its root.
TINY_VARIANCE = 1e-12
# The ReLU rule's a = mu / s is clipped to +-RELU_CLIP: past it phi(a) < 7e-9 and Phi(a) rounds to 0 or
# 1 in float32. Unclipped, exp(-a^2 / 2) went subnormal, which x86 computes ~30x slower
# (docs/DESIGN.md: Analytic mode).
RELU_CLIP = 6.0
# The scalar initializer holding the squared spread factor (last_moments), fitted by convert_analytic.
SPREAD = PREFIX + "spread_squared"
SPREADS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 4.0)


def analytic_outputs(meta: dict) -> Dict[str, str]:
    """{output prefix: the analytic samples output's name}."""
    return {o["prefix"]: PREFIX + o["prefix"] + "samples" for o in meta.get("outputs") or [{"prefix": ""}]}


def add_analytic_graph(proto, meta: dict, path: str = "model") -> None:
    """Add the moment graph and its outputs (PREFIX + prefix + "samples": [DRAWS, batch, ...out]) to
    the standard mcdrop ModelProto `proto`, in place; refuses in one line what it cannot propagate."""
    _check_file(meta, path)
    _Walk(proto.graph, meta, path).run()


def _check_file(meta: dict, path: str) -> None:
    if meta.get("portable") is not None:
        raise InputError(f"{path} is a portable file; add the analytic graph to the standard file")
    if meta.get("analytic") is not None:
        raise InputError(f"{path} already has the analytic graph")
    layers = meta.get("stochastic_layers") or []
    if any(layer.get("mask_shape") is None for layer in layers):
        raise ModelFileError(f"{path}: format {meta.get('format')} gives no layer's mask shape, which the analytic "
                             "graph draws from; export it again")
    if not layers:
        raise InputError(f"{path} has no stochastic layer: its one pass is already exact")
    odd = [layer for layer in layers if layer.get("kind") not in LAYER_KINDS or layer.get("distribution") != "uniform"]
    if odd:
        raise InputError(f"{path}: layer {odd[0]['name']!r} ({odd[0].get('kind')}) has no moment rule; the analytic "
                         f"mode takes {', '.join(LAYER_KINDS)} only")
    heads = {o.get("head", meta.get("head")) for o in meta.get("outputs") or [meta]}
    if heads - {"softmax", "regression"}:
        raise InputError(f"{path}: the analytic mode takes softmax and regression heads, not {sorted(heads - {'softmax', 'regression'})[0]}")


class _Walk:
    """One walk over the graph in its (topological) order, adding the moment nodes."""

    def __init__(self, graph, meta: dict, path: str):
        self.graph, self.meta, self.path = graph, meta, path
        self.constants = {t.name: t for t in graph.initializer}
        self.layers = {layer["random_node"]: layer for layer in meta["stochastic_layers"]}
        self.noise: Dict[str, Optional[str]] = {"masks": None}  # uniform draws (layer name) or the fed masks (None)
        self.moments: Dict[str, Tuple[str, str]] = {}
        self.keep_of: Dict[str, str] = {}  # a keep mask's moment -> its layer
        self.drawn: Dict[str, str] = {}  # the Gaussian draws' version of a tensor after the last dropout
        self.alias: Dict[str, str] = {}  # a deterministic tensor recomputed without the random nodes
        self.chains: Dict[str, covariance.Chain] = {}  # a tensor's first-order answer to an earlier noisy input
        self.pending: Dict[str, covariance.Pending] = {}  # the last dropout's output, drawn at its product by W_out
        self.added: List = []
        self.inner: Dict[str, str] = {}  # an analytic output -> its name inside the If's branch
        self.dims: Dict[str, list] = {}
        self.count = 0
        self.consumers: Dict[str, list] = {}  # a tensor -> the source graph's nodes that read it
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.last = self._last_layer()

    # -- helpers --------------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{self.count}/{hint}"

    def add(self, op: str, inputs, hint: str = "", outputs=None, **attrs):
        from onnx import helper

        outputs = outputs or [self.name(hint or op.lower())]
        self.added.append(helper.make_node(op, [self.alias.get(i, i) for i in inputs], outputs,
                                           name=outputs[0], **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def constant(self, value, hint: str) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def squared(self, weight: str) -> str:
        """W * W: folded here for a stored weight."""
        from onnx import numpy_helper

        if weight in self.constants:
            return self.constant(np.square(numpy_helper.to_array(self.constants[weight])), "squared")
        return self.add("Mul", [weight, weight], "squared")

    def refuse(self, node, why: str = "") -> None:
        raise InputError(f"{self.path}: the analytic mode has no moment rule for {node.op_type} ({node.name!r}) on "
                         f"the stochastic path{why}; MC passes only")

    def _last_layer(self) -> str:
        """The stochastic layer after every other (shape arithmetic aside)."""
        after = {}
        for node in self.graph.node:
            if node.name in self.layers:
                seen, todo = set(), [node.output[0]]
                while todo:
                    for user in self.consumers.get(todo.pop(), []):
                        key = tuple(user.output)  # node names may be empty
                        if key not in seen and user.op_type not in ("Shape", "Size"):
                            seen.add(key)
                            todo.extend(user.output)
                after[node.name] = seen
        # The last layer's draws reach the fewest nodes (an earlier layer's reach through it).
        fewest = min(len(seen) for seen in after.values())
        last = [name for name, seen in after.items() if len(seen) == fewest]
        if len(last) != 1:
            raise InputError(f"{self.path}: the analytic mode needs one last stochastic layer, found {len(last)}")
        layer = self.layers[last[0]]
        if layer.get("noise_shape") is not None:
            raise InputError(f"{self.path}: the last stochastic layer {layer['name']!r} shares its mask across a "
                             "noise shape; the analytic mode draws a plain Dropout's output only")
        return layer["name"]

    # -- the walk ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.graph.initializer.append(_scalar(SPREAD, 1.0))
        # One pass: the shape arithmetic on `passes` is made again with 1, so the moment graph
        # runs (and fails) with nothing of an MC run's T.
        self.alias["passes"] = self.constant(np.array(1, np.int64), "one_pass")
        for node in list(self.graph.node):
            self.step(node)
        for prefix, name in analytic_outputs(self.meta).items():
            self.output(prefix + "samples", name)
        self.graph.node.extend(self.branch(needed_nodes(self.added, self.inner.values())[0]))

    def branch(self, nodes: list) -> list:
        """onnxruntime runs every node of a graph whatever outputs a run asks for: the moment graph
        sits in the then-branch of an If taken only for the analytic run's feed (passes 1, no mask
        rows), so an MC run skips it (docs/FORMAT.md: Analytic outputs)."""
        from onnx import TensorProto, helper

        def value(name, dims):
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

        names = list(self.inner)
        then = helper.make_graph(nodes, PREFIX + "moments", [], [value(self.inner[n], None) for n in names])
        # ConstantOfShape: OpenVINO reads an empty Constant [0, 0, ...] as a scalar, and refuses an
        # If whose branches differ in rank.
        empty = [node for n in names for node in (
            helper.make_node("Constant", [], [self.inner[n] + "/none_shape"], name=self.inner[n] + "/none_shape",
                             value=helper.make_tensor(self.inner[n] + "/none_shape", TensorProto.INT64,
                                                      [2 + len(self.dims[n])], [0, 0, *self.dims[n]])),
            helper.make_node("ConstantOfShape", [self.inner[n] + "/none_shape"], [self.inner[n] + "/none"],
                             name=self.inner[n] + "/none"))]
        otherwise = helper.make_graph(empty, PREFIX + "none", [], [value(self.inner[n] + "/none", None) for n in names])
        ints = {name: self.constant(np.array(v, np.int64), name) for name, v in (("zero_rows", 0), ("one_pass", 1))}
        test = [helper.make_node("Size", ["masks"], [PREFIX + "mask_floats"], name=PREFIX + "mask_floats"),
                helper.make_node("Equal", [PREFIX + "mask_floats", ints["zero_rows"]], [PREFIX + "no_rows"],
                                 name=PREFIX + "no_rows"),
                helper.make_node("Equal", ["passes", ints["one_pass"]], [PREFIX + "one_pass"], name=PREFIX + "one_pass"),
                helper.make_node("And", [PREFIX + "no_rows", PREFIX + "one_pass"], [PREFIX + "analytic_run"],
                                 name=PREFIX + "analytic_run")]
        return test + [helper.make_node("If", [PREFIX + "analytic_run"], names, name=PREFIX + "if_analytic",
                                        then_branch=then, else_branch=otherwise)]

    def step(self, node) -> None:
        op, ins = node.op_type, [i for i in node.input]
        if op in RANDOM_OPS:
            if op not in UNIFORM_OPS or node.name not in self.layers:
                self.refuse(node, " (a random op that is not a Bernoulli layer's uniform draw)")
            self.noise[node.output[0]] = self.layers[node.name]["name"]
        elif any(i in self.drawn for i in ins):
            if any(i not in self.drawn and (i in self.moments or i in self.noise) for i in ins):
                self.refuse(node, " (after the last dropout, joined with an earlier stochastic tensor)")
            outputs = [self.name(o) for o in node.output]
            self.added.append(_copy(node, [self.drawn.get(i, self.alias.get(i, i)) for i in ins], outputs))
            self.drawn.update(zip(node.output, outputs))
        elif any(i in self.noise for i in ins):
            self.draw_step(node, ins)
        elif any(i in self.moments for i in ins):
            self.moment_step(node, ins)
        elif any(i in self.alias for i in ins):
            outputs = [self.name(o) for o in node.output]
            self.added.append(_copy(node, [self.alias.get(i, i) for i in ins], outputs))
            self.alias.update(zip(node.output, outputs))

    def draw_step(self, node, ins) -> None:
        """The uniform draws and the fed masks: moved, compared with the rate, or measured."""
        op = node.op_type
        if op in ("Shape", "Size"):  # the draws' shape, not their values: left to the graph
            return
        if op in MOVES:
            layers = [self.noise[i] for i in ins if i in self.noise and self.noise[i] is not None]
            for out in node.output:
                self.noise[out] = layers[0] if layers else None
        elif op == "GreaterOrEqual" and ins[0] in self.noise and self.noise[ins[0]] is not None \
                and ins[1] not in self.noise and ins[1] not in self.moments:
            one = self.constant(np.array(1.0, np.float32), "one")
            keep = self.add("Sub", [one, ins[1]], "keep")  # P(u >= rate) for u ~ U[0, 1)
            variance = self.add("Mul", [keep, self.add("Sub", [one, keep])], "keep_variance")
            self.moments[node.output[0]] = (keep, variance)
            self.keep_of[node.output[0]] = self.noise[ins[0]]
        else:
            self.refuse(node, " (computing on the dropout draws)")

    def moment_step(self, node, ins) -> None:
        op, out = node.op_type, node.output[0]
        rule = getattr(self, "rule_" + op, None)
        if op in MOVES:
            self.moments_moved(node, ins)
        elif op in ("Shape", "Size"):
            mean = self.moments[ins[0]][0]
            self.alias[out] = self.add(op, [mean], op.lower(), **_attributes(node))
        elif rule is None:
            self.refuse(node)
        else:
            rule(node, ins)

    def moments_moved(self, node, ins) -> None:
        zero = None
        both = []
        for part in (0, 1):
            inputs = []
            for position, name in enumerate(ins):
                if name in self.moments:
                    inputs.append(self.moments[name][part])
                elif node.op_type == "Concat" and name:
                    if part == 1:
                        zero = zero or self.constant(np.array(0.0, np.float32), "zero")
                        name = self.add("Mul", [name, zero], "zero_variance")
                    inputs.append(name)
                elif position == 0 and name:
                    self.refuse(node, " (its data input is not the stochastic one)")
                else:
                    inputs.append(self.alias.get(name, name))
            outputs = [self.name(o + ("/mean", "/var")[part]) for o in node.output]
            self.added.append(_copy(node, inputs, outputs))
            both.append(outputs)
        for out, mean, var in zip(node.output, *both):
            self.moments[out] = (mean, var)
        if node.op_type in covariance.ORDER_KEEPING:
            for found in (self.chains, self.pending):
                if ins[0] in found:
                    found[node.output[0]] = found[ins[0]]

    def output(self, samples_name: str, output_name: str) -> None:
        from onnx import TensorProto, helper

        entry = next(o for o in self.meta.get("outputs") or [self.meta] if o.get("prefix", "") + "samples" == samples_name)
        dims = [int(d) for d in entry.get("shape", self.meta.get("output_shape"))[1:]]
        if samples_name in self.moments:  # no layer after the last dropout: draw the output itself
            self.drawn[samples_name] = self.draws(*self.moments[samples_name], dims)
        if samples_name not in self.drawn:
            raise InputError(f"{self.path}: output {samples_name!r} does not depend on the dropout draws the "
                             "analytic graph follows")
        shape = self.constant(np.array([DRAWS, -1, *dims], np.int64), "samples_shape")
        self.inner[output_name] = self.add("Reshape", [self.drawn[samples_name], shape], "samples")
        self.dims[output_name] = dims
        self.graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [DRAWS, "batch", *dims]))

    def draws(self, mean: str, variance: str, features) -> str:
        """mean + sqrt(variance) * z, for DRAWS fixed standard-normal z: [DRAWS, 1, ...]
        against a [1, batch, ...] tensor (the passes axis at 1)."""
        z = self.constant(normal_draws(DRAWS, int(np.prod(features))).reshape(DRAWS, 1, *features), "z")
        return self.add("Add", [mean, self.add("Mul", [self.add("Sqrt", [variance], "std"), z], "spread")], "draws")

    # -- moment rules (one per op) ------------------------------------------------------------------
    def _set(self, node, mean: str, var: str) -> None:
        self.moments[node.output[0]] = (mean, var)

    def rule_Cast(self, node, ins) -> None:
        from onnx import TensorProto

        if _attributes(node).get("to") != TensorProto.FLOAT:
            self.refuse(node, " (a cast to other than float)")
        self.moments[node.output[0]] = self.moments[ins[0]]
        if ins[0] in self.keep_of:
            self.keep_of[node.output[0]] = self.keep_of[ins[0]]

    def rule_Mul(self, node, ins) -> None:
        a, b = ins
        layer = self.keep_of.get(a) or self.keep_of.get(b)
        if layer == self.last:  # the last dropout's output: from here on, Gaussian draws
            x = b if a in self.keep_of else a
            chain, w_out = self.chains.get(x), covariance.draws_at_product(self, node.output[0], layer)
            if chain is not None and not covariance.carried(chain, w_out):
                chain = None
            self._set(node, *self.last_moments(a, b, inflate=chain is None))  # a carried chain has its w_out
            if w_out is None:
                self.drawn[node.output[0]] = self.draws(*self.moments[node.output[0]], _features(self.meta, layer))
            else:  # drawn at its product by W_out, with any covariance its units share (analytic_covariance.py)
                self.pending[node.output[0]] = covariance.Pending(
                    chain, self.moments[node.output[0]], self.moments[b if x == a else a][0], w_out)
            return
        if a in self.moments and b in self.moments:
            (ma, va), (mb, vb) = self.moments[a], self.moments[b]
            mean = self.add("Mul", [ma, mb])
            # Independent factors: Var(ab) = va vb + va mb^2 + vb ma^2.
            terms = self.add("Add", [self.add("Mul", [va, vb]), self.add("Mul", [va, self.add("Mul", [mb, mb])])])
            self._set(node, mean, self.add("Add", [terms, self.add("Mul", [vb, self.add("Mul", [ma, ma])])], "var"))
            return
        x, c = (a, b) if a in self.moments else (b, a)
        (m, v), c = self.moments[x], self.alias.get(c, c)
        self._set(node, self.add("Mul", [m, c]), self.add("Mul", [v, self.add("Mul", [c, c])], "var"))
        if x in self.chains:
            self.chains[node.output[0]] = self.chains[x].scaled(c)

    def last_moments(self, a: str, b: str, inflate: bool = True) -> Tuple[str, str]:
        """The last dropout's output with its input's variance (what earlier layers' masks put
        there) scaled by SPREAD squared (inflate): the units' covariance, which the per-unit variance
        drops, restored on average (docs/DESIGN.md: Analytic mode). Where the draws carry that
        covariance (analytic_covariance.py) the spread scales its part there instead."""
        keep, x = (a, b) if a in self.keep_of else (b, a)
        mk, vk = self.moments[keep]
        if x not in self.moments:  # the model's only dropout: its input is the same in every pass
            ma = self.alias.get(x, x)
            return self.add("Mul", [ma, mk]), self.add("Mul", [vk, self.add("Mul", [ma, ma])], "var")
        ma, va = self.moments[x]
        va = self.add("Mul", [va, SPREAD], "inflated") if inflate else va
        terms = self.add("Add", [self.add("Mul", [va, vk]), self.add("Mul", [va, self.add("Mul", [mk, mk])])])
        return self.add("Mul", [ma, mk]), self.add("Add", [terms, self.add("Mul", [vk, self.add("Mul", [ma, ma])])], "var")

    def rule_Div(self, node, ins) -> None:
        if ins[1] in self.moments:
            self.refuse(node, " (a division by a stochastic tensor)")
        m, v = self.moments[ins[0]]
        c = self.alias.get(ins[1], ins[1])
        self._set(node, self.add("Div", [m, c]), self.add("Div", [v, self.add("Mul", [c, c])], "var"))
        if ins[0] in self.chains:
            self.chains[node.output[0]] = self.chains[ins[0]].scaled(self.add("Reciprocal", [c]))

    def _add_or_sub(self, node, ins) -> None:
        a, b = ins
        means = [self.moments[i][0] if i in self.moments else i for i in ins]
        variances = [self.moments[i][1] for i in ins if i in self.moments]
        # Independent terms: variances add (a residual sum of correlated terms is an approximation).
        var = variances[0] if len(variances) == 1 else self.add("Add", variances, "var")
        self._set(node, self.add(node.op_type, means), var)
        if len(variances) == 1 and ins[0] in self.chains:  # x + b, x - b: a bias moves no noise
            self.chains[node.output[0]] = self.chains[ins[0]]
        elif len(variances) == 1 and node.op_type == "Add" and ins[1] in self.chains:
            self.chains[node.output[0]] = self.chains[ins[1]]

    rule_Add = rule_Sub = _add_or_sub

    def rule_Neg(self, node, ins) -> None:
        m, v = self.moments[ins[0]]
        self._set(node, self.add("Neg", [m]), v)

    def rule_MatMul(self, node, ins) -> None:
        if ins[0] in self.pending:
            return covariance.product_drawn(self, node, ins, SPREAD)
        if all(i in self.moments for i in ins):
            self.refuse(node, " (a product of two stochastic tensors)")
        if ins[0] in self.moments:
            m, v = self.moments[ins[0]]
            self._set(node, self.add("MatMul", [m, ins[1]]), self.add("MatMul", [v, self.squared(ins[1])], "var"))
            self.start_chain(node, ins)
        else:
            m, v = self.moments[ins[1]]
            self._set(node, self.add("MatMul", [ins[0], m]), self.add("MatMul", [self.squared(ins[0]), v], "var"))

    def rule_Gemm(self, node, ins) -> None:
        if ins[0] in self.pending:
            return covariance.product_drawn(self, node, ins, SPREAD)
        attrs = _attributes(node)
        if ins[1] in self.moments or (len(ins) > 2 and ins[2] in self.moments):
            self.refuse(node, " (a stochastic weight)")
        m, v = self.moments[ins[0]]
        mean = self.add("Gemm", [m, *ins[1:]], **attrs)
        var_attrs = {k: attrs[k] for k in ("transA", "transB") if k in attrs}
        var = self.add("Gemm", [v, self.squared(ins[1])], "var", alpha=float(attrs.get("alpha", 1.0)) ** 2, **var_attrs)
        self._set(node, mean, var)
        self.start_chain(node, ins)

    def start_chain(self, node, ins) -> None:
        """A product of a noisy x by a stored weight starts a chain (analytic_covariance.py)."""
        weight = covariance.product_weight(self, node, ins)
        if weight is not None:
            self.chains[node.output[0]] = covariance.Chain(self.moments[ins[0]], weight, self.moments[node.output[0]][1],
                                                           covariance.stored_name(node))

    def rule_Conv(self, node, ins) -> None:
        if any(i in self.moments for i in ins[1:]):
            self.refuse(node, " (a stochastic weight)")
        m, v = self.moments[ins[0]]
        attrs = _attributes(node)
        self._set(node, self.add("Conv", [m, *ins[1:]], **attrs),
                  self.add("Conv", [v, self.squared(ins[1])], "var", **attrs))

    def rule_Relu(self, node, ins) -> None:
        """The rectified Gaussian: E = mu Phi(a) + s phi(a), Var = v Phi(a) + E (mu - E), a = mu / s,
        with a clipped to +-RELU_CLIP (and E to >= 0) so that no value is subnormal; this form of Var
        also avoids E[y^2] - E^2's cancellation (docs/DESIGN.md: Analytic mode)."""
        m, v = self.moments[ins[0]]
        c = {name: self.constant(np.array(value, np.float32), name) for name, value in
             (("tiny", TINY_VARIANCE), ("half", 0.5), ("sqrt_half", np.sqrt(0.5)), ("zero", 0.0),
              ("low", -RELU_CLIP), ("high", RELU_CLIP), ("log_sqrt_2pi", np.log(np.sqrt(2 * np.pi))))}
        v = self.add("Max", [v, c["tiny"]], "v")
        s = self.add("Sqrt", [v], "s")
        u = self.add("Mul", [self.add("Clip", [self.add("Div", [m, s], "a"), c["low"], c["high"]]), c["sqrt_half"]], "u")
        cdf = self.add("Add", [c["half"], self.add("Mul", [c["half"], self.add("Erf", [u])])], "cdf")
        # phi(a) = exp(-a^2 / 2 - log sqrt(2 pi)), with u = a / sqrt(2)
        pdf = self.add("Exp", [self.add("Sub", [self.add("Neg", [self.add("Mul", [u, u])]), c["log_sqrt_2pi"]])], "pdf")
        mean = self.add("Relu", [self.add("Add", [self.add("Mul", [m, cdf]), self.add("Mul", [s, pdf])])], "relu_mean")
        spread = self.add("Mul", [mean, self.add("Sub", [m, mean])])
        var = self.add("Max", [self.add("Add", [self.add("Mul", [v, cdf]), spread]), c["zero"]], "relu_var")
        self._set(node, mean, var)
        if ins[0] in self.chains:  # the expected slope, Phi(a)
            self.chains[node.output[0]] = self.chains[ins[0]].scaled(cdf)


def _scalar(name: str, value: float):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(value, np.float32), name)


def set_spread(proto, spread: float) -> None:
    """The factor on the std of the last dropout's input (last_moments), in place."""
    found = next(t for t in proto.graph.initializer if t.name == SPREAD)
    found.CopyFrom(_scalar(SPREAD, spread ** 2))


def _copy(node, inputs, outputs):
    from onnx import helper

    return helper.make_node(node.op_type, inputs, outputs, name=outputs[0], domain=node.domain or None,
                            **_attributes(node))


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def normal_draws(count: int, units: int, seed: int = DRAW_SEED) -> np.ndarray:
    """[count, units] standard-normal draws by Latin hypercube: each unit's draws sit one in each of
    `count` equal-probability strata, which takes the sampling noise of a sum over units (a logit)
    well under plain draws'."""
    from statistics import NormalDist

    rng = np.random.default_rng(seed)
    strata = np.stack([rng.permutation(count) for _ in range(units)], axis=1)
    uniform = (strata + rng.random((count, units))) / count
    return np.vectorize(NormalDist().inv_cdf, otypes=[np.float32])(uniform)


def _features(meta: dict, layer_name: str) -> list:
    layer = next(layer for layer in meta["stochastic_layers"] if layer["name"] == layer_name)
    return [int(d) for d in layer["mask_shape"]]
