"""Issue 27's acceptance on the shipped CNN, measured: a calibrated file's scores against the plain
network's 1 - confidence, on OOD inputs the project's tests never make.

    python models/ood_acceptance.py [--calibrated models/cnn_calibrated.onnx] [--passes 50]

The calibrated file is fitted on the first half of the held-out digits (build_models.calibration_split;
models/build_models.py --calibrate-only writes it so); here it is evaluated on the other half (the
in-distribution inputs, and their errors) against NEW_OOD inputs: geometric shapes drawn with Pillow,
sinusoidal gratings, two held-out digits overlaid, held-out digits inverted and sparse salt-and-pepper
noise. Prints a table of every score's error AUROC and OOD AUROC (MC dropout and the deterministic
pass) beside the plain network's, and the acceptance lines. build_models.py puts the same figures in
MODEL_CARD.md.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import build_models as B  # noqa: E402

PER_FAMILY = 100
FAMILIES = ("shapes", "gratings", "digit pairs", "inverted digits", "salt and pepper")
# The acceptance: the best OOD score >= OOD_TARGET and >= the plain network's + OOD_MARGIN.
OOD_TARGET, OOD_MARGIN = 0.99, 0.02


def shapes(rng, count):
    """Outlines of circles, rectangles and triangles and single lines, strokes 2-4 pixels, bright on black."""
    out = []
    for i in range(count):
        img = Image.new("L", (B.SIZE, B.SIZE), 0)
        draw = ImageDraw.Draw(img)
        width = int(rng.integers(2, 5))
        a, b = rng.integers(3, 11, 2), rng.integers(17, 26, 2)
        kind = i % 4
        if kind == 0:
            draw.ellipse([*a, *b], outline=255, width=width)
        elif kind == 1:
            draw.rectangle([*a, *b], outline=255, width=width)
        elif kind == 2:
            draw.polygon([(int(a[0]), int(b[1])), (int(b[0]), int(b[1])), (int((a[0] + b[0]) // 2), int(a[1]))],
                         outline=255, width=width)
        else:
            draw.line([*a, *b], fill=255, width=width)
        out.append(np.asarray(img))
    return np.stack(out)


def gratings(rng, count):
    """Sinusoidal stripes of random period (4-14 pixels), orientation and phase, 0-255."""
    rows, cols = np.indices((B.SIZE, B.SIZE))
    out = []
    for _ in range(count):
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(4, 14), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / period + phase)
        out.append(((wave + 1) * 127.5).astype(np.uint8))
    return np.stack(out)


def new_ood(test_img, seed=B.SEED + 11):
    """{family: uint8 images [PER_FAMILY, 28, 28]}: inputs no test of the project makes."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(test_img), (PER_FAMILY, 2))
    salt = (rng.random((PER_FAMILY, B.SIZE, B.SIZE)) < 0.1) * 255
    return {"shapes": shapes(rng, PER_FAMILY), "gratings": gratings(rng, PER_FAMILY),
            "digit pairs": np.maximum(test_img[pairs[:, 0]], test_img[pairs[:, 1]]),
            "inverted digits": 255 - test_img[rng.integers(0, len(test_img), PER_FAMILY)],
            "salt and pepper": salt.astype(np.uint8)}


