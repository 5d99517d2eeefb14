"""Adaptive passes (passes="auto"): each input runs only the passes its result needs.

Passes run in rounds from the shared mask set (pass t depends on (seed, t) alone, so a round
takes passes [done, next) of the one set): first min_passes, then x GROWTH up to max_passes
(`schedule`). After each round, an input whose label and UNCERTAIN verdict are settled leaves the
batch (`settled`): a quantity is settled when its distance to the boundary that would change the
outcome is more than z of its Monte Carlo standard errors (runtime/measures.py) plus how far one
unseen dissenting pass would move it toward that boundary. The decision reads the input's own
samples alone at fixed pass counts, so an input's passes and result depend on (input, mask seed,
min_passes, max_passes) alone, in any batch or chunking.
docs/DESIGN.md: Adaptive passes has the rule and its measurements.
"""

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import measures as M
from .checks import is_int, positive_int
from .errors import InputError
from .uncertain_rule import CATEGORICAL_HEADS, SIGMOID_HEADS, SINGLE_PASS_MEASURES, Rule

AUTO = "auto"
# A quantity counts as settled when it lies more than z standard errors from its boundary, the
# errors scaled by sqrt(1 - passes / max_passes): the aim is max_passes' result, which shares the
# passes run so far (the finite population correction). The verdict takes VERDICT_Z, the label
# LABEL_Z: replayed on the shipped CNN's fixed T=200 samples, these kept >= 99% of its labels and
# verdicts with the fewest passes (docs/DESIGN.md: Adaptive passes).
VERDICT_Z = 2.5
LABEL_Z = 2.0
# The weight, in passes, of the dissenting pass (all its probability on the runner-up; each sigmoid
# label across its threshold) whose pull toward a boundary must be covered too: dissent the first
# passes did not show is what the standard errors miss. The verdict's check adds the dissent seen
# so far (the probability the passes put off their outcome), up to SEEN_DISSENT_CAP passes: an
# input whose passes waver now and then dissents more often than 200 passes can rule out
# (docs/DESIGN.md: Adaptive passes).
UNSEEN_DISSENT = 0.25
SEEN_DISSENT_CAP = 1.0
# The first round: clear inputs settle within it.
DEFAULT_MIN_PASSES = 10
# Each round takes the passes to GROWTH times those run so far (at least one more).
GROWTH = 1.1
# Regression has no label to settle: its mean is settled once its standard error is this
# share of the predictive std or less.
REGRESSION_SE_SHARE = 0.1
# The standard error a rule's measure is judged by, where it is not the measure's own.
ERROR_OF = {"one_minus_confidence": "confidence", "top_class_variance": "variance", "threshold_distance": "mean"}


@dataclass(frozen=True)
class AutoPasses:
    """The round schedule's bounds: at least min_passes, at most max_passes per input."""

    min_passes: int
    max_passes: int

    def schedule(self) -> List[int]:
        return schedule(self.min_passes, self.max_passes)


def schedule(min_passes: int, max_passes: int) -> List[int]:
    """The pass counts after each round: min_passes, x GROWTH (at least one more), ending at max_passes."""
    counts = [min_passes]
    while counts[-1] < max_passes:
        counts.append(min(max(int(GROWTH * counts[-1]), counts[-1] + 1), max_passes))
    return counts


def parse_passes(text):
    """The command line's --passes text: None, "auto" or an integer (checked later)."""
    if text is None or is_int(text):
        return text
    text = str(text).strip()
    if text.lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--passes must be a whole number or 'auto', got {text!r}") from None


def check(passes, max_passes, min_passes, default_max: int, names: Dict[str, str]) -> Optional[AutoPasses]:
    """AutoPasses for passes="auto" (max_passes defaulting to `default_max`, min_passes to
    DEFAULT_MIN_PASSES or less), None for a fixed count; one-line errors for bad values."""
    if passes != AUTO:
        for name, value in (("max_passes", max_passes), ("min_passes", min_passes)):
            if value is not None:
                raise InputError(f"{names[name]} is for {names['passes']} auto")
        return None
    high = default_max if max_passes is None else positive_int(names["max_passes"], max_passes)
    low = min(DEFAULT_MIN_PASSES, high) if min_passes is None else positive_int(names["min_passes"], min_passes)
    if low > high:
        raise InputError(f"{names['min_passes']} {low} is more than {names['max_passes']} {high}")
    return AutoPasses(low, high)


