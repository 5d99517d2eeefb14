"""Throughput of MCSession.predict as the batch grows: does a big batch keep its speed?

    python bench/big_batch.py [--model models/cnn.onnx] [--passes 50] [--batches 32,512,2000]

Prints, per batch: the runs the plan makes, how many times per input the layers before the first
stochastic layer run (once per run that holds the input), and sample-passes per second (batch x T
over the median of 3 timed predicts after one warm-up), with the default memory bound and every
core. docs/DESIGN.md ("Bounded work") says why the plan keeps an input's passes together.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "models", "cnn.onnx"))
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--batches", default="32,512,2000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np

    from mcdrop.runtime.session import MCSession

    session = MCSession(args.model, seed=0)
    shape = session.info.input_shape[1:]
    print(f"model {args.model}, T={args.passes}, threads {session.threads}, "
          f"bound {session.max_chunk_bytes / 2**20:.0f} MiB")
    print(f"{'batch':>7} {'runs':>7} {'once-part runs per input':>25} {'sample-passes/s':>16}")
    for batch in map(int, args.batches.split(",")):
        x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
        session.predict(x, passes=args.passes, keep_samples=False)  # warm-up; workers start here
        plan = session.chunk_plan(batch, args.passes)
        once_runs = len(plan) / len({(rows.start, rows.stop) for rows, _ in plan})
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            session.predict(x, passes=args.passes, keep_samples=False)
            times.append(time.perf_counter() - started)
        rate = batch * args.passes / statistics.median(times)
        print(f"{batch:>7} {len(plan):>7} {once_runs:>25.1f} {rate:>16,.0f}")


if __name__ == "__main__":
    main()
