"""Throughput of `cli.py score` on the shipped CNN: the local engine against the Ray engine.

    python bench/score.py                    # 20000 inputs, local and ray, 1 and 2 workers
    python bench/score.py --quick            # 2000 inputs
    python bench/score.py --engines local --workers 1,2,4 --inputs 50000

The inputs are scikit-learn's digits (8x8, 0..16) upscaled to 28x28 with Pillow's bilinear
filter, divided by 255 and cycled to --inputs rows, saved as one .npy in a temporary folder. Each
case is one whole `cli.py score` process run from the repository root (T=--passes, shared masks
with --mask-seed), timed wall-clock, startup included (Ray's start is a large part of a small
job). Local: --workers is the CPU threads of the one session; ray: the actors, 1 CPU each. Prints
the machine line and a markdown table (wall s, inputs/s, speedup against the same engine with the
fewest workers), then checks every output: one row per input and index, no error rows, and mean
columns agreeing with the first run's (exit 1 past 1e-4).
"""

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4


def machine_line():
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    ray = importlib.util.find_spec("ray") and __import__("ray").__version__
    return (f"Machine: {cpu}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__}, "
            f"ray {ray or 'not installed'}, Python {platform.python_version()}.")


def digits_28x28(n):
    """[n, 28, 28, 1] float32 in [0, 1]: the 1797 digits upscaled, cycled to n rows."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = np.stack([np.asarray(Image.fromarray((im * 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
                       for im in load_digits().images])
    return (images[np.arange(n) % len(images)] / 255.0).astype(np.float32)[..., None]


def score(engine, workers, inputs, out, args):
    command = [sys.executable, "cli.py", "score", str(inputs), "--model", str(args.model), "--out", str(out),
               "--engine", engine, "--workers", str(workers), "--batch-size", str(args.batch_size),
               "--passes", str(args.passes), "--mask-seed", str(args.mask_seed)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command[1:])} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return wall


def check(path, n):
    """The run's mean column as [n, outputs], after checking one row per input and no errors."""
    from mcdrop.score.output import read_scores

    table = read_scores(path)
    index = table.column("index").to_numpy()
    errors = len(table) - table.column("error").null_count
    if len(table) != n or not np.array_equal(index, np.arange(n)) or errors:
        sys.exit(f"{path}: {len(table)} rows for {n} inputs, {len(np.unique(index))} distinct indices, "
                 f"{errors} error rows")
    return table.column("mean").combine_chunks().flatten().to_numpy().reshape(n, -1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=ROOT / "models" / "cnn.onnx", type=Path)
    parser.add_argument("--engines", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--inputs", type=int, default=None, help="rows to score [20000; --quick: 2000]")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--mask-seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2000 inputs unless --inputs is given")
    args = parser.parse_args()
    n = args.inputs or (2000 if args.quick else 20000)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    counts = sorted({int(w) for w in args.workers.split(",")})
    if unknown := set(engines) - {"local", "ray"}:
        parser.error(f"--engines: unknown {', '.join(sorted(unknown))}; choose local, ray")

    print(machine_line() + "\n")
    if "ray" in engines and importlib.util.find_spec("ray") is None:
        print("Ray is not installed (pip install -e '.[ray]'): the ray rows are skipped.\n")
        engines.remove("ray")
    rows, means = [], []
    with tempfile.TemporaryDirectory(prefix="mcdrop-score-bench-") as folder:
        inputs = Path(folder) / "digits.npy"
        np.save(inputs, digits_28x28(n))
        for engine in engines:
            base = None
            for workers in counts:
                out = Path(folder) / (f"{engine}-{workers}" + ("" if engine == "ray" else ".parquet"))
                print(f"scoring {n} inputs: --engine {engine} --workers {workers} ...", file=sys.stderr, flush=True)
                wall = score(engine, workers, inputs, out, args)
                means.append((f"{engine} {workers}", check(out, n)))
                base = base or wall
                rows.append([engine, workers, n, f"{wall:.1f}", f"{n / wall:,.0f}", f"{base / wall:.2f}"])

    print(f"## `cli.py score`, {args.model.name}, T={args.passes}, batch size {args.batch_size}, "
          f"mask seed {args.mask_seed} (wall clock, whole process)\n")
    lines = ["| engine | workers | inputs | wall s | inputs/s | speedup |", "|---|---|---|---|---|---|"]
    print("\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]) + "\n")
    if not means:
        sys.exit("no engine ran")
    first_name, first = means[0]
    worst = max(((float(np.abs(mean - first).max()), name) for name, mean in means[1:]),
                key=lambda pair: pair[0], default=(0.0, "no other run"))
    print(f"Every run: {n} rows, each index once, no errors. Mean columns against {first_name}: "
          f"max abs difference {worst[0]:.2e} ({worst[1]}; tolerance {TOLERANCE:g}).")
    if worst[0] > TOLERANCE:
        sys.exit(1)


if __name__ == "__main__":
    main()