class RoundCost:
    """What a run's fixed part (the layers before the first dropout and the run's own overhead) costs,
    in passes: measured once per session, before its first rounds, on one input (the best of
    PROBE_REPEATS runs of 1 and of PROBE_PASSES passes). A run then computes the passes of later
    rounds too while its fixed part would cost more than its passes. That changes which passes are
    computed together, never the passes an input gets or its result: those are decided at the
    schedule points on the samples up to each (docs/DESIGN.md: Adaptive passes)."""

    PROBE_PASSES, PROBE_REPEATS = 16, 3

    def __init__(self):
        self.ratio: Optional[float] = None  # fixed part / one pass

    def measure(self, run_one: Callable[[int], object], max_passes: int) -> None:
        """run_one(passes) runs one input, at most max_passes (the run's mask rows and limits stop
        there); the best time resists a slow spell of a shared machine. With max_passes 1 there is
        nothing to look ahead to: left unmeasured."""
        probe = min(self.PROBE_PASSES, max_passes)
        if self.ratio is not None or probe < 2:
            return
        one, many = (min(_seconds(run_one, passes) for _ in range(self.PROBE_REPEATS)) for passes in (1, probe))
        per_pass = (many - one) / (probe - 1)
        self.ratio = float("inf") if per_pass <= 0 else max(one - per_pass, 0.0) / per_pass

    def target(self, counts: Sequence[int], needed: int, computed: int) -> int:
        """The schedule point a run from pass `computed` should reach, counts[needed] at least."""
        if not self.ratio:
            return counts[needed]
        return next((count for count in counts[needed:] if count - computed >= self.ratio), counts[-1])


def _seconds(run, *args) -> float:
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def run_rounds(run: Callable[[np.ndarray, int, int], Dict[str, np.ndarray]], batch: int, auto: AutoPasses,
               settled: Callable[[Dict[str, np.ndarray], np.ndarray], np.ndarray],
               progress: Optional[Callable[[int, int], None]] = None, cost: Optional[RoundCost] = None):
    """Run the rounds: run(inputs, first pass, count) gives {name: samples [count, len(inputs), ...]};
    settled(samples so far of `inputs`, inputs) gives bool [len(inputs)]. Returns ({name: samples
    [max_passes, batch, ...], unrun passes left as zeros}, passes per input). With `cost`, a run may
    compute the passes of later rounds too (RoundCost): an input's samples past its passes are then
    computed but not counted."""
    store: Dict[str, np.ndarray] = {}
    passes = np.zeros(batch, np.int64)
    active, computed = np.arange(batch), 0
    counts = auto.schedule()
    for number, count in enumerate(counts, 1):
        if count > computed:
            target = cost.target(counts, number - 1, computed) if cost else count
            found = run(active, computed, target - computed)
            for name, value in found.items():
                if name not in store:
                    store[name] = np.zeros((auto.max_passes, batch, *value.shape[2:]), value.dtype)
                store[name][computed:target, active] = value
            computed = target
        passes[active] = count
        if progress:
            progress(number, len(counts))
        if count == auto.max_passes:
            break
        keep = ~settled({name: value[:count, active] for name, value in store.items()}, active)
        active = active[keep]
        if not len(active):
            break
    return store, passes


def predict(run, batch: int, auto: AutoPasses, predictions_of, progress=None, cost=None) -> dict:
    """{output name: Prediction} of passes="auto": run as run_rounds takes it; predictions_of(samples_of,
    keep) gives {output name: Prediction} of samples_of(samples name)."""
    def all_settled(samples, inputs):
        found = predictions_of(samples.__getitem__, keep=False, settling=True)
        return np.logical_and.reduce([settled(prediction, prediction.rule, auto.max_passes)
                                      for prediction in found.values()])

    if cost is not None:
        cost.measure(lambda count: run(np.arange(1), 0, count), auto.max_passes)
    store, passes = run_rounds(run, batch, auto, all_settled, progress, cost)
    groups = [np.flatnonzero(passes == count) for count in np.unique(passes)]
    # keep: the caller's keep_samples; a part that keeps its samples computes its errors on first read.
    parts = [predictions_of(lambda name, rows=rows: store[name][:passes[rows[0]], rows]) for rows in groups]
    return {name: join([part[name] for part in parts], groups) for name in parts[0]}


def settled(prediction, rule: Rule, max_passes: int) -> np.ndarray:
    """bool [batch]: inputs whose label and verdict are settled (module docstring)."""
    scale = np.sqrt(max(1.0 - prediction.passes / max_passes, 0.0))
    seen = np.minimum(seen_dissent(prediction), SEEN_DISSENT_CAP)
    return (label_settled(prediction, LABEL_Z * scale, Dissent(prediction, UNSEEN_DISSENT))
            & verdict_settled(prediction, rule, VERDICT_Z * scale, Dissent(prediction, UNSEEN_DISSENT + seen)))


