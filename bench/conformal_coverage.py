"""Conformal coverage of every categorical method on the shipped CNN (issue 27 item 4's acceptance).

    python bench/conformal_coverage.py           # prints markdown tables (about 1 min on 2 cores)

The 450 held-out digits (build_models.split: never trained on) are predicted once per mask seed by
models/cnn_calibrated.onnx (T = 50; its temperature, fitted on the shipped calibration half, is a
fixed function of the input, so coverage keeps its guarantee). Then, for the shipped split
(build_models.calibration_split) and for SPLITS random stratified halves: each method is fitted on
one half (calibrate/conformal.py, as `calibrate --conformal-method` fits it) and its sets
(runtime/conformal_sets.py) are scored on the other half: coverage overall, the lowest class's
coverage, mean set size. "other seed" fits on mask seed 0's means and tests on mask seed 1's.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

ALPHA = 0.1
PASSES = 50
SPLITS = 200
METHODS = ("lac", "aps", "raps", "mondrian")


def held_out():
    import build_models

    images, labels = build_models.digits_28x28()
    _, test_img, _, test_y = build_models.split(images, labels)
    return build_models, test_img, test_y


def fit(method, mean, y, seed):
    from mcdrop.calibrate import conformal as K
    from mcdrop.calibrate.fitting import conformal_quantile, lac_scores

    if method == "lac":
        return {"method": "lac", "quantile": K.finite(conformal_quantile(lac_scores(mean, y), ALPHA))}
    return K.fit(method, ALPHA, mean, y, seed=seed)


def scored(entry, mean, y):
    from mcdrop.calibrate import conformal as K

    hits, size = K.coverage(entry, mean, y)
    per_class = [hits[y == c].mean() for c in np.unique(y)]
    return hits.mean(), min(per_class), size.mean()


def main():
    from sklearn.model_selection import StratifiedKFold

    from mcdrop.runtime.session import MCSession

    build_models, images, y = held_out()
    x = build_models.to_input(images, False)
    means = {seed: MCSession(ROOT / "models" / "cnn_calibrated.onnx", seed=seed).predict(x, passes=PASSES).mean
             for seed in (0, 1)}
    shipped = build_models.calibration_split(np.arange(len(y)), y)
    splits = [(shipped[0], shipped[2])] + [
        next(StratifiedKFold(2, shuffle=True, random_state=s).split(x, y)) for s in range(SPLITS)]
    print(f"alpha {ALPHA} (target coverage {1 - ALPHA}), {len(y)} held-out digits, halves of {len(y) // 2}, "
          f"T = {PASSES}\n")
    print("| method | shipped split: coverage / lowest class / size | random halves: mean coverage (sd, min) | "
          "mean lowest class | mean size | other seed: mean coverage |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        rows, crossed = [], []
        for i, (cal, test) in enumerate(splits):
            entry = fit(method, means[0][cal], y[cal], seed=i)
            rows.append(scored(entry, means[0][test], y[test]))
            crossed.append(scored(entry, means[1][test], y[test])[0])
        first, rest = rows[0], np.array(rows[1:])
        print(f"| {method} | {first[0]:.3f} / {first[1]:.3f} / {first[2]:.2f} | {rest[:, 0].mean():.3f} "
              f"({rest[:, 0].std():.3f}, {rest[:, 0].min():.3f}) | {rest[:, 1].mean():.3f} | {rest[:, 2].mean():.2f} | "
              f"{np.mean(crossed[1:]):.3f} |")


if __name__ == "__main__":
    main()
