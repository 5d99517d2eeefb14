"""One batch of Monte Carlo predictions with the uncertainty measures that fit its head."""

import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import measures as M
from .uncertain_rule import CATEGORICAL_HEADS, SIGMOID_HEADS, Rule, default_rule
from .conformal_sets import methods_for, prediction_sets, set_labels
from .errors import InputError

HEADS = CATEGORICAL_HEADS + SIGMOID_HEADS + ("regression",)

UNITS = "nats"
ORIENTATION = "higher entropy / mutual_information / variation_ratio / variance = less certain"

# Measures that describe the model, not one input: kept whole when one input is picked.
MODEL_WIDE = ("threshold", "thresholds")
# Inputs whose float64 samples take this many bytes get their standard errors at a time
# (docs/DESIGN.md: Monte Carlo standard errors).
ERROR_CHUNK_BYTES = 2**20
# Tolerance for float32 probabilities a hair outside [0, 1].
_PROBABILITY_SLACK = 1e-5


@dataclass(eq=False)
class Prediction:
    """Mean, variance and measures of one batch; arrays are batch first, float32 for floats."""

    head: str
    mean: np.ndarray
    variance: np.ndarray
    measures: Dict[str, object]
    passes: int
    stochastic: bool = True
    provider: Optional[str] = None
    labels: Optional[Sequence[str]] = None
    samples: Optional[np.ndarray] = field(default=None, repr=False)
    rule: Optional[Rule] = None  # when UNCERTAIN; None: the default rule (runtime/uncertain_rule.py)
    masks: Optional[str] = None  # "shared" or "independent" (runtime/format/mask_sets.py); None: not from a session
    mask_seed: Optional[int] = None  # the shared mask set's seed
    # Monte Carlo standard error of "mean", "variance" and each measure of that name that is an
    # estimate from the passes (runtime/measures.py; docs/DESIGN.md: Monte Carlo standard errors): a
    # read-only Mapping; from_samples computes each on first read where it keeps the samples (StandardErrors).
    standard_errors: Mapping = field(default_factory=dict, repr=False)
    # The passes each input ran, int32 [batch]: `passes` for all with a fixed count; with
    # passes="auto", where each input stopped (runtime/adaptive_passes.py). None: `passes` for all.
    input_passes: Optional[np.ndarray] = field(default=None, repr=False)
    auto: bool = False  # from passes="auto": input_passes vary (a column of its own in infer's CSV)

    def __post_init__(self):
        if self.input_passes is None:
            self.input_passes = np.full(len(self.mean), self.passes, np.int32)
        self.input_passes = np.asarray(self.input_passes, np.int32)

    @classmethod
    def from_samples(cls, samples, head: str, labels: Optional[Sequence[str]] = None,
                     threshold: float = 0.5, thresholds: Optional[Sequence[float]] = None,
                     top_k: int = 3, passes: Optional[int] = None, stochastic: bool = True,
                     provider: Optional[str] = None, keep_samples: bool = True,
                     rule: Optional[Rule] = None,
                     conformal_quantile: Optional[float] = None, masks: Optional[str] = None,
                     mask_seed: Optional[int] = None, conformal: Optional[dict] = None,
                     errors: Optional[Collection[str]] = None) -> "Prediction":
        """Build from `samples` [T, batch, ...out]: probabilities for classifier heads, raw values
        for regression. `thresholds` (one per label) overrides `threshold` for sigmoid heads.
        `rule` decides `uncertain`; `conformal_quantile` q (categorical heads) adds the conformal
        `prediction_set`: the classes whose mean probability is at least 1 - q; `conformal` (a
        calibrated file's entry, runtime/conformal_sets.py) adds its method's sets or intervals.
        `errors`: the standard errors to compute (None: all; passes="auto"'s settle checks need few).
        With keep_samples (the default) each is computed when first read, from `samples` as they
        are then: a float32 `samples` is not copied, so leave it unchanged afterwards."""
        if head not in HEADS:
            raise InputError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
        samples = np.asarray(samples, dtype=np.float32)
        if head == "regression":
            if samples.ndim < 2:
                raise InputError(
                    f"regression samples need shape [T, batch, ...], got {samples.shape}")
        else:
            _check_probabilities(samples, head)
        if samples.shape[0] < 1:
            raise InputError("samples hold no passes")
        if passes is not None and passes != samples.shape[0]:
            raise InputError(f"passes={passes} but samples hold {samples.shape[0]} passes")
        if labels is not None:
            labels = [str(name) for name in labels]

        mean64, variance64 = M.mean_and_variance(samples)
        if head in CATEGORICAL_HEADS:
            found = _categorical(samples, mean64, variance64, labels, top_k)
        elif head in SIGMOID_HEADS:
            found = _sigmoid(samples, mean64, variance64, head, labels, threshold, thresholds)
        else:
            found = {"mean": mean64, "std": M.standard_deviation(variance64)}
        names = [name for name in _estimators(head) if errors is None or name in errors]
        top = {"top_k_indices": found["top_k_indices"]} if "top_k_indices" in found else {}

        def errors_of(wanted):
            return {name: value.astype(np.float32)
                    for name, value in _standard_errors(samples, head, top, stochastic, wanted).items()}

        # Kept samples: each error on first read (most callers read none; they cost 3x the measures).
        # Else all now, in one pass over the samples, so that no copy of them outlives the call.
        errors = StandardErrors(names, lambda name: errors_of({name})[name]) if keep_samples else errors_of(set(names))
        if conformal_quantile is not None:
            conformal = {"method": "lac", "quantile": conformal_quantile}
        if conformal is not None:
            found.update(_conformal(conformal, head, mean64, found, labels))
        return cls(head=head, mean=mean64.astype(np.float32),
                   variance=variance64.astype(np.float32),
                   measures={name: _float32(value) for name, value in found.items()},
                   passes=int(samples.shape[0]), stochastic=bool(stochastic), provider=provider,
                   labels=labels, samples=samples if keep_samples else None, rule=rule, masks=masks,
                   mask_seed=mask_seed, standard_errors=errors)

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def __getitem__(self, index) -> dict:
        return self.to_dict(index)

    @property
    def uncertain_rule(self) -> Rule:
        """The rule `uncertain` applies: `rule`, or the default rule (runtime/uncertain_rule.py)."""
        return self.rule or default_rule(self.head)

    @property
    def uncertain(self) -> np.ndarray:
        """bool [batch]: flagged by `uncertain_rule`."""
        return self.uncertain_rule.evaluate(self)

    def decided(self) -> Tuple[List[Optional[str]], np.ndarray]:
        """(label, confidence) per input: the class (name or index) and its mean probability; for a
        binary head the decision and the probability of that side; for a multi-label head the
        active labels joined by commas and the weakest per-label decision; regression has neither
        (None, NaN)."""
        m, n = self.measures, len(self)
        if self.head in CATEGORICAL_HEADS:
            names = m["label_name"] if "label_name" in m else m["label"]
            return [str(name) for name in names], np.asarray(m["confidence"], np.float32)
        if self.head == "binary":
            p, decision = np.asarray(m["probability"]), np.asarray(m["decision"], bool)
            names = m["label_name"] if "label_name" in m else decision.astype(int)
            return [str(name) for name in names], np.where(decision, p, 1 - p).astype(np.float32)
        if self.head == "multilabel":
            active = m["active_labels"] if "active_labels" in m else m["active"]
            p = np.asarray(m["probability"])
            return [",".join(map(str, row)) for row in active], np.maximum(p, 1 - p).min(axis=1).astype(np.float32)
        return [None] * n, np.full(n, np.nan, np.float32)

    def decided_standard_error(self) -> np.ndarray:
        """float32 [batch]: the Monte Carlo standard error of decided()'s confidence (that of the
        decided side's probability; for a multi-label head, of the weakest label's); NaN for
        regression or a Prediction built without standard errors."""
        n, errors = len(self), self.standard_errors
        if self.head in CATEGORICAL_HEADS and "confidence" in errors:
            return errors["confidence"].astype(np.float32)
        if self.head in SIGMOID_HEADS and "mean" in errors:
            p = np.asarray(self.mean, np.float64).reshape(n, -1)
            weakest = np.maximum(p, 1 - p).argmin(axis=1)  # binary: the one unit
            se = errors["mean"].reshape(n, -1)
            return np.take_along_axis(se, weakest[:, None], axis=1)[:, 0].astype(np.float32)
        return np.full(n, np.nan, np.float32)

    def to_dict(self, index: Optional[int] = None) -> dict:
        """JSON-safe python: the whole batch, or one input when `index` is given.

        Non-finite values (only a broken model produces them) become None."""
        if index is None:
            rows, where = slice(None), {"batch": len(self)}
        else:
            rows = operator.index(index)
            if not -len(self) <= rows < len(self):
                raise IndexError(f"index {rows} out of range for a batch of {len(self)}")
            rows %= len(self)
            where = {"index": rows}
        return {
            "head": self.head,
            "passes": self.passes,
            "input_passes": _jsonable(self.input_passes[rows]),
            "stochastic": self.stochastic,
            "provider": self.provider,
            **({"masks": self.masks} if self.masks else {}),
            **({"mask_seed": self.mask_seed} if self.mask_seed is not None else {}),
            **where,
            "units": UNITS,
            "orientation": ORIENTATION,
            "mean": _jsonable(self.mean[rows]),
            "variance": _jsonable(self.variance[rows]),
            **{f"{name}_se": _jsonable(self.standard_errors[name][rows])
               for name in ("mean", "variance") if name in self.standard_errors},
            "measures": {**{name: _jsonable(value if name in MODEL_WIDE else value[rows])
                            for name, value in self.measures.items()},
                         **{f"{name}_se": _jsonable(value[rows])
                            for name, value in self.measure_errors().items()}},
            "uncertain": _jsonable(self.uncertain[rows]),
        }

    def to_json(self, index: Optional[int] = None, **kwargs) -> str:
        """`to_dict` as a strict JSON string (no NaN / Infinity)."""
        return json.dumps(self.to_dict(index), allow_nan=False, **kwargs)

    def measure_errors(self) -> Dict[str, np.ndarray]:
        """The standard error of each measure that has one, by measure name, shaped like it."""
        return {name: self.standard_errors[name].reshape(np.shape(value)) for name, value in self.measures.items()
                if name in self.standard_errors}

    def arrays(self) -> Dict[str, np.ndarray]:
        """name -> ndarray for np.savez: numeric measures, `uncertain`, then `mean` and `variance`
        in the model's output shape (these win over same-named measures), and `samples` if kept;
        then `<name>_se`, the standard error of each of those that has one."""
        out = {name: value for name, value in self.measures.items()
               if isinstance(value, np.ndarray) and value.dtype.kind in "biuf"}
        out.update(uncertain=self.uncertain, input_passes=self.input_passes, mean=self.mean, variance=self.variance)
        if self.samples is not None:
            out["samples"] = self.samples
        out.update({f"{name}_se": value for name, value in self.measure_errors().items()})
        out.update({f"{name}_se": self.standard_errors[name] for name in ("mean", "variance")
                    if name in self.standard_errors})
        return out


