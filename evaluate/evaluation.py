"""`cli.py evaluate`: how good a model's predictions and its uncertainty are on labelled data.

Every figure is computed twice, for Monte Carlo dropout (T passes) and for the deterministic pass
(the plain network), so a report shows what MC dropout buys. Scores are "higher = less certain"
(runtime/uncertain_rule.py: CATEGORICAL_SCORES); mutual information, variation ratio and the variance
of the top class are 0 for one pass, so the deterministic column has no figure for them.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from ..runtime.errors import InputError
from ..runtime.format.metadata import ModelOutput
from ..runtime.prediction import MODEL_WIDE, Prediction
from ..runtime.run_plan import RunPlan
from ..runtime.uncertain_rule import CATEGORICAL_HEADS, SIGMOID_HEADS, scores
from . import metrics
from .labelled_sets import Batch, LabelledSet, batch_size, take

MODES = ("mc", "deterministic")
COVERAGES = (0.5, 0.8, 0.9, 0.95)
BINS = 15
# Scores that are constant for one pass: no ranking, no figure.
MC_ONLY = ("mutual_information", "variation_ratio", "top_class_variance")
# Inputs per predict: bounds the samples held at once (T x block x classes floats).
BLOCK = 1024
TARGET_PRECISION = 0.9


@dataclass
class Evaluation:
    """The report (JSON-safe) and the per-input arrays the plots are drawn from."""

    report: dict
    predictions: Dict[str, Prediction] = field(default_factory=dict)  # mode -> on the labelled set
    ood: Dict[str, Prediction] = field(default_factory=dict)  # mode -> on the OOD inputs
    y: Optional[np.ndarray] = None


def check_flags(target_precision: float, on_error: str, report_folder=None) -> bool:
    """`cli.py evaluate`'s flags that need no model, checked before the long evaluation (a bad
    report folder is known at once); whether the report can have plots."""
    if not 0 < target_precision <= 1:
        raise InputError(f"--target-precision must lie in (0, 1], got {target_precision}")
    if on_error not in ("skip", "stop"):
        raise InputError(f"--on-error {on_error!r}: choose skip or stop")
    if report_folder is None:
        return False
    from .report import check_report_folder, plots_available

    check_report_folder(report_folder)
    return plots_available()


def run_facts(model, data, ood, chosen, seed, provider: str, failures) -> dict:
    """The report's first entries: what was evaluated, where, and the inputs skipped."""
    from ..runtime.safe_files import shown_path, valid_text

    return {"model": valid_text(shown_path(model)), "data": valid_text(shown_path(data)),
            "ood": None if ood is None else valid_text(shown_path(ood)), "output": chosen.name,
            "seed": seed, "provider": provider,
            "skipped": [{"input": valid_text(path), "error": valid_text(message)} for path, message in failures]}


def load_data(session, data, ood=None, output: Optional[str] = None, uncertain_if: Optional[str] = None,
              on_error: str = "stop"):
    """(the output evaluated, the labelled set, the OOD batch or None, the skipped (path, message)
    pairs) for evaluate(), read within the session's limits; a bad rule fails before any of it."""
    from .labelled_sets import load_labelled, load_unlabelled, pick_output
    from ..runtime.uncertain_rule import Rule

    chosen = pick_output(session.info, output)
    if uncertain_if is not None:
        Rule.parse(uncertain_if, chosen.head)
    failures = None if on_error == "stop" else []
    labelled = load_labelled(data, session.info, chosen, session.limits, failures)
    outside = load_unlabelled(ood, session.info, session.limits, failures) if ood is not None else None
    return chosen, labelled, outside, failures or []


def predict_all(session, x: Batch, output: ModelOutput, passes: Optional[int], dropout: bool,
                progress: Optional[Callable[[int], None]] = None, uncertain_if: Optional[str] = None,
                keep_samples: bool = False) -> Prediction:
    """One Prediction for the whole set, predicted BLOCK inputs at a time (samples kept only when
    asked: calibration fits on them)."""
    count = batch_size(x)
    parts = []
    # passes: a count, or the RunPlan `evaluate --passes` resolved (passes="auto" for the MC mode)
    chosen = dict(passes=passes) if not isinstance(passes, RunPlan) else \
        {name: value for name, value in passes.arguments().items() if name != "dropout"} if dropout else \
        dict(passes=passes.passes)
    for start in range(0, count, BLOCK):
        found = session.predict(take(x, slice(start, start + BLOCK)), dropout=dropout,
                                keep_samples=keep_samples, uncertain_if=uncertain_if, **chosen)
        parts.append(found[output.name] if isinstance(found, dict) else found)
        if progress:
            progress(min(start + BLOCK, count) - start)
    return concatenate(parts)


