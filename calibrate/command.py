"""`cli.py calibrate`: fit temperature scaling and the UNCERTAIN rule on labelled data and write
both into a copy of an mcdrop file (graph and metadata), validated and written atomically.

Needs onnx and scipy (the `evaluate` extra), never TensorFlow. A calibrated file is refitted from
its uncalibrated graph: the calibration nodes and metadata are stripped first, so fits never stack.
See docs/FORMAT.md (Calibration) for what is written, and calibrate/fitting.py for the math.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from ..evaluate.report import choice_lines, rounded_rule
from .conformal_fit import (check_method, conformal_for_head, conformal_line, fit_conformal, graph_check,
                            regression_fit)
from ..runtime.errors import InputError, ValidationError

# The deterministic pass of the calibrated file must equal the numpy temperature scaling of the
# uncalibrated file's pass to this (float32 softmax of rescaled log-probabilities).
AGREEMENT = 1e-4
CHECK_INPUTS = 64


@dataclass
class CalibrationReport:
    output: str
    head: str
    calibration: dict
    checks: List[str] = field(default_factory=list)

    def lines(self) -> List[str]:
        c = self.calibration
        fitted, achieved = c["fitted_on"], c["achieved"]
        lines = [f"wrote {self.output} ({self.head} head, fitted on {fitted['count']} inputs, {fitted['passes']} passes)"]
        if c.get("temperature") is not None:
            lines.append(f"temperature      {c['temperature']:.4f} (MC dropout), {c['deterministic_temperature']:.4f} "
                         "(deterministic pass)")
        if "ece_before" in achieved:
            lines.append(f"ECE              MC {achieved['ece_before']:.4f} -> {achieved['ece_after']:.4f}, deterministic "
                         f"{achieved['ece_deterministic_before']:.4f} -> {achieved['ece_deterministic_after']:.4f} "
                         "(on the calibration set)")
        if "nll_before" in achieved:
            lines.append(f"NLL              {achieved['nll_before']:.4f} -> {achieved['nll_after']:.4f}")
        if c.get("measure_choice"):
            lines += choice_lines(c["measure_choice"])
        if c.get("uncertain_rule"):
            lines.append(f"UNCERTAIN if     {rounded_rule(c['uncertain_rule'])}")
        if "accepted_accuracy" in achieved:
            shown = "-" if achieved["accepted_accuracy"] is None else f"{achieved['accepted_accuracy']:.4f}"
            lines.append(f"accepted         {achieved['coverage']:.1%} of inputs, accuracy {shown}")
        if c.get("thresholds") is not None:
            lines.append("thresholds       " + ", ".join(f"{t:.4f}" for t in c["thresholds"]))
        if c.get("conformal"):
            lines.append(conformal_line(c["conformal"], achieved))
        if (c.get("single_pass_scores") or {}).get("feature_layer"):
            lines.append(f"feature distance on {c['single_pass_scores']['feature_layer']} "
                         f"({c['single_pass_scores']['feature_dim']} features)")
        lines.append("graph outputs    " + (", ".join(c["graph_outputs"]) or "-"))
        return lines + [f"check            ok  {check}" for check in self.checks]


def calibrate_model(source, output, data, *, target_accuracy: Optional[float] = None,
                    target_coverage: Optional[float] = None, conformal: Optional[float] = None,
                    passes: Optional[int] = None, measure: Optional[str] = None, ood=None,
                    target_precision: Optional[float] = None, output_name: Optional[str] = None,
                    seed: Optional[int] = 0, verify: bool = True, limits=None, settings=None,
                    feature_layer: Optional[str] = None, conformal_method: Optional[str] = None,
                    progress: Callable[[str], None] = lambda message: None) -> CalibrationReport:
    """Calibrate the mcdrop file `source` on `data` (a path, as `evaluate` reads it) into `output`; measure None:
    chosen (measure_choice.py; `ood`: a path, as evaluate's). settings: default from seed, verify and limits."""
    import onnx

    from ..evaluate.labelled_sets import load_labelled, load_unlabelled, pick_output
    from ..runtime.safe_files import check_writable_target, read_regular
    from ..runtime.format.integrity import seal
    from ..runtime.format.metadata_writer import write_metadata
    from ..runtime.limits import DEFAULT
    from ..runtime.session import MCSession
    from ..runtime.settings import SessionSettings

    from . import fitting as C
    from .feature_density import fit_feature_scores
    from .graph import add_calibration
    from .measure_choice import gather

    settings = settings or SessionSettings(seed=seed, limits=limits or DEFAULT, verify=verify)
    seed, verify, limits = settings.seed, settings.verify, settings.limits
    conformal = _check_targets(target_accuracy, target_coverage, target_precision, conformal, measure, conformal_method)
    check_writable_target(Path(output))

    # The file as it was exported: calibration nodes and metadata removed.
    source_bytes = read_regular(str(source), limits.model_bytes, InputError, "model file", "model_mb")
    sealed = _verified(source_bytes, str(source), verify)
    if not sealed:
        warnings.warn(f"{source}: its integrity checksum is missing or wrong; {output} is written without one, "
                      "so loading it needs --no-verify too", stacklevel=2)
    with tempfile.TemporaryDirectory(prefix="mcdrop-calibrate-") as folder, \
            _user_paths({Path(folder) / "uncalibrated.onnx": source, Path(folder) / "calibrated.onnx": output}):
        original = Path(folder) / "uncalibrated.onnx"
        original.write_bytes(source_bytes)
        MCSession(original, settings=settings.replace(verify=False))  # the same checks as any load (the checksum's above)
        try:
            proto = onnx.load_from_string(source_bytes)
        except Exception as err:  # checked above; only a parser disagreement lands here
            raise InputError(f"{source}: onnx cannot parse it ({err})") from None
        metadata = _stripped(proto)
        plain = seal(proto.SerializeToString())
        original.write_bytes(plain)
        session = MCSession(original, settings=settings.replace(verify=True))
        chosen = pick_output(session.info, output_name)
        conformal = _check_head(chosen, target_accuracy or target_coverage or ood, conformal)
        labelled = load_labelled(data, session.info, chosen, limits)
        outside = None if ood is None else load_unlabelled(ood, session.info, limits)
        progress(f"predicting {len(labelled)} calibration inputs")
        samples = _samples(session, labelled.x, chosen, passes, True)
        plain_pass = None if chosen.head == "regression" else _samples(session, labelled.x, chosen, passes, False)
        single_pass = fit_feature_scores(proto, session, labelled, chosen, int(samples.shape[-1]), feature_layer)
        evidence = gather(proto, session, labelled, outside, chosen, single_pass, seed,
                          lambda x: _samples(session, x, chosen, passes, True))
        fitted = _fit(samples, plain_pass, labelled.y, chosen, target_accuracy, target_coverage, conformal, measure,
                      target_precision, C, single_pass.get("scores", {}), evidence, seed)
        fitted["fitted_on"] = {"count": len(labelled), "sha256": labelled.sha256, "passes": int(samples.shape[0]),
                               "seed": seed, "data": os.path.basename(str(data))}
        progress("writing the calibrated graph" if fitted.get("temperature") is None else
                 f"temperature {fitted['temperature']:.4f}; writing the calibrated graph")
        graph_outputs = add_calibration(proto, chosen.prefix, chosen.head, int(samples.shape[-1]),
                                        **fitted.pop("graph"))
        fitted.update(graph_outputs=graph_outputs + single_pass.get("outputs", []), **single_pass.get("entry", {}))
        _set_calibration(metadata, chosen, fitted)
        write_metadata(proto, metadata)
        data_bytes = seal(proto.SerializeToString())
        checks = _validate(data_bytes, session, labelled, chosen, fitted, Path(folder), settings, C)
    from ..runtime.safe_files import atomic_writer

    with atomic_writer(Path(output)) as f:
        # An unverified source gives an unsealed file: a fresh checksum would vouch for bytes
        # nobody checked (seal appends its entry, so the bytes before it are the file unsealed).
        f.write(data_bytes if sealed else proto.SerializeToString())
    if not sealed:
        checks.append("written without an integrity checksum: the source did not verify")
    return CalibrationReport(str(output), chosen.head, fitted, checks)


def _stripped(proto) -> dict:
    """`proto` as it was exported, in place: calibration nodes and metadata entries removed; its metadata."""
    from ..runtime.format.metadata_writer import metadata_of, write_metadata
    from .graph import strip_calibration

    strip_calibration(proto)
    metadata = metadata_of(proto)
    for entry in metadata.get("outputs") or []:
        entry.pop("calibration", None)
    write_metadata(proto, metadata)
    return metadata


def _check_head(chosen, categorical_targets, conformal):
    """The chosen output's head takes calibration, and the targets given (categorical_targets:
    --target-accuracy, --target-coverage or --ood; conformal: (method or None, alpha) or None) are for
    its kind. Returns conformal with its method (the head's default when none was given)."""
    if chosen.head == "regression" and (categorical_targets or conformal is None):
        raise InputError(f"output {chosen.name} has a regression head: temperature scaling and decision "
                         "thresholds are for classifier heads (regression takes --conformal ALPHA: intervals)")
    if chosen.head in ("binary", "multilabel") and categorical_targets:
        raise InputError(f"{chosen.head} heads get per-label thresholds (--target-precision or best F1); "
                         "--target-accuracy, --target-coverage and --ood are for softmax and logits heads")
    return conformal_for_head(conformal, chosen)


def _set_calibration(metadata: dict, chosen, fitted: dict) -> None:
    """The chosen output's "calibration" entry in the metadata (docs/FORMAT.md: Calibration)."""
    entries = metadata.get("outputs")
    if entries:
        next(e for e in entries if e["name"] == chosen.name)["calibration"] = fitted
    else:  # a file from before the outputs list: write the list with its one output
        metadata["outputs"] = [{"name": chosen.name, "prefix": "", "head": chosen.head, "labels": chosen.labels,
                                "shape": list(chosen.shape), "calibration": fitted}]


def _check_targets(target_accuracy, target_coverage, target_precision, conformal, measure, conformal_method=None):
    """The targets and the measure, checked before anything is read; (conformal method or None, alpha)
    for a --conformal ALPHA, else None."""
    from .graph import SINGLE_PASS_SCORES, UNCERTAIN_MEASURES

    if target_accuracy is not None and target_coverage is not None:
        raise InputError("give --target-accuracy or --target-coverage, not both")
    for name, value in (("--target-accuracy", target_accuracy), ("--target-coverage", target_coverage),
                        ("--target-precision", target_precision)):
        if value is not None and not 0 < value <= 1:
            raise InputError(f"{name} must lie in (0, 1], got {value}")
    if conformal is not None and not 0 < conformal < 1:
        raise InputError(f"--conformal ALPHA must lie in (0, 1), got {conformal}")
    if measure is not None and measure not in UNCERTAIN_MEASURES + SINGLE_PASS_SCORES:  # the graph's uncertain output computes these
        raise InputError(f"--measure {measure!r}: choose one of {', '.join(UNCERTAIN_MEASURES + SINGLE_PASS_SCORES)}")
    return check_method(conformal_method, conformal)


def _verified(source_bytes: bytes, path: str, verify: bool) -> bool:
    """Whether the source's checksum holds; without it a ModelFileError naming `path`, unless
    verify=False (--no-verify), which returns False instead."""
    from ..runtime.errors import ModelFileError
    from ..runtime.format.integrity import verify as check_checksum
    from ..runtime.format.onnx_file import read_model

    parsed = read_model(source_bytes, path)  # not ONNX at all: that error, not a checksum's
    try:
        check_checksum(source_bytes, parsed, path)
    except ModelFileError:
        if verify:
            raise
        return False
    return True


@contextlib.contextmanager
def _user_paths(names: dict):
    """McdropErrors raised inside name the user's files (`names`: temporary path -> user's path),
    not the temporary copies calibrate loads."""
    from ..runtime.errors import McdropError

    try:
        yield
    except McdropError as err:
        message = str(err)
        for temporary, user in names.items():
            message = message.replace(str(temporary), str(user))
        if message == str(err):
            raise
        raise type(err)(message) from None


def _samples(session, x, output, passes, dropout: bool) -> np.ndarray:
    """Samples [T, n, units] of the uncalibrated file (T = 1 without dropout)."""
    from ..evaluate.evaluation import predict_all

    samples = predict_all(session, x, output, passes, dropout, keep_samples=True).samples
    return samples.reshape(samples.shape[0], samples.shape[1], -1)


def _fit(samples, plain_pass, y, output, target_accuracy, target_coverage, conformal, measure, target_precision, C,
         single_pass=None, evidence=None, seed=0) -> dict:
    """Temperature, rule, thresholds and conformal quantile, with what they achieve on the data.
    single_pass: the file's single-pass scores on the data ({measure: [n]}), for a rule on them;
    evidence: what the rule's measure is chosen from (measure_choice.Evidence; categorical heads)."""
    from ..evaluate import metrics
    from ..runtime.uncertain_rule import default_rule
    from ..runtime.prediction import Prediction
    from .measure_choice import candidate_scores

    head = output.head
    if head == "regression":  # conformal intervals only
        return regression_fit(samples, y, conformal)
    # MC dropout's mean and the plain network are different predictors: each gets its own
    # temperature (on the digits CNN, about 1 and 2.2: docs/DESIGN.md, Calibration).
    temperature = C.fit_temperature(samples, y, head)
    plain_temperature = C.fit_temperature(plain_pass, y, head)
    calibrated = C.apply_temperature(samples, temperature, head)
    before, after = samples.mean(axis=0), calibrated.mean(axis=0)
    fitted = {"temperature": float(np.float32(temperature)),
              "deterministic_temperature": float(np.float32(plain_temperature)),
              "uncertain_rule": None, "thresholds": None, "conformal": None, "target": None}
    graph = {"temperature": fitted["temperature"], "deterministic_temperature": fitted["deterministic_temperature"]}
    if head in ("softmax", "logits"):
        achieved = {"nll_before": metrics.negative_log_likelihood(before, y),
                    "nll_after": metrics.negative_log_likelihood(after, y)}
        plain_after = C.apply_temperature(plain_pass, plain_temperature, head)[0]
        for name, mean in (("before", before), ("after", after), ("deterministic_before", plain_pass[0]),
                           ("deterministic_after", plain_after)):
            achieved[f"ece_{name}"] = metrics.expected_calibration_error(mean.max(-1), mean.argmax(-1) == y)
        prediction = Prediction.from_samples(calibrated.astype(np.float32), head, keep_samples=False)
        prediction.measures.update(single_pass or {})
        correct = prediction.mean.argmax(-1) == y
        choice = _choose_measure(prediction, correct, evidence, measure, temperature, head, C)
        measure = choice["chosen"]
        fitted["measure_choice"] = choice
        _fit_rule(candidate_scores(prediction)[measure], correct, measure, target_accuracy, target_coverage,
                  prediction.uncertain, C, fitted, graph, achieved)
    else:
        achieved = {"nll_before": metrics.bernoulli_negative_log_likelihood(before, y),
                    "nll_after": metrics.bernoulli_negative_log_likelihood(after, y)}
        thresholds, per_label = _label_thresholds(after, y, target_precision, C)
        fitted["thresholds"] = thresholds
        fitted["target"] = {"precision": target_precision} if target_precision is not None else {"f1": "max"}
        rule = default_rule(head)
        fitted["uncertain_rule"] = str(rule)
        graph.update(thresholds=thresholds, sigmoid_rule=tuple(c.value for c in rule.conditions))
        achieved["per_label"] = per_label
    if conformal is not None:
        fitted["conformal"] = fit_conformal(conformal, after, y, graph, achieved, seed=seed)
    fitted["achieved"] = achieved
    fitted["graph"] = graph
    return fitted


def _fit_rule(score, correct, measure, target_accuracy, target_coverage, default_flags, C, fitted, graph,
              achieved) -> None:
    """The UNCERTAIN rule's threshold on `score` (the chosen measure, higher = less certain) for the
    target given, into `fitted`, `graph` and `achieved`;
    without a target, what the default rule (`default_flags`) achieves there."""
    from ..evaluate import metrics

    chosen = None
    if target_accuracy is not None:
        chosen = C.threshold_for_accuracy(score, correct, target_accuracy)
        if chosen["accepted"] == 0:
            best = metrics.accuracy_at_coverage(score, correct, 1 / len(score))
            raise InputError(f"--target-accuracy {target_accuracy}: not reached on the calibration set even by "
                             f"the most certain input by {measure} (accuracy {best:.3f}); lower the target")
        fitted["target"] = {"accuracy": target_accuracy}
    elif target_coverage is not None:
        chosen = C.threshold_for_coverage(score, target_coverage, correct)
        fitted["target"] = {"coverage": target_coverage}
    if chosen is not None:
        # Above the highest calibration score lies no evidence: keep such inputs flagged.
        threshold = float(np.float32(min(chosen["threshold"], float(score.max()))))
        # max_logit is ranked negated (higher = less certain): its rule is "max_logit < -threshold".
        fitted["uncertain_rule"] = f"max_logit < {-threshold!r}" if measure == "max_logit" else \
            f"{measure} > {threshold!r}"
        graph["uncertain"] = (measure, -threshold if measure == "max_logit" else threshold)
        accepted = score <= threshold
        achieved.update(coverage=float(accepted.mean()),
                        accepted_accuracy=float(correct[accepted].mean()) if accepted.any() else None)
    else:
        flagged = default_flags  # no rule given: the default one
        achieved.update(coverage=float((~flagged).mean()),
                        accepted_accuracy=float(correct[~flagged].mean()) if (~flagged).any() else None)


def _choose_measure(prediction, correct, evidence, measure, temperature, head, C) -> dict:
    """measure_choice's entry for the prediction of the calibration set (its feature distances
    replaced by the cross-fitted ones of `evidence`)."""
    from ..runtime.prediction import Prediction
    from .measure_choice import candidate_scores, measure_choice

    if evidence.feature_distance is not None:
        prediction.measures["feature_distance"] = evidence.feature_distance.astype(np.float32)
    if measure is not None and measure not in candidate_scores(prediction):
        raise InputError(f"--measure {measure}: this file has no such score (single-pass scores need a "
                         "softmax or logits head whose samples are a Softmax of logits, and a feature layer)")
    outside = None
    if evidence.ood_samples is not None:
        outside = Prediction.from_samples(C.apply_temperature(evidence.ood_samples, temperature, head).astype(
            np.float32), head, keep_samples=False)
        outside.measures.update(evidence.ood_scores)
    return measure_choice(prediction, outside, correct, measure)


def _label_thresholds(probabilities, y, target_precision, C):
    """One decision threshold per label of a sigmoid head (the best F1, or the lowest reaching
    target_precision), with each label's precision, recall and F1 at it."""
    thresholds, per_label = [], []
    for j in range(probabilities.shape[-1]):
        if target_precision is not None:
            found = C.threshold_for_precision(probabilities[:, j], y[:, j], target_precision)
            if found["threshold"] is None:
                raise InputError(f"--target-precision {target_precision}: label {j} never reaches it on the "
                                 "calibration set; lower the target")
        else:
            found = C.best_f1_threshold(probabilities[:, j], y[:, j])
        thresholds.append(float(np.float32(found["threshold"])))
        per_label.append({key: found[key] for key in ("precision", "recall", "f1")})
    return thresholds, per_label


def _validate(data_bytes, uncalibrated, labelled, output, fitted, folder: Path, settings, C) -> List[str]:
    """The runtime's load checks, live randomness, and the calibrated deterministic pass equal to
    the numpy temperature scaling of the uncalibrated one; the graph's decision outputs equal the
    runtime's."""
    from ..evaluate.labelled_sets import take
    from ..runtime.errors import ModelFileError
    from ..runtime.session import MCSession

    path = folder / "calibrated.onnx"
    path.write_bytes(data_bytes)
    try:  # the load makes every check the runtime makes (as check_model_bytes does for an export)
        calibrated = MCSession(path, settings=settings.replace(verify=True))
    except ModelFileError as err:
        raise ValidationError(f"validation failed (runtime contract): {err}") from None
    checks = [f"{len(calibrated.self_check())} live-randomness checks"]
    x = take(labelled.x, slice(0, CHECK_INPUTS))
    name = output.prefix + "samples"
    if fitted.get("temperature") is None:  # a regression head: intervals only
        return checks + [graph_check(calibrated, x, output, fitted["conformal"])]
    expected = C.apply_temperature(uncalibrated.run_raw(x, passes=1, stochastic=False)[name],
                                   fitted["deterministic_temperature"], output.head)
    found = calibrated.run_raw(x, passes=1, stochastic=False)
    gap = float(np.abs(found[name] - expected).max())
    if not gap <= AGREEMENT:
        raise ValidationError(f"validation failed: the calibrated deterministic pass differs from temperature "
                              f"scaling by {gap:.2e} (> {AGREEMENT:g})")
    checks.append(f"deterministic pass = temperature scaling of the uncalibrated file ({gap:.1e})")
    prediction = calibrated.predict(x, dropout=False)
    prediction = prediction[output.name] if isinstance(prediction, dict) else prediction
    if output.prefix + "uncertain" in found:
        disagree = int((found[output.prefix + "uncertain"].reshape(-1) != prediction.uncertain).sum())
        # Measures within float32 rounding of the threshold may fall either side.
        if disagree > max(1, len(prediction) // 50):
            raise ValidationError(f"validation failed: the graph's uncertain output disagrees with the rule on "
                                  f"{disagree} of {len(prediction)} inputs")
        checks.append(f"graph's uncertain output = the rule ({disagree} of {len(prediction)} differ)")
    if fitted.get("conformal"):
        checks.append(graph_check(calibrated, x, output, fitted["conformal"]))
    return checks