def seen_dissent(prediction) -> np.ndarray:
    """float [batch]: the passes' probability off their outcome, summed over the passes (a categorical
    head's off the top class; a sigmoid head's across its threshold, the label with the most); 0 for
    regression, which has no dissent."""
    mean = prediction.mean.astype(np.float64).reshape(len(prediction), -1)
    if prediction.head in CATEGORICAL_HEADS:
        off = 1.0 - mean.max(axis=-1)
    elif prediction.head in SIGMOID_HEADS:
        limit = np.reshape(prediction.measures["threshold" if prediction.head == "binary" else "thresholds"], (1, -1))
        off = np.where(mean >= limit, 1.0 - mean, mean).max(axis=-1)
    else:
        off = np.zeros(len(mean))
    return prediction.passes * off


def sure(value, bound, se, dissented, z: float) -> np.ndarray:
    """bool: `value` stays on its side of `bound`: its distance is more than z x `se` plus the
    move toward the bound of `dissented` (the value with the dissenting pass)."""
    value, se = np.asarray(value, np.float64), np.asarray(se, np.float64)  # float32 errors: numpy 1.x keeps float32
    toward = np.maximum((np.asarray(dissented, np.float64) - value) * np.sign(bound - value), 0.0)
    return np.abs(value - bound) > z * se + toward


def label_settled(prediction, z: float, dissent: "Dissent") -> np.ndarray:
    errors, n = prediction.standard_errors, len(prediction)
    if prediction.head in CATEGORICAL_HEADS:  # top-1 over top-2, whatever the pass to come
        return sure(prediction.measures["margin"], 0.0, errors["margin"], dissent.value("margin"), z)
    if prediction.head in SIGMOID_HEADS:  # every label's probability clear of its threshold
        m = prediction.measures
        limit = m["threshold"] if prediction.head == "binary" else m["thresholds"]
        found = sure(np.reshape(m["probability"], (n, -1)), np.reshape(limit, (1, -1)),
                     errors["mean"].reshape(n, -1), dissent.mean, z)
        return found.all(axis=1)
    std = np.asarray(prediction.measures["std"], np.float64).reshape(n, -1)
    return (errors["mean"].reshape(n, -1) <= REGRESSION_SE_SHARE * std).all(axis=1)


def verdict_settled(prediction, rule: Rule, z: float, dissent: "Dissent") -> np.ndarray:
    """The OR of the rule's conditions is settled when one condition is surely met, or every one
    surely not (a per-label measure: any label surely meets it / every label surely does not).
    A single-pass measure does not change with passes: its condition cannot unsettle the OR."""
    from .uncertain_rule import measure_value

    n = len(prediction)
    surely_met, surely_not = np.zeros(n, bool), np.ones(n, bool)
    for condition in rule.conditions:
        if condition.measure in SINGLE_PASS_MEASURES:
            continue
        value = np.asarray(measure_value(prediction, condition.measure), np.float64).reshape(n, -1)
        se = measure_error(prediction, condition.measure).reshape(n, -1)
        met = value > condition.value if condition.op == ">" else value < condition.value
        certain = sure(value, condition.value, se, dissent.value(condition.measure).reshape(n, -1), z)
        surely_met |= (met & certain).any(axis=1)
        surely_not &= (~met & certain).all(axis=1)
    return surely_met | surely_not


