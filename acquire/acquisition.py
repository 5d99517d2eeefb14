"""Active learning: which pool inputs are most worth labelling, from Monte Carlo dropout samples.

Samples are class probabilities shaped [T, batch, C] (passes on axis 0, each row summing to 1);
everything is computed in float64. Every score is "higher = more worth labelling".

BatchBALD (Kirsch et al. 2019) needs consistent ("shared") masks: pass t must be the same sampled
network for every input of the pool, or the joint of two inputs' predictions means nothing. The
per-input strategies do not care. The estimators follow batchbald_redux (batchbald_redux/
batchbald.py and joint_entropy.py), with the samples' layout [T, N, C] instead of its [N, K, C].
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..runtime.checks import positive_finite, positive_int
from ..runtime.errors import InputError
from ..runtime.safe_files import atomic_writer, check_writable_target, csv_safe_cell, terminal_safe
from ..runtime.measures import categorical_entropy, expected_entropy, margin, mutual_information
from ..runtime.measures import predictive_entropy, variation_ratio

STRATEGIES = ("bald", "batchbald", "entropy", "variation-ratio", "margin", "random")

SCORE_MEANING = {
    "bald": "mutual information between the input's label and the network weights, nats; "
            "higher = more to learn from its label",
    "batchbald": "joint mutual information of this input and every input ranked above it with the "
                 "weights, nats; cumulative: a row's own gain is its score minus the row above's",
    "entropy": "entropy of the mean prediction, nats; higher = less certain",
    "variation-ratio": "share of passes whose top class is not the modal one; higher = passes disagree more",
    "margin": "1 - (top-1 minus top-2 probability of the mean prediction); higher = closer call",
    "random": "uniform random draw; a baseline that uses no prediction",
}

DEFAULT_NUM_SAMPLES = 10_000
"""Configurations drawn by BatchBALD's sampled estimator; batchbald_redux's example uses 100,000 on
a GPU, ten times the cost of this CPU default."""

_CHUNK_ELEMENTS = 1 << 22
"""float64 elements in one chunk's temporaries (32 MiB each): bounds BatchBALD's working memory."""

_SUM_TOLERANCE = 1e-3

DEFAULT_MAX_MEMORY_MB = 2048
"""Bound on BatchBALD's estimated memory (kept samples plus working arrays, batchbald_bytes), so a
flag such as --num-samples 1e12 is refused in one line instead of failing in numpy; raise it with
--max-memory-mb (max_memory_mb in Python). Its estimate's measurements: docs/DESIGN.md (BatchBALD memory)."""

CSV_COLUMNS = ["rank", "index", "id", "score", "strategy", "passes", "mask_seed"]

Pool = Union[np.ndarray, Dict[str, np.ndarray]]


