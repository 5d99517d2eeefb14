"""Adaptive passes (passes="auto"): each input runs only the passes its result needs.

Passes run in rounds from the shared mask set (pass t depends on (seed, t) alone, so a round
takes passes [done, next) of the one set): first min_passes, then x GROWTH up to max_passes
(`schedule`). After each round, an input whose label and UNCERTAIN verdict are settled leaves the
batch (`settled`): a quantity is settled when its distance to the boundary that would change the
outcome is more than CONFIDENCE_Z of its Monte Carlo standard errors (runtime/measures.py). The
decision reads the input's own samples alone at fixed pass counts, so an input's passes and
result depend on (input, mask seed, min_passes, max_passes) alone, in any batch or chunking.
docs/DESIGN.md: Adaptive passes has the rule and its measurements.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .checks import is_int, positive_int
from .errors import InputError
from .uncertain_rule import CATEGORICAL_HEADS, SIGMOID_HEADS, Rule

AUTO = "auto"
# A quantity counts as settled when it lies more than this many standard errors from its
# boundary: 3 is a two-sided 99.7% normal interval per check, chosen so that >= 99% of inputs
# keep fixed T=200's label and verdict on the shipped CNN (docs/DESIGN.md: Adaptive passes).
CONFIDENCE_Z = 3.0
# The first round: enough passes for a jackknife standard error to mean something.
DEFAULT_MIN_PASSES = 20
# Each round takes the passes to GROWTH times those run so far.
GROWTH = 1.5
# Regression has no label to settle: its mean is settled once its standard error is this
# share of the predictive std or less.
REGRESSION_SE_SHARE = 0.1


@dataclass(frozen=True)
class AutoPasses:
    """The round schedule's bounds: at least min_passes, at most max_passes per input."""

    min_passes: int
    max_passes: int

    def schedule(self) -> List[int]:
        return schedule(self.min_passes, self.max_passes)


def schedule(min_passes: int, max_passes: int) -> List[int]:
    """The pass counts after each round: min_passes, x GROWTH, ending at max_passes."""
    counts = [min_passes]
    while counts[-1] < max_passes:
        counts.append(min(int(GROWTH * counts[-1]), max_passes))
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


def run_rounds(run: Callable[[np.ndarray, int, int], Dict[str, np.ndarray]], batch: int, auto: AutoPasses,
               settled: Callable[[Dict[str, np.ndarray], np.ndarray], np.ndarray],
               progress: Optional[Callable[[int, int], None]] = None):
    """Run the rounds: run(inputs, first pass, count) gives {name: samples [count, len(inputs), ...]};
    settled(samples so far of `inputs`, inputs) gives bool [len(inputs)]. Returns ({name: samples
    [max_passes, batch, ...], unrun passes left as zeros}, passes per input)."""
    store: Dict[str, np.ndarray] = {}
    passes = np.zeros(batch, np.int64)
    active, done = np.arange(batch), 0
    counts = auto.schedule()
    for number, count in enumerate(counts, 1):
        found = run(active, done, count - done)
        for name, value in found.items():
            if name not in store:
                store[name] = np.zeros((auto.max_passes, batch, *value.shape[2:]), value.dtype)
            store[name][done:count, active] = value
        done = count
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


def predict(run, batch: int, auto: AutoPasses, predictions_of, progress=None) -> dict:
    """{output name: Prediction} of passes="auto": run as run_rounds takes it; predictions_of(samples_of,
    keep) gives {output name: Prediction} of samples_of(samples name)."""
    def all_settled(samples, inputs):
        found = predictions_of(samples.__getitem__, keep=False)
        return np.logical_and.reduce([settled(prediction, prediction.rule) for prediction in found.values()])

    store, passes = run_rounds(run, batch, auto, all_settled, progress)
    groups = [np.flatnonzero(passes == count) for count in np.unique(passes)]
    parts = [predictions_of(lambda name, rows=rows: store[name][:passes[rows[0]], rows], keep=False)
             for rows in groups]
    return {name: join([part[name] for part in parts], groups) for name in parts[0]}


def settled(prediction, rule: Rule) -> np.ndarray:
    """bool [batch]: inputs whose label and verdict are settled at CONFIDENCE_Z standard errors."""
    return label_settled(prediction) & verdict_settled(prediction, rule)


def label_settled(prediction) -> np.ndarray:
    errors, n, z = prediction.standard_errors, len(prediction), CONFIDENCE_Z
    if prediction.head in CATEGORICAL_HEADS:  # top-1 over top-2 by more than z SE of the margin
        return np.asarray(prediction.measures["margin"], np.float64) > z * errors["margin"]
    if prediction.head in SIGMOID_HEADS:  # every label's probability clear of its threshold
        m = prediction.measures
        limit = m["threshold"] if prediction.head == "binary" else m["thresholds"]
        distance = np.abs(np.asarray(m["probability"], np.float64) - limit).reshape(n, -1)
        return (distance > z * errors["mean"].reshape(n, -1)).all(axis=1)
    std = np.asarray(prediction.measures["std"], np.float64).reshape(n, -1)
    return (errors["mean"].reshape(n, -1) <= REGRESSION_SE_SHARE * std).all(axis=1)


def verdict_settled(prediction, rule: Rule) -> np.ndarray:
    """The OR of the rule's conditions is settled when one condition is surely met, or every one
    surely not (a per-label measure: any label surely meets it / every label surely does not)."""
    from .uncertain_rule import measure_value

    n, z = len(prediction), CONFIDENCE_Z
    surely_met, surely_not = np.zeros(n, bool), np.ones(n, bool)
    for condition in rule.conditions:
        value = np.asarray(measure_value(prediction, condition.measure), np.float64).reshape(n, -1)
        se = measure_error(prediction, condition.measure).reshape(n, -1)
        met = value > condition.value if condition.op == ">" else value < condition.value
        sure = np.abs(value - condition.value) > z * se
        surely_met |= (met & sure).any(axis=1)
        surely_not &= (~met & sure).all(axis=1)
    return surely_met | surely_not


def measure_error(prediction, name: str) -> np.ndarray:
    """The standard error of a measure a rule may name (uncertain_rule.RULE_MEASURES)."""
    errors = prediction.standard_errors
    if name == "one_minus_confidence":
        return errors["confidence"].astype(np.float64)
    if name == "top_class_variance":
        label = prediction.mean.argmax(axis=-1)
        return np.take_along_axis(errors["variance"].astype(np.float64), label[:, None], axis=-1)[:, 0]
    if name == "threshold_distance":
        return errors["mean"].astype(np.float64)
    return errors[name].astype(np.float64)


def join(parts: Sequence, rows: Sequence[np.ndarray]):
    """One Prediction from Predictions of disjoint input sets (`rows`: each part's inputs), in
    input order; samples are dropped (the parts' pass counts differ)."""
    from .prediction import MODEL_WIDE, Prediction

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
                      standard_errors={name: joined([part.standard_errors[name] for part in parts])
                                       for name in first.standard_errors})