class Dissent:
    """A classifier Prediction's measures with one more pass of `weight` that dissents: a
    categorical head's puts all its probability on the runner-up class, a sigmoid head's each
    label's on the other side of its threshold. Regression has no dissent: the measures as they are.
    weight: one for every input, or one per input."""

    def __init__(self, prediction, weight):
        self.prediction, n = prediction, prediction.passes
        mean = prediction.mean.astype(np.float64).reshape(len(prediction), -1)
        # The share of the passes run in the new mean, per input.
        self.kept = n / (n + np.broadcast_to(np.asarray(weight, np.float64), (len(prediction),)))
        kept = self.kept[:, None]
        if prediction.head in CATEGORICAL_HEADS:
            runner_up = np.argsort(-mean, axis=-1, kind="stable")[:, min(1, mean.shape[-1] - 1)]
            self.pass_ = np.eye(mean.shape[-1])[runner_up]
        elif prediction.head in SIGMOID_HEADS:
            limit = prediction.measures["threshold" if prediction.head == "binary" else "thresholds"]
            self.pass_ = (mean < np.reshape(limit, (1, -1))).astype(np.float64)
        else:
            self.pass_ = mean
        self.mean = kept * mean + (1 - kept) * self.pass_
        second = prediction.variance.astype(np.float64).reshape(mean.shape) + np.square(mean)
        self.variance = np.maximum(kept * second + (1 - kept) * np.square(self.pass_) - np.square(self.mean), 0.0)

    def value(self, name: str) -> np.ndarray:
        """The measure `name` (a rule's, or margin) with the dissenting pass, shaped like it."""
        from .uncertain_rule import measure_value

        p, mean = self.prediction, self.mean
        shape = np.shape(measure_value(p, name))
        if p.head not in CATEGORICAL_HEADS + SIGMOID_HEADS:
            return np.asarray(measure_value(p, name), np.float64)
        entropy = M.categorical_entropy(mean) if p.head in CATEGORICAL_HEADS else M.bernoulli_entropy(mean)
        kept = self.kept.reshape(-1, *[1] * (entropy.ndim - 1))  # per input, against per-label values
        # The dissenting pass is one-hot (0 or 1): its own entropy is 0.
        expected = kept * np.asarray(p.measures["expected_entropy"], np.float64).reshape(entropy.shape)
        limit = p.measures["threshold" if p.head == "binary" else "thresholds"] if p.head in SIGMOID_HEADS else 0
        found = {
            "confidence": lambda: mean.max(axis=-1),
            "one_minus_confidence": lambda: 1.0 - mean.max(axis=-1),
            "margin": lambda: M.margin(mean),
            "predictive_entropy": lambda: entropy,
            "entropy": lambda: entropy,
            "expected_entropy": lambda: expected,
            "mutual_information": lambda: np.maximum(entropy - expected, 0.0),
            "variation_ratio": lambda: 1.0 - kept * (1.0 - np.asarray(p.measures["variation_ratio"], np.float64).reshape(
                entropy.shape)),
            "top_class_variance": lambda: np.take_along_axis(
                self.variance, p.mean.argmax(axis=-1).reshape(-1, 1), axis=-1)[:, 0],
            "std": lambda: np.sqrt(self.variance),
            "threshold_distance": lambda: np.abs(mean - np.reshape(limit, (1, -1))),
        }[name]()
        return np.reshape(found, shape)


def errors_needed(head: str, rule: Rule) -> frozenset:
    """The standard errors `settled` reads for this head and rule: a settle check computes these
    alone (most of its time went to the others)."""
    names = {"margin"} if head in CATEGORICAL_HEADS else {"mean"}
    names.update(ERROR_OF.get(condition.measure, condition.measure) for condition in rule.conditions
                 if condition.measure not in SINGLE_PASS_MEASURES)
    return frozenset(names)


def measure_error(prediction, name: str) -> np.ndarray:
    """The standard error of a measure a rule may name (uncertain_rule.RULE_MEASURES)."""
    errors = prediction.standard_errors
    if name == "top_class_variance":
        label = prediction.mean.argmax(axis=-1)
        return np.take_along_axis(errors["variance"].astype(np.float64), label[:, None], axis=-1)[:, 0]
    return errors[ERROR_OF.get(name, name)].astype(np.float64)


def join(parts: Sequence, rows: Sequence[np.ndarray]):
    """One Prediction from Predictions of disjoint input sets (`rows`: each part's inputs), in
    input order; samples are dropped (the parts' pass counts differ). Standard errors are joined on
    first read, as the parts compute them: until all are read, parts that kept their samples hold
    them (prediction.StandardErrors)."""
    from .prediction import MODEL_WIDE, Prediction, StandardErrors

    order = np.argsort(np.concatenate(rows), kind="stable")
    first = parts[0]

    def joined(values):
        if isinstance(values[0], list):
            whole = [item for value in values for item in value]
            return [whole[i] for i in order]
        return np.concatenate(values)[order]

    measures = {name: value if name in MODEL_WIDE else joined([part.measures[name] for part in parts])
                for name, value in first.measures.items()}
    input_passes = joined([part.input_passes for part in parts])
    return Prediction(head=first.head, mean=joined([p.mean for p in parts]), variance=joined([p.variance for p in parts]),
                      measures=measures, passes=int(input_passes.max()), stochastic=first.stochastic,
                      provider=first.provider, labels=first.labels, samples=None, rule=first.rule, masks=first.masks,
                      mask_seed=first.mask_seed, input_passes=input_passes, auto=True,
                      standard_errors=StandardErrors(list(first.standard_errors), lambda name: joined(
                          [part.standard_errors[name] for part in parts])))
