"""`evaluate --report DIR`: report.json, a report.md a person can read, and PNG plots.

The plots need matplotlib (the `evaluate` extra); it is imported here only, with the Agg backend,
so a machine without a display draws them too. Without it report.json and report.md are written
all the same. Every file is written atomically (complete or absent), and none through a symbolic
link: neither DIR nor a file in it may be one, as for `infer --out`.
"""

import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..runtime.errors import InputError
from ..runtime.safe_files import atomic_writer, check_writable_target
from . import metrics
from .evaluation import COVERAGES, Evaluation, usable_scores, with_ood

# Every plot is FIGURE_INCHES at DPI: 1500 x 600 pixels, two panels side by side (MC, deterministic).
FIGURE_INCHES = (10, 4)
DPI = 150
# The one-number metrics of every head, in the order reports list them.
SCALAR_METRICS = ("accuracy", "nll", "brier", "ece", "mce", "adaptive_ece", "subset_accuracy", "hamming_loss",
                  "rmse", "mae", "gaussian_nll", "coverage_1_sigma", "coverage_2_sigma")
MODE_TITLES = {"mc": "MC dropout", "deterministic": "deterministic pass"}
TEXT_FILES = ("report.json", "report.md")
PLOT_FILES = ("reliability.png", "risk_coverage.png", "mutual_information.png", "roc.png", "shift.png")
# A rule's thresholds as shown to people; files and report.json keep the exact float32 value.
SHOWN_DIGITS = 4
_DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:[eE][-+]?\d+)?|(?<![\w.])\d+[eE][-+]?\d+")
NO_MATPLOTLIB = ("the report's plots need matplotlib (the evaluate extra: pip install -e '.[evaluate]'); "
                 "writing report.json and report.md only")


def rounded_rule(rule: str) -> str:
    """An UNCERTAIN rule as printed: its numbers to SHOWN_DIGITS significant digits."""
    return _DECIMAL.sub(lambda found: f"{float(found.group()):.{SHOWN_DIGITS}g}", rule)


def check_report_folder(folder) -> Path:
    """`folder` as an absolute path, refused (InputError) if it or a report file in it is a symbolic
    link or the wrong kind of file: checked before the evaluation, so a long run is not lost."""
    folder = Path(os.path.abspath(folder))
    if folder.is_symlink():
        raise InputError(f"--report {folder}: is a symbolic link; mcdrop does not write through links "
                         "(remove it or choose another folder)")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--report {folder}: exists and is not a folder")
    if folder.is_dir():
        for name in TEXT_FILES + PLOT_FILES:
            check_writable_target(folder / name)
    return folder


def plots_available() -> bool:
    """Whether matplotlib can be imported; if not, one warning says the report has no plots."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn(NO_MATPLOTLIB, stacklevel=2)
        return False
    return True


def write_report(folder, evaluation: Evaluation, with_plots: bool = True) -> List[Path]:
    """The report's files in `folder` (created if missing); returns their paths. with_plots=False,
    or no matplotlib (one warning), writes report.json and report.md only."""
    folder = check_report_folder(folder)
    with_plots = with_plots and plots_available()
    files = {"report.json": json.dumps(evaluation.report, indent=2, allow_nan=False).encode(),
             "report.md": markdown(evaluation.report, with_plots).encode()}
    if with_plots:
        files.update(plots(evaluation))  # drawn before anything is written
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--report {folder}: cannot make the folder ({err.strerror or err})") from None
    check_report_folder(folder)  # a link planted while the evaluation ran
    written = []
    for name, data in files.items():
        path = folder / name
        with atomic_writer(path) as f:
            f.write(data)
        written.append(path)
    return written


def plots(evaluation: Evaluation) -> Dict[str, bytes]:
    """PNG bytes by file name: the plots that fit the head (categorical heads get all four)."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("the report's plots need matplotlib: pip install -e '.[evaluate]'") from None
    matplotlib.use("Agg")
    head = evaluation.report["head"]
    if head in ("softmax", "logits"):
        found = {"reliability.png": _reliability(evaluation), "risk_coverage.png": _risk_coverage(evaluation),
                 "mutual_information.png": _mutual_information(evaluation), "roc.png": _roc(evaluation)}
        if "shift" in evaluation.report:
            found["shift.png"] = _shift(evaluation.report["shift"])
        return found
    return {}


