"""Issue 26's three ways to pay less for T passes, side by side in one run (its item 5): adaptive
passes, skipping dropped units and the analytic mode, on the shipped CNN and MLP and the Keras
Applications model of bench/subjects.py.

    python bench/cost_of_passes.py            # prints one markdown table (about 12 min on 2 cores)
    python bench/cost_of_passes.py --quick    # fewer inputs and repeats (about 4 min)

Per model, each column computed as its own script computes it (the functions are theirs):
- auto against fixed T=200 (bench/adaptive.py's compare, same mask seed): the share of inputs whose
  label and UNCERTAIN verdict agree, the mean passes, and auto's time over fixed's; over the four
  kinds of inputs of subjects.py (100 of each; --quick 25), the time ratio their mean;
- skipping dropped units (bench/dropped_units.py): the FLOPs `convert --skip-dropped` saves and the
  rewritten file's time over the standard one's, at the model's perf-line T and batch 32 (medians of
  interleaved rounds); "-" where convert finds nothing to skip;
- the analytic mode against MC T=50 at batch 1 (bench/analytic.py's measure: its own convert, 32
  inputs convert did not see; --quick 16): the speed-up, the largest gap of the mean probabilities
  to MC T=1000, and the Spearman correlation of the mutual information.
The full runs behind issue 26's acceptance are the three scripts' own (BENCHMARKS.md).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import adaptive  # noqa: E402  (bench/adaptive.py)
import analytic  # noqa: E402  (bench/analytic.py)
import dropped_units  # noqa: E402  (bench/dropped_units.py)
import run as harness  # noqa: E402  (bench/run.py: timing, machine line)
import subjects  # noqa: E402  (bench/subjects.py: the models and inputs)

# The perf lines' passes (issue 26: MLP T=100, CNN T=50); the Applications model as the CNN.
SKIP_PASSES = {"mlp": 100, "cnn": 50, subjects.APPLICATION: 50}
SKIP_BATCH = 32


def auto_columns(session, per_kind: int) -> list:
    rows = [adaptive.compare(session, subjects.as_input(x, session.info.input_shape[1:]))
            for x in subjects.kinds(per_kind).values()]
    both = np.mean([row[2] for row in rows])
    return [f"{both:.1%}", f"{np.mean([row[3] for row in rows]):.1f}", f"{np.mean([row[4] for row in rows]):.2f}x"]


def skip_columns(name: str, session, folder: Path, budget: float, minimum: int) -> list:
    from mcdrop.convert import skip_dropped_file
    from mcdrop.runtime import MCSession
    from mcdrop.runtime.errors import InputError

    try:
        skip_dropped_file(subjects.onnx_file(name), folder / f"{name}_skipping.onnx")
    except InputError:
        return ["-", "-"]
    skipping = MCSession(folder / f"{name}_skipping.onnx", seed=dropped_units.MASK_SEED)
    keras_model = subjects.keras_model(name)
    passes = SKIP_PASSES[name]
    x = np.random.default_rng(0).random((SKIP_BATCH, *keras_model.inputs[0].shape[1:]), dtype=np.float32)
    before, after, _ = harness.work(keras_model)
    flops = SKIP_BATCH * before + passes * SKIP_BATCH * after
    saved = dropped_units.skip_flops(skipping, keras_model, passes, SKIP_BATCH)
    times = harness.interleaved_ms({"standard": lambda: session.predict(x, passes=passes),
                                    "skipping": lambda: skipping.predict(x, passes=passes)}, budget, minimum)
    return [f"{1 - saved / flops:.0%}", f"{times['skipping'] / times['standard']:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="25 inputs of each kind for auto, 16 for analytic")
    args = parser.parse_args()
    per_kind, analytic_count, repeats, budget, minimum = (25, 4, 3, 0.3, 3) if args.quick else (100, 8, 7, 1.5, 5)
    from mcdrop.runtime import MCSession

    print(harness.machine_line() + "\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcdrop-bench-") as folder:
        for name in subjects.NAMES:
            session = MCSession(subjects.onnx_file(name), seed=adaptive.MASK_SEED)
            found = analytic.measure(name, subjects.onnx_file(name), analytic_count, repeats, Path(folder))
            rows.append([name, *auto_columns(session, per_kind),
                         *skip_columns(name, session, Path(folder), budget, minimum),
                         f"{found['mc_1'] / found['analytic_1']:.1f}x", f"{found['gap']:.4f}", f"{found['spearman']:.3f}"])
    print(f"## The cost of T passes, side by side (auto: max {adaptive.MAX_PASSES} passes, {4 * per_kind} inputs; "
          f"skipping: T as the perf lines, batch {SKIP_BATCH}; analytic: against MC T={analytic.MC_PASSES} at "
          f"batch 1, {4 * analytic_count} inputs)\n")
    harness.table(["model", "auto: both agree", "auto: mean passes", "auto / fixed time", "skipping: FLOPs saved",
                   "skipping / standard time", "analytic speed-up", f"analytic gap to MC T={analytic.REFERENCE_PASSES}",
                   "analytic Spearman MI"], rows)
    print(f"\ntargets (issue 26): auto >= {adaptive.TARGETS[0]:.0%} agreement, <= {adaptive.TARGETS[1]} passes, "
          f"<= {adaptive.TARGETS[2]}x time (shipped CNN); analytic >= {analytic.TARGETS[0]:g}x, gap <= "
          f"{analytic.TARGETS[1]}, Spearman >= {analytic.TARGETS[2]}")


if __name__ == "__main__":
    main()
