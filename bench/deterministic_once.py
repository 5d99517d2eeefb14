"""What running the deterministic part once saves (issue: export, point 5).

    python bench/deterministic_once.py [--model models/mlp.keras] [--passes 100] [--repeats 30]

Builds the same model twice: as mcdrop exports it (layers before the first noise layer run once
per input) and with the input itself tiled T times (every layer runs T times, as a Python-side
tiling would). Prints a table of median milliseconds per call on onnxruntime's CPU provider.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_ms(session, x, passes, repeats):
    from mcdrop.runtime.format.mask_sets import control_feeds

    feeds = {"input": x, **control_feeds(passes)}
    session.run(["mean"], feeds)  # warm-up: first-call allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(["mean"], feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "mlp.keras"))
    parser.add_argument("--passes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    from mcdrop.export import build_graph, load_keras_model
    from mcdrop.export.heads import resolve_head
    from mcdrop.export.validate import ort_session

    model = load_keras_model(args.model)
    head = resolve_head(model)
    sessions = {}
    for name, repeat_all in (("mcdrop (deterministic part once)", False), ("every layer T times", True)):
        proto, *_ = build_graph(model, head, seed=0, repeat_all=repeat_all)
        sessions[name] = ort_session(proto.SerializeToString())

    rng = np.random.default_rng(0)
    shape = model.inputs[0].shape[1:]
    print(f"model {Path(args.model).name}, T={args.passes}, onnxruntime CPU, {os.cpu_count()} cores, {cpu_name()}")
    print(f"| batch | {' | '.join(sessions)} | saving |")
    print("|---|---|---|---|")
    for batch in (1, 32):
        x = rng.random((batch, *shape), dtype=np.float32)
        once, every = (median_ms(s, x, args.passes, args.repeats) for s in sessions.values())
        print(f"| {batch} | {once:.2f} ms | {every:.2f} ms | {every / once:.2f}x |")


if __name__ == "__main__":
    main()