def _check_probabilities(samples: np.ndarray, head: str) -> None:
    if samples.ndim != 3:
        raise InputError(f"{head} samples need shape [T, batch, units], got {samples.shape}")
    if head == "binary" and samples.shape[-1] != 1:
        raise InputError(f"binary samples need one unit (P positive), got shape {samples.shape}")
    if samples.shape[-1] < 1:
        raise InputError(f"{head} samples have no classes, shape {samples.shape}")
    inside = (samples >= -_PROBABILITY_SLACK) & (samples <= 1 + _PROBABILITY_SLACK)
    if not inside.all():  # NaN fails too
        raise InputError(f"{head} samples must be probabilities in [0, 1]")


def _check_labels(labels, count: int, head: str) -> None:
    if labels is not None and len(labels) != count:
        raise InputError(f"{head} head needs {count} labels, got {len(labels)}")


def _categorical(samples, mean, variance, labels, k) -> dict:
    _check_labels(labels, mean.shape[-1], "categorical")
    indices, probs = M.top_k(mean, k)
    # The entropies once (M.mutual_information would compute both again): the same values.
    predictive, expected = M.categorical_entropy(mean), M.expected_entropy(samples)
    found = {
        "std": M.standard_deviation(variance),
        "label": mean.argmax(axis=-1),
        "confidence": M.confidence(mean),
        "margin": M.margin(mean),
        "predictive_entropy": predictive,
        "expected_entropy": expected,
        "mutual_information": np.maximum(predictive - expected, 0.0),
        "variation_ratio": M.variation_ratio(samples),
        "top_k_indices": indices,
        "top_k_probs": probs,
    }
    if labels is not None:
        names = np.array(labels)
        found["label_name"] = names[found["label"]]
        found["top_k_labels"] = names[indices]
    return found


