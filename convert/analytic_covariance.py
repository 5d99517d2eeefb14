"""The analytic graph's draws of the last dropout's output with the covariance its units share
(docs/DESIGN.md: Analytic mode, "The covariance before the last dropout").

The last dropout's input X is computed from an earlier noisy tensor P through a product by a stored
weight: X = f(P @ W_mid + b), with f a ReLU, moves and products by deterministic scales. The units
of X share P's noise, which a per-unit variance drops. To first order (the ReLU's expected slope
Phi(a), as in the moment rule) the last dropout's output D answers to P's noise as
D - E[D] ~ s * ((P - E[P]) @ W_mid), s the product of the slopes, the scales and the keep mean
(units i != j: Cov(D_i, D_j) = Cov(X_i, X_j), the masks being independent with mean k). The
logits D @ W_out see that part through G = W_mid @ (s * W_out) [n_P, K], and the rest of D's
per-unit variance (the ReLU's nonlinear part, the last mask's own) through W_out. So the draws are
made at the product by W_out, in the logits' space: E[D] @ W_out + [eps | z] @ [sqrt(var P) * G;
sqrt(rest) * W_out], over fixed standard-normal draws [eps | z] of P's and D's units, with mean and
covariance  G^T diag(var P) G + W_out^T diag(var D - s^2 var(P @ W_mid)) W_out,  and the suffix
after the product (bias, softmax) runs on them. Nothing of size n_L x n_L or draws x n_L is made.

P's units are taken as independent (diag var P): exact where P is a plain Dropout's output of a
deterministic input (the MLP's first), an approximation where P's own input is noisy, which the
fitted spread corrects on average.

Taken where the pattern holds (D reaches one product by a stored weight through order-keeping
moves alone) and P has at most MAX_SOURCE_UNITS units (the draws are a constant of DRAWS x (n_P +
n_L) floats). Where D reaches such a product but no chain comes with it (a P too wide, or D's input
deterministic), D's units are drawn independently, with the fitted spread, still at the product:
z @ (sqrt(var D) * W_out). Elsewhere the walk draws D itself per unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

# P's units at most: the draws are a stored constant of DRAWS x (n_P + n_L) floats (1 MB per 1024 units). The shipped
# MLP's P has 512; the CNN's (its flattened second conv, 25,600) would take 26 MB and 256 x 25,600
# x 10 products per input: it keeps the fitted spread (docs/DESIGN.md: Analytic mode).
MAX_SOURCE_UNITS = 4096
# A chain's G costs as much as K passes of the product by W_mid per input (K: W_out's columns),
# against MC's T passes: carried for at most this many classes (the shipped models have 10).
MAX_CHAIN_CLASSES = 16
# Ops between the last dropout and its product by W_out that keep each input's units in order.
ORDER_KEEPING = ("Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten")
# The draws' seed: other than the per-unit draws' (analytic.DRAW_SEED), so their columns differ.
SOURCE_DRAW_SEED = 1


@dataclass(frozen=True)
class Chain:
    """How a tensor after a product by a stored weight answers, to first order, to the noise of the
    product's input P: source (P's mean, variance), weight W_mid [n_P, n_L], product_var (the
    variance of P @ W_mid), weight_name (W_mid's initializer where the product reads it as stored:
    stored_name), scales (tensors multiplied in since: slopes, constants)."""

    source: Tuple[str, str]
    weight: np.ndarray
    product_var: str
    weight_name: Optional[str] = None
    scales: Tuple[str, ...] = ()

    def scaled(self, name: str) -> "Chain":
        return Chain(self.source, self.weight, self.product_var, self.weight_name, self.scales + (name,))


def product_weight(walk, node, ins) -> Optional[np.ndarray]:
    """W_mid [n_P, n_L] of a MatMul/Gemm x @ W with x noisy and W stored (Gemm's transB and alpha
    applied), or None where the product is not of that form or P is too wide."""
    if ins[0] not in walk.moments:
        return None
    weight = stored_weight(walk, node)
    return weight if weight is not None and weight.shape[0] <= MAX_SOURCE_UNITS else None


def stored_weight(walk, node) -> Optional[np.ndarray]:
    """W [n, N] of a MatMul/Gemm x @ W whose W is a stored 2-D weight (Gemm's transB and alpha
    applied); None for any other form (a Gemm's transA among them)."""
    from onnx import numpy_helper

    from .analytic import _attributes

    if len(node.input) < 2 or node.input[1] not in walk.constants:
        return None
    weight = numpy_helper.to_array(walk.constants[node.input[1]]).astype(np.float64)
    if weight.ndim != 2:
        return None
    if node.op_type == "Gemm":
        attrs = _attributes(node)
        if attrs.get("transA"):
            return None
        weight = (weight.T if attrs.get("transB") else weight) * float(attrs.get("alpha", 1.0))
    return weight


def stored_name(node) -> Optional[str]:
    """The initializer a MatMul reads as W (its stored_weight as is); None for a Gemm, whose
    stored_weight may be transposed or scaled: the graph gets a copy of that where it needs W."""
    return node.input[1] if node.op_type == "MatMul" else None


def output_weight(walk, start: str) -> Optional[np.ndarray]:
    """W_out [n_L, K] where `start` (the last dropout's output) reaches one MatMul/Gemm by a stored
    weight through order-keeping moves alone, and nothing else reads it; else None."""
    name = start
    while True:
        users = walk.consumers.get(name, [])
        # One reader; a Shape of D's path would see D's mean, not its draws (a Dense on [B, T, F]
        # reshapes its product back by it), so such a graph keeps D's own draws.
        if len(users) != 1:
            return None
        user = users[0]
        if user.op_type in ORDER_KEEPING and user.input[0] == name:
            name = user.output[0]
            continue
        if user.op_type not in ("MatMul", "Gemm") or user.input[0] != name:
            return None
        return stored_weight(walk, user)


@dataclass(frozen=True)
class Pending:
    """The last dropout's output D, drawn at its product by W_out: chain (None where D's units are
    taken as independent), moments (mean, variance; unscaled by the spread where a chain carries
    the covariance), keep_mean (the mask's), w_out [n_L, K]."""

    chain: Optional[Chain]
    moments: Tuple[str, str]
    keep_mean: str
    w_out: np.ndarray


def draws_at_product(walk, start: str, layer: str) -> Optional[np.ndarray]:
    """W_out where the last dropout's output D (`start`, of stochastic layer `layer`) is drawn at its
    product by W_out: output_weight finds one, each input's D is one row of it (one mask per unit:
    a mask of W_out's rows; a Dense on [B, T, F] or a SpatialDropout shares z across rows or masks
    across units, which D's own draws keep), and K < DRAWS (the [batch, n_L, K] part then holds
    fewer floats than D's [DRAWS, batch, n_L] draws). Else None."""
    from .analytic import DRAWS, _features

    w_out = output_weight(walk, start)
    if w_out is None or int(np.prod(_features(walk.meta, layer))) != w_out.shape[0] or w_out.shape[1] >= DRAWS:
        return None
    return w_out


def carried(chain: Chain, w_out: Optional[np.ndarray]) -> bool:
    """Whether the draws at the product carry `chain`'s covariance: the products' units match (no
    move regrouped them between W_mid and W_out, so P too is one row per input) and K is at most
    MAX_CHAIN_CLASSES."""
    return w_out is not None and chain.weight.shape[1] == w_out.shape[0] and w_out.shape[1] <= MAX_CHAIN_CLASSES


def product_drawn(walk, node, ins, spread: str) -> None:
    """The product of the last dropout's output by W_out, drawn: its mean plus the logits' draws,
    laid out as the product of D's draws would be (the draws on the leading axis, the passes axis
    being outermost); `spread`: the name of the spread squared."""
    from .analytic import _attributes

    pending = walk.pending[ins[0]]
    mean = walk.add(node.op_type, [walk.moments[ins[0]][0], *ins[1:]], **_attributes(node))

    def ints(values, hint):
        return walk.constant(np.array(values, np.int64), hint)

    per_draw = walk.add("Reshape", [mean, ints([1, -1, pending.w_out.shape[1]], "mean_shape")])
    w_out = stored_name(node) or walk.constant(pending.w_out.astype(np.float32), "w_out")
    found = walk.add("Add", [logit_draws(walk, pending, spread, w_out), per_draw], "draws")
    trailing = walk.add("Slice", [walk.add("Shape", [mean]), ints([1], "one"), ints([1 << 62], "end")])
    shape = walk.add("Concat", [ints([-1], "draws_axis"), trailing], "drawn_shape", axis=0)
    walk.drawn[node.output[0]] = walk.add("Reshape", [found, shape], "drawn")


def logit_draws(walk, pending: Pending, spread: str, w_out_name: str) -> str:
    """[DRAWS, batch, K] draws of (D - E[D]) @ W_out with the covariance from the chain's source;
    `spread`: the name of the spread squared, which scales the source's part. Without a chain, D's
    units are independent: z @ (sqrt(var D) * W_out), with the per-unit draws' very z, which gives
    their logits without the [DRAWS, batch, n_L] draws of D."""
    from .analytic import DRAWS, normal_draws

    chain, n_l = pending.chain, pending.w_out.shape[0]
    f32 = np.float32

    def const(value, hint):
        return walk.constant(np.asarray(value, f32), hint)

    def rows(name, units):  # [batch, units], whatever leading axes the tensor has
        return walk.add("Reshape", [name, walk.constant(np.array([-1, units], np.int64), "rows_shape")], "rows")

    unsqueeze = walk.constant(np.array([-1], np.int64), "last_axis")

    def times_w_out(variance):  # sqrt(variance) * W_out, [batch, n_L, K]
        return walk.add("Mul", [walk.add("Unsqueeze", [walk.add("Sqrt", [variance]), unsqueeze]), w_out_name], "own_part")

    variance = rows(pending.moments[1], n_l)
    if chain is None:
        parts, draws = times_w_out(variance), normal_draws(DRAWS, n_l)
    else:
        n_p = chain.weight.shape[0]
        slope = pending.keep_mean
        for scale in chain.scales:
            slope = walk.add("Mul", [slope, scale], "slope")
        slope = rows(walk.add("Mul", [slope, const(np.ones(n_l), "units")], "slope"), n_l)  # [batch, n_L]
        # The source's part: sqrt(var P) * G, G = W_mid @ (s * W_out) [batch, n_P, K], the spread on it.
        w_mid = chain.weight_name or const(chain.weight, "w_mid")
        g = walk.add("MatMul", [w_mid, walk.add("Mul", [walk.add("Unsqueeze", [slope, unsqueeze]), w_out_name])], "g")
        source_std = walk.add("Mul", [walk.add("Sqrt", [rows(chain.source[1], n_p)]), walk.add("Sqrt", [spread])],
                              "source_std")
        source = walk.add("Mul", [walk.add("Unsqueeze", [source_std, unsqueeze]), g], "source_part")
        # D's own part per unit: what its variance holds beyond the linear part s^2 var(P @ W_mid).
        linear = walk.add("Mul", [walk.add("Mul", [slope, slope]), rows(chain.product_var, n_l)], "linear_var")
        rest = walk.add("Max", [walk.add("Sub", [variance, linear]), const(0.0, "zero")], "rest_var")
        parts = walk.add("Concat", [source, times_w_out(rest)], "parts", axis=1)  # [batch, n_P + n_L, K]
        draws = normal_draws(DRAWS, n_p + n_l, SOURCE_DRAW_SEED)
    xi = walk.add("MatMul", [const(draws, "normal_draws"), parts], "xi")
    return walk.add("Transpose", [xi], "xi", perm=[1, 0, 2])