def _figure():
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=FIGURE_INCHES, dpi=DPI)


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)  # no bbox="tight": every plot keeps its size
    plt.close(figure)
    return buffer.getvalue()


def _reliability(evaluation: Evaluation) -> bytes:
    figure, axes = _figure()
    for axis, mode in zip(axes, ("mc", "deterministic")):
        bins = evaluation.report[mode]["reliability"]
        lower, upper = np.array(bins["lower"]), np.array(bins["upper"])
        accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=float)
        axis.bar(lower, np.nan_to_num(accuracy), width=upper - lower, align="edge", edgecolor="black",
                 color="tab:blue", alpha=0.7, label="accuracy")
        axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        for left, width, value, count in zip(lower, upper - lower, accuracy, bins["count"]):
            if count:
                axis.text(left + width / 2, (0 if np.isnan(value) else value) + 0.01, str(count),
                          ha="center", va="bottom", fontsize=6)
        axis.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="confidence (top-class mean probability)",
                 ylabel="accuracy", title=f"{MODE_TITLES[mode]}: ECE {_cell(evaluation.report[mode]['ece'])}")
        axis.legend(loc="upper left", fontsize=7)
    return _png(figure)


def _risk_coverage(evaluation: Evaluation) -> bytes:
    figure, axes = _figure()
    correct = {mode: p.mean.argmax(-1) == evaluation.y for mode, p in evaluation.predictions.items()}
    for axis, mode in zip(axes, ("mc", "deterministic")):
        for name, score in usable_scores(evaluation.predictions[mode]).items():
            coverage, risk = metrics.risk_coverage(score, correct[mode])
            aurc = evaluation.report[mode]["aurc"][name]
            axis.plot(coverage, risk, label=f"{name} (AURC {_cell(aurc)})", linewidth=1.2)
        axis.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (share of inputs accepted)",
                 ylabel="risk (error rate of accepted)", title=MODE_TITLES[mode])
        axis.legend(fontsize=6)
    return _png(figure)


def _mutual_information(evaluation: Evaluation) -> bytes:
    """MI of right, wrong and OOD inputs (MC only: one pass has none), and 1 - confidence of the
    deterministic pass, the plain network's score, beside it."""
    figure, axes = _figure()
    for axis, mode, name in ((axes[0], "mc", "mutual_information"), (axes[1], "deterministic", "one_minus_confidence")):
        prediction = evaluation.predictions[mode]
        score = usable_scores(prediction)[name]
        correct = prediction.mean.argmax(-1) == evaluation.y
        groups = {"right": score[correct], "wrong": score[~correct]}
        if mode in evaluation.ood:
            groups["OOD"] = usable_scores(evaluation.ood[mode])[name]
        top = max(float(max((g.max() for g in groups.values() if len(g)), default=1.0)), 1e-6)
        edges = np.linspace(0, top, 31)
        for label, values in groups.items():
            if len(values):
                axis.hist(values, bins=edges, density=True, alpha=0.5, label=f"{label} ({len(values)})")
        axis.set(xlabel=f"{name} ({'nats' if 'information' in name else 'probability'})",
                 ylabel="density", title=MODE_TITLES[mode])
        axis.legend(fontsize=7)
    return _png(figure)


def _roc(evaluation: Evaluation) -> bytes:
    """Error detection (left) and, with OOD inputs, OOD detection (right): ROC of each score."""
    figure, axes = _figure()
    styles = {"mc": "-", "deterministic": "--"}
    for mode, prediction in evaluation.predictions.items():
        wrong = prediction.mean.argmax(-1) != evaluation.y
        inside = usable_scores(prediction)
        for name in ("mutual_information", "predictive_entropy", "one_minus_confidence"):
            if name not in inside:
                continue
            label = f"{MODE_TITLES[mode]}: {name}"
            fpr, tpr = metrics.roc_curve(inside[name], wrong)
            axes[0].plot(fpr, tpr, styles[mode], label=label, linewidth=1.2)
            if mode in evaluation.ood:
                outside = usable_scores(evaluation.ood[mode])[name]
                fpr, tpr = metrics.roc_curve(*with_ood(inside[name], outside))
                axes[1].plot(fpr, tpr, styles[mode], label=label, linewidth=1.2)
    axes[0].set(title="error detection (wrong = positive)")
    axes[1].set(title="OOD detection (OOD = positive)" if evaluation.ood else "OOD detection (no --ood data)")
    for axis in axes:
        axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6)
    return _png(figure)