def _sigmoid(samples, mean, variance, head, labels, threshold, thresholds) -> dict:
    units = mean.shape[-1]
    try:
        limits = np.asarray(threshold if thresholds is None else thresholds, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError("thresholds must be numbers") from None
    if thresholds is None:
        if limits.ndim:
            raise InputError("threshold must be one number; pass thresholds for one per label")
        limits = np.full(units, limits)
    limits = limits.reshape(-1)
    if limits.shape != (units,):
        raise InputError(f"{head} head needs {units} thresholds, got {limits.size}")
    if not ((limits >= 0) & (limits <= 1)).all():
        raise InputError(f"thresholds must lie in [0, 1], got {limits.tolist()}")
    found = {
        "probability": mean,
        "variance": variance,
        "std": M.standard_deviation(variance),
        "entropy": M.bernoulli_entropy(mean),
        "expected_entropy": M.bernoulli_expected_entropy(samples),
        "mutual_information": M.bernoulli_mutual_information(samples),
    }
    # Decide on the float32 values that are reported, so the output never contradicts itself.
    decision = mean.astype(np.float32) >= limits
    if head == "binary":
        # One unit: report per input, [batch] instead of [batch, 1].
        found = {name: value[:, 0] for name, value in found.items()}
        found.update(threshold=limits.reshape(()), decision=decision[:, 0])
        _check_labels(labels, 2, "binary ([negative, positive])")
        if labels is not None:
            found["label_name"] = np.array(labels)[decision[:, 0].astype(int)]
        return found
    _check_labels(labels, units, "multilabel")
    active = [np.flatnonzero(row).tolist() for row in decision]
    found.update(thresholds=limits, decision=decision, active=active)
    if labels is not None:
        found["active_labels"] = [[labels[j] for j in row] for row in active]
    return found


class StandardErrors(Mapping):
    """{name: float32 standard error}, read-only, each computed by `compute(name)` on its first read
    and kept. Until every one has been read, `compute` holds what it reads (the samples): a
    Prediction from_samples built with keep_samples=True holds them so until it is dropped, even
    with `samples` set to None. Pickled and copied as a plain dict of every error."""

    def __init__(self, names: Sequence[str], compute: Callable[[str], np.ndarray]):
        self._names, self._compute, self._found = list(names), compute, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._found:
            if name not in self._names:
                raise KeyError(name)
            self._found[name] = self._compute(name)
            if len(self._found) == len(self._names):
                self._compute = None  # every error read: let go of the samples
        return self._found[name]

    def __contains__(self, name) -> bool:  # Mapping's would compute the error
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __reduce__(self):
        return dict, (dict(self),)


def _standard_errors(samples, head: str, found: dict, stochastic: bool,
                     wanted: Optional[Collection[str]] = None) -> Dict[str, np.ndarray]:
    """The standard error of mean, variance and each estimated measure in `found`, by name, in the
    model's output shape (a binary head's measures are read off with their unit axis dropped); those
    named in `wanted` alone where it is given. A deterministic prediction (dropout off) has none to
    speak of: 0."""
    if not stochastic:
        return {name: np.zeros_like(value) for name, value in _standard_errors(samples, head, found, True, wanted).items()}
    # Inputs a few at a time: the estimators' float64 temporaries (up to ~10 copies of what they
    # are given) stay within a few times ERROR_CHUNK_BYTES, not a multiple of the samples, which
    # the session's memory plan counts at SAMPLE_COPIES (runtime/session.py).
    per_input = 8 * samples.shape[0] * int(np.prod(samples.shape[2:], dtype=np.int64))
    rows = max(1, ERROR_CHUNK_BYTES // max(1, per_input))
    if samples.shape[1] > rows:
        pieces = [_standard_errors(samples[:, start:start + rows], head,
                                   {"top_k_indices": found["top_k_indices"][start:start + rows]} if
                                   "top_k_indices" in found else {}, True, wanted)
                  for start in range(0, samples.shape[1], rows)]
        return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
    x = samples.astype(np.float64)
    estimators = _estimators(head, found.get("top_k_indices"))
    return {name: estimate(x) for name, estimate in estimators.items() if wanted is None or name in wanted}


def _estimators(head: str, top_k_indices=None) -> Dict[str, Callable[[np.ndarray], np.ndarray]]:
    """{name: estimator of its standard error from float64 samples}: every error a head has."""
    estimators = {"mean": M.mean_standard_error, "variance": M.variance_standard_error,
                  "std": M.standard_deviation_standard_error}
    if head in CATEGORICAL_HEADS:
        estimators.update(
            confidence=M.confidence_standard_error, margin=M.margin_standard_error,
            predictive_entropy=M.predictive_entropy_standard_error,
            expected_entropy=M.expected_entropy_standard_error,
            mutual_information=M.mutual_information_standard_error,
            variation_ratio=M.variation_ratio_standard_error,
            top_k_probs=lambda x: M.top_k_standard_error(x, top_k_indices))
    elif head in SIGMOID_HEADS:
        estimators.update(
            probability=M.mean_standard_error, entropy=M.bernoulli_entropy_standard_error,
            expected_entropy=M.bernoulli_expected_entropy_standard_error,
            mutual_information=M.bernoulli_mutual_information_standard_error)
    return estimators


def _conformal(conformal: dict, head: str, mean64, found: dict, labels) -> dict:
    """The conformal sets (classifier heads) or intervals (regression) of a calibrated entry."""
    method = conformal.get("method", "lac")
    fits = methods_for(head)
    if method not in fits:
        raise InputError(f"conformal method {method!r} is not for {head} heads (one of {', '.join(fits)})")
    made = prediction_sets(conformal, mean64, found.get("std"))
    if "prediction_set" in made and labels is not None:
        made["prediction_set_labels"] = set_labels(made["prediction_set"], labels)
    return made


def _float32(value):
    """Floating arrays are stored as float32, like the model's outputs; the rest as is."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(np.float32)
    return value


def _jsonable(value):
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype == np.float32:
            # Shortest text that reads back as the same float32: 0.4, not 0.4000000059604645.
            array = array.astype(str).astype(np.float64)
        if array.dtype.kind == "f":
            finite = np.isfinite(array)
            if not finite.all():
                array = array.astype(object)
                array[~finite] = None
        return array.tolist()
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value