def concatenate(parts: List[Prediction]) -> Prediction:
    """Predictions of consecutive blocks as one (model-wide measures kept once)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    measures = {}
    for name, value in first.measures.items():
        if name in MODEL_WIDE:
            measures[name] = value
        elif isinstance(value, list):
            measures[name] = [item for part in parts for item in part.measures[name]]
        else:
            measures[name] = np.concatenate([part.measures[name] for part in parts])
    samples = None if first.samples is None else np.concatenate([p.samples for p in parts], axis=1)
    return Prediction(head=first.head, mean=np.concatenate([p.mean for p in parts]),
                      variance=np.concatenate([p.variance for p in parts]), measures=measures,
                      passes=first.passes, stochastic=first.stochastic, provider=first.provider,
                      labels=first.labels, samples=samples, rule=first.rule, masks=first.masks,
                      mask_seed=first.mask_seed, input_passes=np.concatenate([p.input_passes for p in parts]),
                      standard_errors={name: np.concatenate([p.standard_errors[name] for p in parts])
                                       for name in first.standard_errors})


def evaluate(session, data: LabelledSet, output: ModelOutput, passes: Union[None, int, RunPlan] = None,
             ood: Optional[Batch] = None, progress: Optional[Callable[[int], None]] = None,
             target_precision: float = TARGET_PRECISION, uncertain_if: Optional[str] = None) -> Evaluation:
    """Every metric that fits the output's head, for MC dropout and the deterministic pass."""
    result = Evaluation(report={}, y=data.y)
    for mode in MODES:
        dropout = mode == "mc"
        result.predictions[mode] = predict_all(session, data.x, output, passes, dropout, progress, uncertain_if)
        if ood is not None:
            result.ood[mode] = predict_all(session, ood, output, passes, dropout, progress, uncertain_if)
    head = output.head
    report = {"head": head, "labels": output.labels, "count": len(data),
              "ood_count": None if ood is None else batch_size(ood),
              "passes": result.predictions["mc"].passes}
    for mode in MODES:
        prediction, outside = result.predictions[mode], result.ood.get(mode)
        if head in CATEGORICAL_HEADS:
            report[mode] = categorical_report(prediction, data.y, outside, output)
        elif head in SIGMOID_HEADS:
            report[mode] = sigmoid_report(prediction, data.y, output, target_precision)
        else:
            report[mode] = regression_report(prediction, data.y)
    result.report = jsonable(report)
    return result


def categorical_report(prediction: Prediction, y: np.ndarray, ood: Optional[Prediction],
                       output: ModelOutput) -> dict:
    probs = prediction.mean.astype(np.float64)
    classes = probs.shape[-1]
    predicted = probs.argmax(axis=-1)
    correct = predicted == y
    confidence = probs.max(axis=-1)
    ranked = usable_scores(prediction)
    report = {
        "accuracy": metrics.accuracy(probs, y),
        "nll": metrics.negative_log_likelihood(probs, y),
        "brier": metrics.brier_score(probs, y),
        "ece": metrics.expected_calibration_error(confidence, correct, BINS),
        "mce": metrics.maximum_calibration_error(confidence, correct, BINS),
        "adaptive_ece": metrics.adaptive_calibration_error(confidence, correct, BINS),
        "reliability": {key: value.tolist() for key, value in
                        metrics.reliability_bins(confidence, correct, BINS).items()},
        "aurc": {name: metrics.aurc(score, correct) for name, score in ranked.items()},
        "accuracy_at_coverage": {name: {f"{c:.0%}": metrics.accuracy_at_coverage(score, correct, c)
                                        for c in COVERAGES} for name, score in ranked.items()},
        "error_auroc": {name: metrics.auroc(score, ~correct) for name, score in ranked.items()},
        "error_aupr": {name: metrics.aupr(score, ~correct) for name, score in ranked.items()},
    }
    names = output.labels or [str(i) for i in range(classes)]
    per_class = metrics.precision_recall_f1(predicted, y, classes)
    report["per_class"] = {name: {key: float(per_class[key][i]) if key != "support" else int(per_class[key][i])
                                  for key in ("precision", "recall", "f1", "support")}
                           for i, name in enumerate(names)}
    report["confusion"] = metrics.confusion_matrix(predicted, y, classes).tolist()
    flagged = prediction.uncertain
    report["uncertain_rule"] = {
        **prediction.uncertain_rule.to_dict(), "flagged": float(flagged.mean()),
        "accepted_accuracy": float(correct[~flagged].mean()) if (~flagged).any() else None,
    }
    if "prediction_set" in prediction.measures:
        report["conformal"] = metrics.conformal_coverage(prediction.measures, y, names)
    if ood is not None:
        inside, outside = ranked, usable_scores(ood)
        report["ood_auroc"], report["ood_aupr"], report["ood_fpr_at_95_tpr"] = {}, {}, {}
        for name in inside:
            both, is_ood = with_ood(inside[name], outside[name])
            report["ood_auroc"][name] = metrics.auroc(both, is_ood)
            report["ood_aupr"][name] = metrics.aupr(both, is_ood)
            report["ood_fpr_at_95_tpr"][name] = metrics.fpr_at_tpr(both, is_ood, 0.95)
    return report


