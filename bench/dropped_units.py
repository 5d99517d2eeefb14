"""Skipping dropped units (issue 26 item 3): FLOPs saved per model and the perf harness's shared-mask
lines, the standard file and its `convert --skip-dropped` rewrite side by side with batched Keras.

    python bench/dropped_units.py            # prints markdown tables
    python bench/dropped_units.py --quick    # shorter timing budget

FLOPs are 2 x multiply-adds of the Dense and Conv layers for the work mcdrop does (the layers before
the first dropout on B rows; bench/run.py's `work`); with skipping, the rewritten product costs x @ W
once per input plus, per pass, the dropped rows padded to the most a run's passes drop (k, counted
on the mask set of seed 0 and the run's passes, as the graph counts it). Times: medians of
interleaved rounds (bench/run.py's interleaved_ms) of Keras batched, mcdrop predict on the standard
file and on the rewritten one (shared masks, mask seed 0, the user path with its workers).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as harness  # noqa: E402  (bench/run.py: timing, work counts)
import subjects  # noqa: E402  (bench/subjects.py: the models)

# (model, T, batch, target: mcdrop shared / Keras batched at most; issue 26's acceptance). The Keras
# Applications model has no Keras column: training=True would also put its BatchNorm layers on batch
# statistics, which is not MC dropout.
CASES = (("mlp", 100, 32, 0.25), ("mlp", 100, 1, 0.3), ("cnn", 50, 32, 0.42), ("cnn", 50, 1, 0.5),
         (subjects.APPLICATION, 50, 32, None), (subjects.APPLICATION, 50, 1, None))
MASK_SEED = 0


def skip_flops(session, keras_model, passes: int, batch: int) -> float:
    """FLOPs of a call of the rewritten file, or None where it runs the original nodes."""
    from mcdrop.convert.dropped_units import MIN_BATCH
    from mcdrop.runtime.chunk_plan import pass_starts
    from mcdrop.runtime.format import mask_sets

    before, after, _ = harness.work(keras_model)
    info = session.info
    skipped = info.metadata.get("dropped_units")
    if skipped is None:
        return None
    total = 0.0
    plan = session.chunk_plan(batch, passes)
    for (rows, count), start in zip(plan, pass_starts(plan)):
        size = rows.stop - rows.start
        flops = size * before + count * size * after
        if size >= MIN_BATCH:
            uniform = mask_sets.draw(info.mask_layout, MASK_SEED, start, count)
            for name in skipped["layers"]:
                layer = next(i for i, layer in enumerate(info.stochastic_layers) if layer.name == name)
                entry, rate = info.mask_layout.entries[layer], info.stochastic_layers[layer].rate
                n = entry.size
                dense = next(lay for lay in keras_model.layers if getattr(lay, "kernel", None) is not None
                             and lay.kernel.shape[0] == n and lay.name != name)
                columns = int(dense.kernel.shape[1])
                most = int((uniform[:, entry.offset:entry.offset + n] < np.float32(rate)).sum(1).max())
                flops += 2 * size * n * columns - 2 * count * size * (n - most) * columns
        total += flops
    return total


def main():
    budget, minimum = harness.timing_args(__doc__.splitlines()[0])

    import tensorflow as tf

    from mcdrop.convert import skip_dropped_file
    from mcdrop.runtime import MCSession
    from mcdrop.runtime.errors import InputError

    print(harness.machine_line() + "\n")
    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="mcdrop-bench-"))
    keras_models, batched, standard, skipping, refused = {}, {}, {}, {}, {}
    for name in ("mlp", "cnn", subjects.APPLICATION):
        keras_models[name] = subjects.keras_model(name)
        batched[name] = harness.keras_batched(keras_models[name])
        source = subjects.onnx_file(name)
        standard[name] = MCSession(source, seed=MASK_SEED)
        try:
            skip_dropped_file(source, folder / f"{name}_skipping.onnx")
            skipping[name] = MCSession(folder / f"{name}_skipping.onnx", seed=MASK_SEED)
        except InputError as err:
            refused[name] = str(err).split(": ", 1)[1]
    rows = []
    for name, passes, batch, target in CASES:
        x = rng.random((batch, *keras_models[name].inputs[0].shape[1:]), dtype=np.float32)
        mc = batched[name]
        calls = {"standard": lambda: standard[name].predict(x, passes=passes)}
        if target is not None:
            calls["keras"] = lambda: [v.numpy() for v in mc(x, tf.constant(passes))]
        if name in skipping:
            calls["skipping"] = lambda: skipping[name].predict(x, passes=passes)
        times = harness.interleaved_ms(calls, budget, minimum)
        before, after, _ = harness.work(keras_models[name])
        flops = batch * before + passes * batch * after
        saved = skip_flops(skipping[name], keras_models[name], passes, batch) if name in skipping else None
        best = min(times["standard"], times.get("skipping", np.inf))
        keras_ms = times.get("keras")
        rows.append([name, passes, batch, f"{flops / 1e9:.3g}",
                     "-" if saved is None else f"{saved / 1e9:.3g} ({1 - saved / flops:.0%} saved)",
                     "-" if keras_ms is None else harness.ms(keras_ms), harness.ms(times["standard"]),
                     harness.ms(times["skipping"]) if "skipping" in times else "-",
                     "-" if keras_ms is None else f"{times['standard'] / keras_ms:.2f}",
                     f"{times['skipping'] / keras_ms:.2f}" if "skipping" in times and keras_ms else "-",
                     "-" if target is None else f"<= {target}",
                     "-" if target is None else ("yes" if best / keras_ms <= target else "no")])
    print("## Skipping dropped units: FLOPs and ms per call (median), shared masks\n")
    harness.table(["model", "T", "batch", "GFLOP standard", "GFLOP skipping", "Keras batched", "mcdrop standard",
                   "mcdrop skipping", "standard / Keras", "skipping / Keras", "target", "met"], rows)
    for name, why in refused.items():
        print(f"{name}: no rewrite ({why}).")


if __name__ == "__main__":
    main()