def per_input_scores(samples, strategy: str, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """One score per input -> [batch]; higher = more worth labelling.

    margin is 1 - (top-1 - top-2) of the mean, so that, like the others, higher = less certain.
    random draws uniform scores from `rng` (required for it): a baseline for the others.
    """
    _check_strategy(strategy)
    if strategy == "batchbald":
        raise InputError("batchbald scores a batch of inputs together, not each input; use batchbald()")
    x = _probabilities(samples)
    if strategy == "random":
        return _random_generator(rng).random(x.shape[1])
    return _PER_INPUT[strategy](x)


def _uncertain_margin(x: np.ndarray) -> np.ndarray:
    return 1.0 - margin(x.mean(axis=0))


_PER_INPUT = {
    "bald": mutual_information,
    "entropy": predictive_entropy,
    "variation-ratio": variation_ratio,
    "margin": _uncertain_margin,
}


class TopK:
    """The k best scores seen so far over a pool streamed in slices, in O(k) memory plus one slice.

    Order: score descending, ties to the lower pool index (so a stream gives the same answer as
    sorting the whole pool at once, however it is sliced).
    """

    def __init__(self, k: int):
        self.k = _positive_int(k, "k")
        self._indices = np.empty(0, dtype=np.int64)
        self._scores = np.empty(0, dtype=np.float64)

    def add(self, scores, offset: int) -> None:
        """Offer the scores of pool inputs offset, offset + 1, ..."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 1:
            raise InputError(f"TopK.add needs a 1-d array of scores, got shape {scores.shape}")
        if np.isnan(scores).any():
            raise InputError("TopK.add got a NaN score; scores must be comparable")
        indices = np.concatenate([self._indices, offset + np.arange(len(scores), dtype=np.int64)])
        scores = np.concatenate([self._scores, scores])
        kept = np.lexsort((indices, -scores))[: self.k]
        self._indices, self._scores = indices[kept], scores[kept]

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        """(pool indices int64, scores float64), best first."""
        return self._indices.copy(), self._scores.copy()


def batchbald(samples, k: int, num_samples: int = DEFAULT_NUM_SAMPLES,
              rng: Optional[np.random.Generator] = None,
              exact_limit: Optional[int] = None,
              max_memory_mb: float = DEFAULT_MAX_MEMORY_MB) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy BatchBALD over samples [T, N, C] -> (indices int64 [k], scores float64 [k]).

    Each step adds the input that maximises the joint mutual information I(y_1..y_i; w) of the
    batch so far; scores[i] is that joint MI (nats) for the first i + 1 picks: the joint entropy
    of their labels minus the sum of their expected (conditional) entropies, all from the same T
    passes. An input is never picked twice, so a copy of a picked input adds nothing.

    With i inputs already picked, the joint entropy is exact (every one of the C**i
    configurations) while C**i <= exact_limit, else estimated from T * max(1, num_samples // T)
    configurations drawn from the passes with importance weights, as batchbald_redux's
    SampledJointEntropy; exact_limit=None means num_samples, batchbald_redux's
    DynamicJointEntropy rule. `rng` draws those configurations: seed it for a reproducible pick.

    Memory besides the samples: O(M * T + max(2**22, M * C)) float64, M = configurations (C**i <=
    exact_limit when exact, T * max(1, num_samples // T) when sampled): the joint [M, T] plus a few
    temporaries of one chunk of max(1, 2**22 // (C * max(M, T))) candidates (32 MiB each unless
    M * C alone is larger). Time per step: O(N * M * T * C). That estimate (batchbald_bytes, less
    the samples) over max_memory_mb is an InputError before any work.
    """
    x = _samples_shape(samples)
    passes, pool, classes = x.shape
    k = _count(k, pool)
    num_samples = _positive_int(num_samples, "num_samples")
    exact_limit = num_samples if exact_limit is None else _positive_int(exact_limit, "exact_limit")
    check_batchbald_memory(passes, pool, classes, max(num_samples, exact_limit), max_memory_mb, samples_kept=False)
    rng = np.random.default_rng() if rng is None else _random_generator(rng)

    conditional = _conditional_entropies(x)
    selected: List[int] = []
    scores = []
    exact_joint = np.ones((1, passes))  # p(configuration of the picked inputs | pass), [C**i, T]
    for step in range(k):
        if classes ** step <= exact_limit:
            estimator = (exact_joint, np.ones(len(exact_joint)), 0.0)
        else:
            estimator = _sampled_joint(x, selected, num_samples, rng)
        gain = _joint_entropies(x, *estimator) - conditional - conditional[selected].sum()
        gain[selected] = -np.inf
        best = int(np.argmax(gain))
        selected.append(best)
        scores.append(gain[best])
        if classes ** (step + 1) <= exact_limit:
            best_probs = x[:, best, :].astype(np.float64).T  # [C, T]
            exact_joint = (exact_joint[:, None, :] * best_probs[None]).reshape(-1, passes)
    return np.array(selected, dtype=np.int64), np.array(scores, dtype=np.float64)


def _conditional_entropies(x: np.ndarray) -> np.ndarray:
    """Expected entropy per input, [N], checking the values chunk by chunk (no float64 copy of x)."""
    passes, pool, classes = x.shape
    chunk = max(1, _CHUNK_ELEMENTS // (passes * classes))
    out = np.empty(pool)
    for start in range(0, pool, chunk):
        out[start:start + chunk] = expected_entropy(_checked_values(x[:, start:start + chunk]))
    return out


def _joint_entropies(x: np.ndarray, joint: np.ndarray, weights: np.ndarray, offset: float) -> np.ndarray:
    """H(picked inputs, candidate) for every candidate -> [N].

    joint [M, T] holds p(configuration m | pass t) up to a per-configuration scale;
    H = offset + sum_m weights[m] * entropy over c of (mean over t of joint[m, t] p_t(c)).
    Exact: all configurations, weights 1, offset 0.
    """
    passes, pool, classes = x.shape
    configurations = len(joint)
    chunk = max(1, _CHUNK_ELEMENTS // (classes * max(configurations, passes)))
    out = np.empty(pool)
    for start in range(0, pool, chunk):
        probs = x[:, start:start + chunk, :].astype(np.float64)  # [T, b, C]
        width = probs.shape[1]
        mixed = (joint @ probs.reshape(passes, -1) / passes).reshape(configurations, width, classes)
        out[start:start + width] = offset + weights @ categorical_entropy(mixed, axis=2)
    return out


def _sampled_joint(x: np.ndarray, selected: List[int], num_samples: int,
                   rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, float]:
    """Importance-sampled joint of the picked inputs, as batchbald_redux's SampledJointEntropy.

    num_samples // T configurations are drawn from each pass, so they follow q(y) = mean over t of
    p(y | t), and H ~ mean over drawn y of sum_c -p(y, c) log p(y, c) / q(y). Probabilities are
    multiplied in log space and each configuration scaled by its largest pass value (the scale
    cancels in p / q and comes back as `offset`), so many picked inputs do not underflow to 0.
    """
    passes, _, classes = x.shape
    per_pass = max(1, num_samples // passes)
    log_joint = np.zeros((passes, passes * per_pass))  # [pass evaluated, configuration]
    for index in selected:
        probs = x[:, index, :].astype(np.float64)  # [T, C]
        cumulative = np.cumsum(probs, axis=1)
        uniform = rng.random((passes, per_pass)) * cumulative[:, -1:]
        drawn = (uniform[:, :, None] >= cumulative[:, None, :-1]).sum(axis=2).reshape(-1)
        with np.errstate(divide="ignore"):
            log_joint += np.log(probs[:, drawn])
    scale = log_joint.max(axis=0)  # finite: a configuration is possible under the pass that drew it
    joint = np.exp(log_joint - scale).T  # [M, T]
    proposal = joint.mean(axis=1)
    return joint, 1.0 / (len(proposal) * proposal), float(-scale.mean())


def batchbald_bytes(passes: int, pool: int, classes: int, num_samples: int, samples_kept: bool = True) -> int:
    """Estimated peak memory of BatchBALD, bytes: the float32 samples [T, N, C] kept from the pool
    (samples_kept) and batchbald()'s working arrays for M = max(num_samples, T) configurations:
    about 4 float64 arrays of [M, T], 3 of [M, C] and 3 chunks of _CHUNK_ELEMENTS. Python ints, so
    a huge flag cannot overflow. Measured against tracemalloc's peak in docs/DESIGN.md."""
    configurations = max(int(num_samples), int(passes))
    work = 8 * configurations * (4 * int(passes) + 3 * int(classes)) + 3 * 8 * _CHUNK_ELEMENTS
    return work + (4 * int(passes) * int(pool) * int(classes) if samples_kept else 0)


def check_batchbald_memory(passes: int, pool: int, classes: int, num_samples: int,
                           max_memory_mb: float = DEFAULT_MAX_MEMORY_MB, samples_kept: bool = True) -> None:
    """InputError, saying what to lower or raise, when batchbald_bytes is over max_memory_mb."""
    positive_finite("--max-memory-mb", max_memory_mb)
    needed = batchbald_bytes(passes, pool, classes, num_samples, samples_kept)
    if needed > max_memory_mb * 2**20:
        raise InputError(f"batchbald would need about {needed / 2**20:,.0f} MiB ({pool:,} inputs x {passes:,} passes "
                         f"x {classes:,} classes, {num_samples:,} sampled configurations), over --max-memory-mb "
                         f"{max_memory_mb:g}; lower --num-samples, --passes or the pool, or raise --max-memory-mb")


@dataclass
class Acquisition:
    """The inputs chosen for labelling, best first, and what reproduces the choice."""

    strategy: str
    indices: np.ndarray
    scores: np.ndarray
    passes: Optional[int]
    mask_seed: Optional[int]
    ids: List[str]

    def __post_init__(self):
        _check_strategy(self.strategy)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.ids = [str(i) for i in self.ids]
        self.passes = None if self.passes is None else int(self.passes)
        self.mask_seed = None if self.mask_seed is None else int(self.mask_seed)
        if not len(self.indices) == len(self.scores) == len(self.ids):
            raise InputError(f"Acquisition needs as many scores and ids as indices, got "
                             f"{len(self.indices)}, {len(self.scores)} and {len(self.ids)}")

    def rows(self) -> List[dict]:
        return [{"rank": rank, "index": int(index), "id": id_, "score": float(score)}
                for rank, (index, id_, score) in enumerate(zip(self.indices, self.ids, self.scores), start=1)]

    def table_lines(self) -> List[str]:
        """The ranking as aligned columns (rank, input, score), ids escaped for the terminal."""
        rows = [["rank", "input", "score"]] + [[str(r["rank"]), terminal_safe(r["id"]), f"{r['score']:.4f}"]
                                                for r in self.rows()]
        widths = [max(len(row[j]) for row in rows) for j in range(3)]
        return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]

    def write(self, path) -> None:
        """Write .csv (rank, index, id, score, then the strategy, passes and mask seed that
        reproduce it on every row) or .json (those, and what the score means), by the suffix as
        typed; the file is complete or absent. CSV ids go through csv_safe_cell: a name such as
        =cmd|... is not a formula in a spreadsheet."""
        suffix = Path(path).suffix.lower()
        if suffix == ".csv":
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            how = {"strategy": self.strategy, "passes": "" if self.passes is None else self.passes,
                   "mask_seed": "" if self.mask_seed is None else self.mask_seed}
            writer.writerows({**row, "id": csv_safe_cell(row["id"]), "score": repr(row["score"]), **how}
                             for row in self.rows())
            data = text.getvalue()
        elif suffix == ".json":
            data = json.dumps({"strategy": self.strategy, "passes": self.passes, "mask_seed": self.mask_seed,
                               "score_meaning": SCORE_MEANING[self.strategy], "rows": self.rows()},
                              indent=2, allow_nan=False)
        else:
            raise InputError(f"{path}: an acquisition is written as .csv or .json, "
                             f"not {suffix or 'a name without suffix'}")
        with atomic_writer(path) as f:
            f.write(data.encode())


def acquire(predict: Callable[[Pool], np.ndarray], pool: Pool, k: int, strategy: str = "bald",
            batch_size: int = 256, ids: Optional[Sequence] = None, rng: Optional[np.random.Generator] = None,
            num_samples: int = DEFAULT_NUM_SAMPLES, progress: Optional[Callable[[int, int], None]] = None,
            passes: Optional[int] = None, mask_seed: Optional[int] = None,
            max_memory_mb: float = DEFAULT_MAX_MEMORY_MB) -> Acquisition:
    """Score a pool streamed in batch_size slices and pick k inputs to label.

    predict(slice) -> samples [T, b, C]; the caller binds the session, the passes and (for
    batchbald, required) one shared mask seed. pool is an array [N, ...] or a dict of them by input
    name, every array sliced alike. Per-input strategies keep only a TopK; batchbald keeps every
    sample as float32 [T, N, C], N * T * C * 4 bytes (200 MB for 100,000 inputs x 50 passes x 10
    classes), then runs batchbald(). progress(done, total) follows each slice. passes and
    mask_seed are recorded; passes, if given, must match the samples' axis 0. ids name the pool's
    inputs (default: their index). batchbald's estimated memory (batchbald_bytes) over
    max_memory_mb is an InputError after the first slice, before the samples are kept.
    """
    _check_strategy(strategy)
    arrays = _pool_arrays(pool)
    total = len(next(iter(arrays.values())))
    k = _count(k, total)
    batch_size = _positive_int(batch_size, "batch_size")
    ids = [str(i) for i in range(total)] if ids is None else [str(i) for i in ids]
    if len(ids) != total:
        raise InputError(f"ids has {len(ids)} names for a pool of {total} inputs")
    if strategy == "random":
        _random_generator(rng)
    best = None if strategy == "batchbald" else TopK(k)
    kept = None
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        piece = {name: array[start:stop] for name, array in arrays.items()}
        samples = _samples_shape(predict(piece if isinstance(pool, dict) else piece[None]))
        if samples.shape[1] != stop - start:
            raise InputError(f"predict returned {samples.shape[1]} inputs for a slice of {stop - start}")
        if passes is None:
            passes = samples.shape[0]
        if samples.shape[0] != passes or (kept is not None and samples.shape[2] != kept.shape[2]):
            raise InputError(f"predict returned samples shaped {samples.shape}, expected {passes} passes"
                             + ("" if kept is None else f" and {kept.shape[2]} classes"))
        if best is not None:
            best.add(per_input_scores(samples, strategy, rng), start)
        else:
            if kept is None:
                check_batchbald_memory(passes, total, samples.shape[2], num_samples, max_memory_mb)
                kept = np.empty((passes, total, samples.shape[2]), dtype=np.float32)
            kept[:, start:stop] = samples
        if progress is not None:
            progress(stop, total)
    indices, scores = batchbald(kept, k, num_samples, rng, max_memory_mb=max_memory_mb) if best is None \
        else best.result()
    return Acquisition(strategy, indices, scores, passes, mask_seed, [ids[i] for i in indices])


def session_predictor(session, passes: Optional[int] = None, mask_seed: Optional[int] = None,
                      output: Optional[str] = None) -> Callable[[Pool], np.ndarray]:
    """predict(slice) -> class probability samples [T, b, C] of one classifier output of an
    MCSession, every slice scored with the same shared mask set (`mask_seed`, default the
    session's): pass t is one network for the whole pool, as BatchBALD needs."""
    from ..evaluate.labelled_sets import pick_output
    from ..runtime.uncertain_rule import CATEGORICAL_HEADS

    chosen = pick_output(session.info, output)
    if chosen.head not in CATEGORICAL_HEADS + ("binary",):
        raise InputError(f"acquisition scores classifiers (softmax, logits or binary heads), not a {chosen.head} head")
    several = len(session.info.model_outputs) > 1

    def predict(piece: Pool) -> np.ndarray:
        prediction = session.predict(piece, passes=passes, masks="shared", mask_seed=mask_seed, top_k=1)
        samples = (prediction[chosen.name] if several else prediction).samples
        return samples if chosen.head in CATEGORICAL_HEADS else binary_as_categorical(samples)

    return predict


def acquire_with_session(session, pool: Pool, k: int, strategy: str = "bald", passes: Optional[int] = None,
                         mask_seed: Optional[int] = None, output: Optional[str] = None, **options) -> Acquisition:
    """acquire() over an MCSession with one shared mask set; `options` go to acquire(). batchbald's
    memory is checked before the first slice is scored."""
    predict = session_predictor(session, passes, mask_seed, output)  # refuses a head it cannot score first
    plan = session.resolve(passes, "shared", mask_seed)
    check_session_memory(session, len(next(iter(_pool_arrays(pool).values()))), strategy, plan.passes, output,
                         options.get("num_samples", DEFAULT_NUM_SAMPLES),
                         options.get("max_memory_mb", DEFAULT_MAX_MEMORY_MB))
    return acquire(predict, pool, k, strategy, passes=plan.passes, mask_seed=plan.mask_seed, **options)


def check_session_memory(session, pool: int, strategy: str, passes: Optional[int] = None,
                         output: Optional[str] = None, num_samples: int = DEFAULT_NUM_SAMPLES,
                         max_memory_mb: float = DEFAULT_MAX_MEMORY_MB) -> None:
    """check_batchbald_memory for `pool` inputs scored by an MCSession (its default passes unless
    given; a binary head counts 2 classes); nothing to check for the per-input strategies."""
    from ..evaluate.labelled_sets import pick_output

    if strategy != "batchbald":
        return
    chosen = pick_output(session.info, output)
    check_batchbald_memory(session.resolve(passes).passes, pool,
                           2 if chosen.head == "binary" else chosen.shape[-1], num_samples, max_memory_mb)


def binary_as_categorical(samples) -> np.ndarray:
    """Sigmoid probabilities [T, B] or [T, B, 1] -> [T, B, 2] (p0 = 1 - p, p1 = p), so a binary
    head can be scored by any strategy."""
    p = np.asarray(samples)
    if p.ndim == 3 and p.shape[2] == 1:
        p = p[..., 0]
    if p.ndim != 2:
        raise InputError(f"binary samples must be [T, B] or [T, B, 1], got shape {p.shape}")
    return np.stack([1 - p, p], axis=-1)


def check_flags(strategy: str, k: int, batch_size: int, num_samples: int, max_memory_mb: float, out) -> None:
    """`cli.py acquire`'s flags that need no model, checked before any work (errors name the flags)."""
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    for name, value in (("--k", k), ("--batch-size", batch_size), ("--num-samples", num_samples)):
        positive_int(name, value)
    positive_finite("--max-memory-mb", max_memory_mb)
    if out is not None:
        if Path(out).suffix.lower() not in (".csv", ".json"):
            raise InputError(f"--out {out}: write the ranking to .csv or .json")
        check_writable_target(out)


def _check_strategy(strategy) -> None:
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def _positive_int(value, name: str) -> int:
    return positive_int(name, value)


def _count(k, pool: int) -> int:
    k = _positive_int(k, "k")
    if k > pool:
        raise InputError(f"k = {k} is more than the {pool} inputs of the pool")
    return k


def _random_generator(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"needs rng, a numpy Generator (np.random.default_rng(seed)), got {rng!r}")
    return rng


def _samples_shape(samples) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 3 or 0 in x.shape or x.dtype.kind not in "fiu":
        raise InputError(f"samples must be numeric class probabilities [T, batch, C], none empty, got "
                         f"shape {x.shape} ({x.dtype}); a sigmoid head needs binary_as_categorical")
    return x


def _checked_values(x: np.ndarray) -> np.ndarray:
    """x as float64, refused unless finite probabilities whose rows sum to 1."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise InputError("samples contain NaN or infinity")
    if x.min() < 0 or x.max() > 1 or np.abs(x.sum(axis=-1) - 1).max() > _SUM_TOLERANCE:
        raise InputError("samples must be class probabilities in [0, 1] summing to 1 over the last axis "
                         "(softmax outputs; a sigmoid head needs binary_as_categorical)")
    return x


def _probabilities(samples) -> np.ndarray:
    return _checked_values(_samples_shape(samples))


def _pool_arrays(pool) -> Dict[str, np.ndarray]:
    """The pool as {name: array}, all batch-first with the same length (a bare array is named None)."""
    is_dict = isinstance(pool, dict)
    arrays = {name: np.asarray(a) for name, a in pool.items()} if is_dict else {None: np.asarray(pool)}
    if not arrays:
        raise InputError("pool has no inputs (an empty dict)")
    shapes = {name: a.shape for name, a in arrays.items()}
    if () in shapes.values() or len({shape[0] for shape in shapes.values()}) != 1:
        raise InputError(f"pool must be batch-first arrays of one length, got shape "
                         f"{shapes if is_dict else shapes[None]}")
    return arrays