def with_ood(inside: np.ndarray, outside: np.ndarray):
    """(scores of both sets, bool: the input is OOD), for detection metrics with OOD as positive."""
    return np.concatenate([inside, outside]), np.r_[np.zeros(len(inside), bool), np.ones(len(outside), bool)]


def usable_scores(prediction: Prediction) -> Dict[str, np.ndarray]:
    """The scores that rank inputs for this many passes (all of them for T > 1), then the file's
    single-pass scores (runtime/uncertain_rule.py: SINGLE_PASS_SCORES) when it has them."""
    found = scores(prediction)
    return {name: value for name, value in found.items() if prediction.passes > 1 or name not in MC_ONLY}


def sigmoid_report(prediction: Prediction, y: np.ndarray, output: ModelOutput, target_precision: float) -> dict:
    from ..calibrate.fitting import best_f1_threshold, threshold_for_precision

    probs = prediction.mean.astype(np.float64).reshape(len(y), -1)
    limits = np.asarray(prediction.measures["threshold" if prediction.head == "binary" else "thresholds"],
                        np.float64).reshape(-1)
    limits = np.broadcast_to(limits, probs.shape[1:])
    decisions = probs >= limits
    at_thresholds = metrics.binary_precision_recall_f1(probs, y, limits)
    names = (output.labels[1:] if prediction.head == "binary" else output.labels) if output.labels else \
        [str(i) for i in range(probs.shape[1])]
    per_label = {}
    for j, name in enumerate(names):
        best = best_f1_threshold(probs[:, j], y[:, j])
        precise = threshold_for_precision(probs[:, j], y[:, j], target_precision)
        per_label[name] = {
            "roc_auc": metrics.auroc(probs[:, j], y[:, j]), "pr_auc": metrics.aupr(probs[:, j], y[:, j]),
            "threshold": float(limits[j]), "precision": float(at_thresholds["precision"][j]),
            "recall": float(at_thresholds["recall"][j]), "f1": float(at_thresholds["f1"][j]),
            "best_f1_threshold": best["threshold"], "best_f1": best["f1"],
            f"threshold_for_precision_{target_precision:g}": precise["threshold"],
            f"recall_at_precision_{target_precision:g}": precise["recall"] if precise["threshold"] is not None else None,
        }
    report = {"per_label": per_label, "nll": metrics.bernoulli_negative_log_likelihood(probs, y),
              "target_precision": target_precision}
    if prediction.head == "multilabel":
        report["subset_accuracy"] = metrics.subset_accuracy(decisions, y)
        report["hamming_loss"] = metrics.hamming_loss(decisions, y)
    else:
        report["accuracy"] = float((decisions == y).mean())
    report["uncertain_rule"] = {"flagged": float(prediction.uncertain.mean())}
    if "prediction_set" in prediction.measures:
        report["conformal"] = metrics.conformal_coverage(prediction.measures, y, names)
    return report


def regression_report(prediction: Prediction, y: np.ndarray) -> dict:
    mean, variance = prediction.mean.astype(np.float64), prediction.variance.astype(np.float64)
    report = {"rmse": metrics.rmse(mean, y), "mae": metrics.mae(mean, y)}
    if prediction.passes > 1:  # one pass has no spread: no likelihood, no interval
        std = np.sqrt(variance)
        report.update(gaussian_nll=metrics.gaussian_nll(mean, variance, y),
                      coverage_1_sigma=metrics.interval_coverage(mean, std, y, 1.0),
                      coverage_2_sigma=metrics.interval_coverage(mean, std, y, 2.0),
                      nominal_1_sigma=0.6827, nominal_2_sigma=0.9545)
    if "interval_low" in prediction.measures:
        report["conformal"] = metrics.conformal_coverage(prediction.measures, y)
    return report