def _shift(shift: dict) -> bytes:
    """Accuracy (left) and ECE (right) against severity, per corruption: MC dropout solid, the
    deterministic pass dashed."""
    figure, axes = _figure()
    severities = shift["severities"]
    for i, name in enumerate(shift["mc"]):
        for mode, style in (("mc", "-"), ("deterministic", "--")):
            rows = shift[mode][name]
            label = f"{name} ({MODE_TITLES[mode]})"
            for axis, key in zip(axes, ("accuracy", "ece")):
                axis.plot(severities, [np.nan if r[key] is None else r[key] for r in rows], style, color=f"C{i}",
                          marker="o", markersize=3, linewidth=1.2, label=label)
    axes[0].set(ylim=(0, 1.01), xlabel="severity (0: clean)", ylabel="accuracy", title="accuracy under shift")
    axes[1].set(ylim=(0, None), xlabel="severity (0: clean)", ylabel="ECE (15 bins)", title="calibration under shift")
    axes[0].legend(fontsize=5, ncol=2)
    return _png(figure)


def shift_markdown(shift: dict) -> List[str]:
    """report.md's "Under shift" section: per mode, a row per corruption and severity with accuracy,
    NLL, ECE and every score's error AUROC / shift AUROC (corrupted vs clean inputs)."""
    lines = ["", "## Under shift", "",
             "Corruptions of evaluate/shift.py applied to the labelled set (severity 0: the clean set). Each score cell: "
             "error AUROC / shift AUROC (corrupted inputs vs the clean ones, corrupted = positive).", ""]
    for mode in ("mc", "deterministic"):
        names = list(shift[mode][next(iter(shift[mode]))][0]["error_auroc"])
        lines += [f"### {MODE_TITLES[mode]}", "", "| corruption | severity | accuracy | NLL | ECE | " +
                  " | ".join(names) + " |", "|---" * (5 + len(names)) + "|"]
        for corruption, rows in shift[mode].items():
            for severity, row in zip(shift["severities"], rows):
                cells = [f"{_cell(row['error_auroc'][n])} / {_cell(row.get('shift_auroc', {}).get(n))}" for n in names]
                lines.append(f"| {corruption} | {severity} | {_cell(row['accuracy'])} | {_cell(row['nll'])} | "
                             f"{_cell(row['ece'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def spread_markdown(spread: dict) -> List[str]:
    """report.md's Monte Carlo spread: each headline figure's mean +- std over the mask seeds."""
    lines = ["", f"## Monte Carlo spread over {len(spread['mask_seeds'])} mask seeds "
             f"({', '.join(str(s) for s in spread['mask_seeds'])})", "",
             "| figure (MC dropout) | mean | std |", "|---|---|---|"]
    lines += [f"| {key} | {_cell(spread['mean'][key])} | {_cell(spread['std'][key])} |" for key in spread["mean"]]
    return lines


def markdown(report: dict, with_plots: bool = True) -> str:
    """The report as Markdown tables, MC dropout and the deterministic pass side by side (and the
    plots' links when they are written)."""
    lines = [f"# mcdrop evaluation: {report.get('model', '')}", "",
             f"Data: {report.get('data', '')} ({report['count']} inputs"
             + (f", {report['ood_count']} OOD inputs from {report.get('ood', '')}" if report.get("ood_count") else "")
             + f"); head {report['head']}; MC dropout with {report['passes']} passes"
             + (f", seed {report['seed']}" if report.get("seed") is not None else "") + ".", ""]
    if report.get("skipped"):
        lines += [f"Left out: {len(report['skipped'])} inputs that could not be read (--on-error skip):", ""]
        lines += [f"- {item['error']}" for item in report["skipped"]] + [""]
    mc, det = report["mc"], report["deterministic"]
    lines += ["| metric | MC dropout | deterministic |", "|---|---|---|"]
    for title, ours, theirs in _scalar_rows(mc, det, tuple(CONFORMAL_TITLES)):
        lines.append(f"| {title} | {_cell(ours)} | {_cell(theirs)} |")
    if (mc.get("conformal") or {}).get("per_class"):
        lines += ["", "Conformal coverage per class (MC dropout): " + ", ".join(
            f"{name} {_cell(value)}" for name, value in mc["conformal"]["per_class"].items()) + "."]
    if "aurc" in mc:
        lines += ["", "## Uncertainty measures (higher = less certain)", "",
                  "Each cell: MC dropout / deterministic pass (- where one pass has no such measure).", ""]
        tables = [("AURC (lower is better)", "aurc"), ("error detection AUROC", "error_auroc"),
                  ("error detection AUPR", "error_aupr")]
        if "ood_auroc" in mc:
            tables += [("OOD AUROC", "ood_auroc"), ("OOD AUPR", "ood_aupr"), ("OOD FPR at 95% TPR", "ood_fpr_at_95_tpr")]
        header = "| measure | " + " | ".join(title for title, _ in tables) + " | " + " | ".join(
            f"accuracy at {c:.0%} coverage" for c in COVERAGES) + " |"
        lines += [header, "|---" * (1 + len(tables) + len(COVERAGES)) + "|"]
        for name in mc["aurc"]:
            cells = [f"{_cell(mc[key][name])} / {_cell(det.get(key, {}).get(name))}" for _, key in tables]
            cells += [f"{_cell(mc['accuracy_at_coverage'][name][f'{c:.0%}'])} / "
                      f"{_cell(det['accuracy_at_coverage'].get(name, {}).get(f'{c:.0%}'))}" for c in COVERAGES]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        rule = mc["uncertain_rule"]
        lines += ["", f"UNCERTAIN rule ({rule['source']}): `{rounded_rule(rule['rule'])}` flags "
                  f"{rule['flagged']:.1%} of the "
                  f"inputs; accuracy of the others {_cell(rule['accepted_accuracy'])} (MC dropout)."]
        lines += ["", "## Per class (MC dropout)", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for name, row in mc["per_class"].items():
            lines.append(f"| {name} | {_cell(row['precision'])} | {_cell(row['recall'])} | {_cell(row['f1'])} | "
                         f"{row['support']} |")
        if "seed_spread" in report:
            lines += spread_markdown(report["seed_spread"])
        if "shift" in report:
            lines += shift_markdown(report["shift"])
        if with_plots:
            lines += ["", "## Plots", "", "![reliability](reliability.png)", "", "![risk-coverage](risk_coverage.png)",
                      "", "![mutual information](mutual_information.png)", "", "![ROC](roc.png)"]
            lines += ["", "![under shift](shift.png)"] if "shift" in report else []
    if "per_label" in mc:
        lines += ["", "## Per label (MC dropout / deterministic)", "",
                  "| label | ROC AUC | PR AUC | precision | recall | F1 | threshold | best-F1 threshold |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in mc["per_label"].items():
            other = det["per_label"][name]
            lines.append(f"| {name} | " + " | ".join(f"{_cell(row[k])} / {_cell(other[k])}" for k in (
                "roc_auc", "pr_auc", "precision", "recall", "f1")) + f" | {_cell(row['threshold'])} | "
                f"{_cell(row['best_f1_threshold'])} |")
    return "\n".join(lines) + "\n"


def summary_lines(report: dict) -> List[str]:
    """What `evaluate` prints without --json: the main figures, MC dropout beside the deterministic pass."""
    mc, det = report["mc"], report["deterministic"]
    lines = [f"model {report.get('model', '')}  data {report.get('data', '')} ({report['count']} inputs"
             + (f", {report['ood_count']} OOD" if report.get("ood_count") else "") + f")  passes {report['passes']}",
             f"{'':<40}{'MC dropout':>12}{'deterministic':>15}"]
    if report.get("skipped"):
        lines.insert(1, f"skipped {len(report['skipped'])} inputs that could not be read (listed in the JSON report)")
    for title, ours, theirs in _scalar_rows(mc, det, ("coverage", "lowest_class_coverage", "mean_set_size")):
        lines.append(f"{title:<40}{_cell(ours):>12}{_cell(theirs):>15}")
    for title, key in (("AURC", "aurc"), ("error AUROC", "error_auroc"), ("OOD AUROC", "ood_auroc")):
        for name, value in mc.get(key, {}).items():
            lines.append(f"{title + ' ' + name:<40}{_cell(value):>12}{_cell(det.get(key, {}).get(name)):>15}")
    if "per_label" in mc:
        for name, row in mc["per_label"].items():
            lines.append(f"label {name}: ROC AUC {_cell(row['roc_auc'])}  PR AUC {_cell(row['pr_auc'])}  "
                         f"F1 {_cell(row['f1'])} at {_cell(row['threshold'])}  best F1 {_cell(row['best_f1'])} at "
                         f"{_cell(row['best_f1_threshold'])}")
    spread = report.get("seed_spread")
    for key in (spread or {}).get("mean", {}):
        lines.append(f"{key + ' (' + str(len(spread['mask_seeds'])) + ' mask seeds)':<52}"
                     f"{_cell(spread['mean'][key])} +- {_cell(spread['std'][key])}")
    if "shift" in report:
        lines += _shift_summary(report["shift"])
    rule = mc.get("uncertain_rule")
    if rule and "rule" in rule:
        lines.append(f"UNCERTAIN ({rule['source']}: {rounded_rule(rule['rule'])}): {rule['flagged']:.1%} flagged, "
                     "accuracy of "
                     f"the rest {_cell(rule['accepted_accuracy'])}")
    return lines


def choice_lines(choice: dict) -> List[str]:
    """What `calibrate` prints about the rule's measure: how it was chosen, then every candidate's
    error and OOD AUROC (calibrate/measure_choice.py)."""
    how = "given (--measure)" if choice["given"] else f"chosen by {choice['criterion']}"
    ood = f", {choice['ood_inputs']} OOD inputs" if choice["ood_inputs"] else ""
    lines = [f"rule measure     {choice['chosen']}, {how} ({choice['inputs']} inputs{ood}; feature distance "
             "cross-fitted)", f"{'  candidate':<30}{'error AUROC':>12}{'OOD AUROC':>12}"]
    for name, row in choice["candidates"].items():
        mark = " *" if name == choice["chosen"] else ""
        lines.append(f"{'  ' + name + mark:<30}{_cell(row['error_auroc']):>12}{_cell(row['ood_auroc']):>12}")
    return lines


def _shift_summary(shift: dict) -> List[str]:
    """Accuracy per severity, averaged over the corruptions, MC dropout and deterministic."""
    lines = []
    for severity in shift["severities"]:
        means = [np.mean([rows[severity]["accuracy"] for rows in shift[mode].values()]) for mode in ("mc", "deterministic")]
        lines.append(f"{f'accuracy under shift, severity {severity}':<40}{_cell(float(means[0])):>12}"
                     f"{_cell(float(means[1])):>15}")
    return lines


CONFORMAL_TITLES = {"coverage": "conformal set coverage", "lowest_class_coverage": "conformal lowest class coverage",
                    "mean_set_size": "conformal mean set size", "mean_interval_width": "conformal mean interval width"}


def _scalar_rows(mc: dict, det: dict, conformal_fields):
    """(title, MC dropout value, deterministic value) of the scalar metrics the report has, then
    the conformal `conformal_fields`, for the Markdown table and the printed summary alike."""
    for key in SCALAR_METRICS:
        if key in mc:
            yield key, mc.get(key), det.get(key)
    if "conformal" in mc:
        for field in conformal_fields:
            if field in mc["conformal"]:
                yield CONFORMAL_TITLES[field], mc["conformal"][field], det.get("conformal", {}).get(field)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