def measure(calibrated=HERE / "cnn_calibrated.onnx", passes=B.PASSES):
    """Every score's error and OOD AUROC for the calibrated file (MC and deterministic) and the plain
    cnn.onnx's deterministic 1 - confidence: {"rows": [...], "plain": {...}, "counts": {...}, ...}."""
    from mcdrop.evaluate.evaluation import categorical_report, evaluate, predict_all, usable_scores, with_ood
    from mcdrop.evaluate.metrics import auroc
    from mcdrop.evaluate.labelled_sets import LabelledSet
    from mcdrop.runtime.session import MCSession

    images, labels = B.digits_28x28()
    _, test_img, _, test_y = B.split(images, labels)
    _, _, eval_img, eval_y = B.calibration_split(test_img, test_y)
    families = new_ood(eval_img)
    ood = B.to_input(np.concatenate(list(families.values())), False)
    data = LabelledSet(B.to_input(eval_img, False), eval_y, "held-out digits, second half", "")
    reports, per_family = {}, {}
    family = np.repeat(np.arange(len(families)), [len(v) for v in families.values()])
    for name, path in (("plain", HERE / "cnn.onnx"), ("calibrated", Path(calibrated))):
        session = MCSession(path, seed=B.SEED)
        output = session.info.model_outputs[0]
        if name == "plain":  # its deterministic pass is all the comparison reads
            found = [predict_all(session, x, output, passes, False) for x in (data.x, ood)]
            reports[name] = {"deterministic": categorical_report(found[0], data.y, found[1], output)}
        else:
            result = evaluate(session, data, output, passes=passes, ood=ood)
            reports[name] = result.report
            found = [result.predictions["deterministic"], result.ood["deterministic"]]
        # OOD AUROC of each family alone, for the deterministic pass's scores
        inside, outside = (usable_scores(p) for p in found)
        for score in ("one_minus_confidence", "feature_distance", "negative_max_logit"):
            if score in inside:
                per_family[f"{score} ({name})"] = {
                    title: auroc(*with_ood(inside[score], outside[score][family == i]))
                    for i, title in enumerate(families)}
    rows = []
    calibrated_report = reports["calibrated"]
    for score in calibrated_report["mc"]["error_auroc"]:
        row = {"score": score}
        for mode in ("mc", "deterministic"):
            for key in ("error_auroc", "ood_auroc"):
                row[f"{key} {mode}"] = calibrated_report[mode][key].get(score)
        rows.append(row)
    plain = {key: reports["plain"]["deterministic"][key]["one_minus_confidence"] for key in ("error_auroc", "ood_auroc")}
    return {"rows": rows, "plain": plain, "passes": passes, "per_family": per_family,
            "counts": {"test": int(len(eval_y)), "errors": int(round((1 - calibrated_report["mc"]["accuracy"])
                                                                     * len(eval_y))),
                       "ood": int(len(ood)), "families": list(families)},
            "rule": calibrated_report["mc"]["uncertain_rule"]}


def best(rows, key):
    """(score and mode, value) with the highest `key` ("error_auroc" or "ood_auroc") over both modes."""
    found = [(row[f"{key} {mode}"], f"{row['score']} ({mode})") for row in rows for mode in ("mc", "deterministic")
             if row[f"{key} {mode}"] is not None]
    value, name = max(found)
    return name, value


def table(result):
    """The printed table and acceptance lines (also MODEL_CARD.md's)."""
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| score (higher = less certain) | error AUROC, MC | OOD AUROC, MC | error AUROC, deterministic | "
             "OOD AUROC, deterministic |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['score']} | " + " | ".join(f(row[f'{k} {m}']) for m in ("mc", "deterministic")
                                                         for k in ("error_auroc", "ood_auroc")) + " |")
    plain = result["plain"]
    lines.append(f"| plain `cnn.onnx`: 1 - confidence | - | - | {f(plain['error_auroc'])} | {f(plain['ood_auroc'])} |")
    ood_name, ood_value = best(result["rows"], "ood_auroc")
    error_name, error_value = best(result["rows"], "error_auroc")
    both = [row["score"] for row in result["rows"] for m in ("mc", "deterministic")
            if (row[f"ood_auroc {m}"] or 0) >= max(OOD_TARGET, plain["ood_auroc"] + OOD_MARGIN)
            and (row[f"error_auroc {m}"] or 0) >= plain["error_auroc"]]
    lines += ["", f"- best OOD score: {ood_name}, OOD AUROC {ood_value:.4f} (target >= {OOD_TARGET} and >= plain "
              f"{plain['ood_auroc']:.4f} + {OOD_MARGIN}: {'met' if ood_value >= max(OOD_TARGET, plain['ood_auroc'] + OOD_MARGIN) else 'NOT met'})",
              f"- best error score: {error_name}, error AUROC {error_value:.4f} (plain {plain['error_auroc']:.4f}: "
              f"{'met' if error_value >= plain['error_auroc'] else 'NOT met'})",
              f"- one score meeting both: {', '.join(sorted(set(both))) or 'none'}", "",
              "OOD AUROC per family (deterministic pass):", "",
              "| score | " + " | ".join(result["counts"]["families"]) + " |", "|---" * (1 + len(result["counts"]["families"])) + "|"]
    lines += [f"| {name} | " + " | ".join(f(v) for v in row.values()) + " |" for name, row in result["per_family"].items()]
    return lines


def main():
    args = sys.argv[1:]
    calibrated = args[args.index("--calibrated") + 1] if "--calibrated" in args else HERE / "cnn_calibrated.onnx"
    passes = int(args[args.index("--passes") + 1]) if "--passes" in args else B.PASSES
    result = measure(calibrated, passes)
    c = result["counts"]
    print(f"{calibrated}: {c['test']} held-out digits ({c['errors']} errors), {c['ood']} OOD inputs "
          f"({', '.join(c['families'])}), {passes} passes, seed {B.SEED}")
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
