"""Adaptive passes against a fixed T, on the shipped CNN (issue 26's acceptance) and the other
models of bench/subjects.py.

    python bench/adaptive.py                       # prints a markdown table
    python bench/adaptive.py --quick               # fewer inputs
    python bench/adaptive.py --models cnn,mobilenetv3small

For each set of inputs (held-out digits, the same rotated 90 degrees, uniform noise, blends of two
digits), with the same mask seed: predict with passes=T (fixed) and with passes="auto",
max_passes=T; the share of inputs whose label and UNCERTAIN verdict agree, the mean passes auto
ran, and the time of auto over fixed (best of 3 each, after a warm-up predict).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import subjects  # noqa: E402  (bench/subjects.py: the models and inputs)

MAX_PASSES = 200
MASK_SEED = 0
# Issue 26: >= 99% agreement, <= 50 mean passes, <= 0.4x the fixed run's time.
TARGETS = (0.99, 50, 0.4)


def compare(session, x, repeats: int = 3):
    """(label agreement, verdict agreement, both, mean passes, auto time / fixed time), times the best
    of `repeats` (the session measured its cost for auto in the warm-up)."""
    session.predict(x[:8], passes="auto", max_passes=MAX_PASSES, mask_seed=MASK_SEED)  # warm-up
    fixed_s = auto_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fixed = session.predict(x, passes=MAX_PASSES, mask_seed=MASK_SEED)  # errors on first read, as auto's
        fixed_s = min(fixed_s, time.perf_counter() - start)
        start = time.perf_counter()
        auto = session.predict(x, passes="auto", max_passes=MAX_PASSES, mask_seed=MASK_SEED)
        auto_s = min(auto_s, time.perf_counter() - start)
    label = fixed.measures["label"] == auto.measures["label"]
    verdict = fixed.uncertain == auto.uncertain
    return label.mean(), verdict.mean(), (label & verdict).mean(), auto.input_passes.mean(), auto_s / fixed_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 inputs of each kind instead of 450")
    parser.add_argument("--models", default="cnn", help=f"comma-separated, of {', '.join(subjects.NAMES)}")
    args = parser.parse_args()
    from mcdrop.runtime import MCSession

    sessions = {name: MCSession(subjects.onnx_file(name), seed=MASK_SEED) for name in args.models.split(",")}
    print(f"fixed T={MAX_PASSES} vs passes=auto max {MAX_PASSES} (mask seed {MASK_SEED}); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (a shared machine makes the times rough)\n")
    print("| model | inputs | n | label agrees | verdict agrees | both agree | mean passes | time auto / fixed |")
    print("|---|---|---|---|---|---|---|---|")
    for model, session in sessions.items():
        rows = []
        for name, x in subjects.kinds(100 if args.quick else 450).items():
            row = compare(session, subjects.as_input(x, session.info.input_shape[1:]))
            rows.append((len(x), row))
            print(f"| {model} | {name} | {len(x)} | {row[0]:.1%} | {row[1]:.1%} | {row[2]:.1%} | {row[3]:.1f} "
                  f"| {row[4]:.2f}x |")
        n = sum(count for count, _ in rows)
        both = sum(count * row[2] for count, row in rows) / n
        passes = sum(count * row[3] for count, row in rows) / n
        ratio = float(np.mean([row[4] for _, row in rows]))
        ok = both >= TARGETS[0] and passes <= TARGETS[1] and ratio <= TARGETS[2]
        print(f"| {model} | all | {n} | | | {both:.1%} | {passes:.1f} | {ratio:.2f}x (mean); targets "
              + ("met" if ok else "NOT met") + " |")
    print(f"\ntargets: >= {TARGETS[0]:.0%} agreement, <= {TARGETS[1]} mean passes, <= {TARGETS[2]}x time "
          f"(load average at the end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