def jsonable(value):
    """Plain JSON types; NaN and infinities become None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# Under shift (evaluate --shift) and over mask seeds (evaluate --seeds): softmax and logits heads.
HEADLINE = ("accuracy", "nll", "ece")


def check_extras(info, output: ModelOutput, data: LabelledSet, plan, shift: bool = False, seeds: int = 1) -> None:
    """`evaluate --shift` and `--seeds N` refused in one line before any run where they cannot apply."""
    from .shift import shift_batch

    if (shift or seeds > 1) and output.head not in CATEGORICAL_HEADS:
        raise InputError(f"--shift and --seeds are for softmax and logits heads, not {output.head}")
    if shift:
        if isinstance(data.x, dict):
            raise InputError("--shift corrupts images: this model has several inputs")
        shift_batch(take(data.x, slice(0, 1)), info, "contrast", 0)  # the preprocessing and shape fit
    if seeds > 1 and (not isinstance(plan, RunPlan) or plan.mask_seed is None):
        raise InputError("--seeds varies the shared mask set's seed: this file's masks are independent (no seed)")


def _condition_row(prediction: Prediction, y: np.ndarray, clean: Optional[Dict[str, np.ndarray]]) -> dict:
    """Accuracy, NLL, ECE and every score's error AUROC on one (corrupted) set; with the clean set's
    scores, each score's shift AUROC too (corrupted = positive)."""
    probs = prediction.mean.astype(np.float64)
    correct = probs.argmax(-1) == y
    ranked = usable_scores(prediction)
    row = {"accuracy": metrics.accuracy(probs, y), "nll": metrics.negative_log_likelihood(probs, y),
           "ece": metrics.expected_calibration_error(probs.max(-1), correct, BINS),
           "error_auroc": {name: metrics.auroc(score, ~correct) for name, score in ranked.items()}}
    if clean is not None:
        row["shift_auroc"] = {name: metrics.auroc(*with_ood(clean[name], score)) for name, score in ranked.items()}
    return row


def shift_report(session, data: LabelledSet, output: ModelOutput, passes, seed: int = 0,
                 progress: Optional[Callable[[int], None]] = None,
                 clean: Optional[Dict[str, Prediction]] = None) -> dict:
    """report["shift"]: for MC dropout and the deterministic pass, each corruption of evaluate/shift.py
    at severities 0 (the clean set) to shift.LEVELS, as _condition_row's figures. clean: the clean
    set's Predictions by mode where the caller has them (evaluate's), else predicted here."""
    from .shift import CORRUPTIONS, LEVELS, SEVERITIES, shift_batch

    check_extras(session.info, output, data, passes, shift=True)
    report = {"severities": list(range(LEVELS + 1)), "parameters": {k: list(v) for k, v in SEVERITIES.items()},
              "seed": seed}
    for mode in MODES:
        found = clean.get(mode) if clean else None
        if found is None:
            found = predict_all(session, data.x, output, passes, mode == "mc", progress)
        clean_scores, row = usable_scores(found), _condition_row(found, data.y, None)
        report[mode] = {name: [row] for name in CORRUPTIONS}
        for name in CORRUPTIONS:
            for severity in range(1, LEVELS + 1):
                shifted = shift_batch(data.x, session.info, name, severity, seed)
                found = predict_all(session, shifted, output, passes, mode == "mc", progress)
                report[mode][name].append(_condition_row(found, data.y, clean_scores))
    return jsonable(report)


def seed_spread(session, data: LabelledSet, output: ModelOutput, plan: RunPlan, count: int,
                ood: Optional[Batch] = None, progress: Optional[Callable[[int], None]] = None,
                first: Optional[Tuple[Prediction, Optional[Prediction]]] = None) -> dict:
    """report["seed_spread"]: the MC headline figures (accuracy, NLL, ECE, every score's error and
    OOD AUROC) for `count` mask seeds (the plan's, then the next ones): each seed's, mean and std.
    first: the plan's own (labelled, OOD) MC Predictions where the caller has them (evaluate's)."""
    from dataclasses import replace

    check_extras(session.info, output, data, plan, seeds=count)
    runs = []
    for k in range(count):
        chosen = replace(plan, mask_seed=plan.mask_seed + k)
        if k == 0 and first is not None:
            inside, outside = first
        else:
            inside = predict_all(session, data.x, output, chosen, True, progress)
            outside = None if ood is None else predict_all(session, ood, output, chosen, True, progress)
        full = categorical_report(inside, data.y, outside, output)
        figures = {key: full[key] for key in HEADLINE}
        for key in ("error_auroc", "ood_auroc"):
            figures.update({f"{key} {name}": value for name, value in full.get(key, {}).items()})
        runs.append(figures)
    spread = {"mask_seeds": [plan.mask_seed + k for k in range(count)], "runs": runs, "mean": {}, "std": {}}
    for key in runs[0]:
        values = np.array([run[key] for run in runs], np.float64)
        spread["mean"][key] = float(values.mean())
        spread["std"][key] = float(values.std(ddof=1)) if count > 1 else 0.0
    return jsonable(spread)
