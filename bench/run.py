"""mcdrop against the usual ways of running Monte Carlo dropout, in one process run.

    python bench/run.py            # full run: prints markdown tables, writes docs/bench_scaling.png
    python bench/run.py --quick    # fewer cases and repeats; writes under bench/out/ only

For the shipped MLP and CNN, on the same inputs (uniform [0, 1) images, fixed seed), it times per
call (medians after one warm-up, about 1.5 s per cell, at least 3 repeats; methods 2-4 timed in
interleaved rounds so that a slow spell of a shared machine weighs on each alike):
  1. Keras loop: T eager calls model(x, training=True), stacked, mean and variance;
  2. Keras batched: one tf.function tiling the batch T times, one call, mean and variance;
  3. the ordinary tf2onnx export (dropout stripped) run by onnxruntime on T*B rows tiled in numpy:
     the cost of the network alone at T*B rows, no randomness;
  4. mcdrop: MCSession.predict (the user path: chunking, measures, one single-threaded session
     per core) and one run of the file in a default onnxruntime session (what another binding
     gets without mcdrop's runtime).
Then the matrix-multiply ceiling and the cost of a random mask in onnxruntime measured in the same
run, peak memory of mcdrop's chunked runs in child processes, whole-process cold starts, and the
scaling of mcdrop with T and batch (plotted). The report is printed and saved to bench/out/.
"""

import argparse
import datetime
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

MODELS = ("mlp", "cnn")
SAMPLE = "models/samples/digit_3.png"
TF_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
MIB = 2**20

FULL = dict(passes=(10, 50, 100), batches=(1, 32), budget_s=1.5, min_repeats=3,
            sweep_passes=(10, 50, 100, 200, 500), sweep_batches=(1, 8, 32, 128),
            memory_cases=((1000, 256), (100, 32)), cold_repeats=5, plot=ROOT / "docs" / "bench_scaling.png",
            report=OUT / "report.md")
QUICK = dict(passes=(10, 50), batches=(1, 32), budget_s=0.3, min_repeats=3,
             sweep_passes=(10, 50, 100), sweep_batches=(1, 8, 32),
             memory_cases=((100, 32),), cold_repeats=2, plot=OUT / "bench_scaling_quick.png",
             report=OUT / "report-quick.md")


# ---------------------------------------------------------------------------------------------
# Timing and child processes


def median_ms(call, budget_s, min_repeats):
    """Median wall time of call() in ms: one warm-up call, then enough repeats for ~budget_s."""
    start = time.perf_counter()
    call()  # warm-up: traces, first-call allocations, arena growth
    first = time.perf_counter() - start
    repeats = max(min_repeats, int(budget_s / max(first, 1e-6)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def interleaved_ms(calls, budget_s, min_repeats, block=3, short_s=0.2, max_rounds=25):
    """Median wall time in ms of each named call over rounds that take every call in turn, so that
    a slow spell of the machine (a shared VM) weighs on every method alike.

    Within a round each call runs as a short block: for calls under short_s, one untimed call and
    then `block` timed ones, so that the timed calls find warm caches and no thread pool of the
    previous method still spinning (onnxruntime's and TensorFlow's idle threads spin for a while;
    a 0.1 s pause instead left small calls cold, the shipped MLP at T=10, batch 1 twice as slow);
    longer calls are timed once per round. One warm-up call each first; about budget_s of timed
    calls per method, at least min_repeats rounds."""
    first = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        first[name] = time.perf_counter() - start
    timed = {name: block if first[name] < short_s else 1 for name in calls}
    per_round = max(first[name] * timed[name] for name in calls)
    rounds = min(max_rounds, max(min_repeats, int(budget_s / max(per_round, 1e-6))))
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            if timed[name] > 1:
                call()
            for _ in range(timed[name]):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def run_child(args, env=None):
    """Run a whole process; (wall s, peak RSS MiB of that process, stdout).

    The peak is the child's VmHWM, polled every 2 ms until it exits. getrusage/wait4 cannot be
    used here: Linux carries ru_maxrss across fork and exec, so every child would report this
    process's own multi-GiB peak.
    """
    with tempfile.TemporaryFile() as stdout:
        start = time.perf_counter()
        child = subprocess.Popen(args, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.DEVNULL)
        peak_kib = 0
        while child.poll() is None:
            try:
                with open(f"/proc/{child.pid}/status") as status:
                    peak_kib = max([peak_kib] + [int(line.split()[1]) for line in status if line.startswith("VmHWM")])
            except (FileNotFoundError, ProcessLookupError):
                pass  # exited between poll() and open()
            time.sleep(0.002)
        wall = time.perf_counter() - start
        if child.returncode:
            raise RuntimeError(f"{' '.join(map(str, args))} exited with {child.returncode}")
        stdout.seek(0)
        return wall, peak_kib / 1024, stdout.read().decode()


def memory_child(passes, batch):
    """Child process body (--memory-child): one chunked mcdrop predict on the CNN; JSON on stdout."""
    import psutil

    from mcdrop.runtime import MCSession

    session = MCSession(ROOT / "models" / "cnn.onnx", seed=0)
    x = np.random.default_rng(0).random((batch, *session.info.input_shape[1:]), dtype=np.float32)
    loaded = psutil.Process().memory_info().rss
    # The session's first run sets up thread pools and kernel state once, whatever its size; the
    # bound is on what a predict adds to a session that has run.
    session.predict(x[:1], passes=1)
    before, runs = psutil.Process().memory_info().rss, session.run_count
    start = time.perf_counter()
    session.predict(x, passes=passes)
    print(json.dumps({"wall_s": time.perf_counter() - start, "runs": session.run_count - runs,
                      "first_run_mib": (before - loaded) / MIB,
                      "rss_before_mib": before / MIB, "max_chunk_mib": session.max_chunk_bytes / MIB,
                      "floats_per_sample": session.info.activation_floats_per_sample}))


# ---------------------------------------------------------------------------------------------
# The four ways of running T passes


def keras_loop(model, passes):
    import tensorflow as tf

    def call(x):
        samples = tf.stack([model(x, training=True) for _ in range(passes)])
        return tf.reduce_mean(samples, 0).numpy(), tf.math.reduce_variance(samples, 0).numpy()

    return call


def keras_batched(model):
    """One tf.function for every T and batch (both dynamic), so it is traced once."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(model.inputs[0].shape, tf.float32),
                                  tf.TensorSpec([], tf.int32)])
    def mc(x, passes):
        multiples = tf.concat([[passes], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
        y = model(tf.tile(x, multiples), training=True)  # pass-major: row t*B + b
        y = tf.reshape(y, tf.concat([[passes, tf.shape(x)[0]], tf.shape(y)[1:]], 0))
        return tf.reduce_mean(y, 0), tf.math.reduce_variance(y, 0)

    return mc


def plain_onnx_session(model):
    """The ordinary export: tf2onnx of the inference call (dropout stripped), dynamic batch."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec(model.inputs[0].shape, tf.float32, name="x")
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=17)
    return ort.InferenceSession(proto.SerializeToString(), quiet_options(), providers=["CPUExecutionProvider"])


def quiet_options():
    """Default onnxruntime settings, except that idle threads do not spin: a spinning pool took a
    core from whichever method the interleaved rounds timed next (Keras batched on the MLP, T=100,
    batch 32: 67 ms after these sessions, 48 ms with spinning off; their own times did not move)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the "initializer appears in graph inputs" notice, on purpose
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def plain_onnx_tiled(session, passes):
    name = session.get_inputs()[0].name

    def call(x):
        y = session.run(None, {name: np.tile(x, (passes,) + (1,) * (x.ndim - 1))})[0]
        y = y.reshape(passes, len(x), *y.shape[1:])
        return y.mean(0), y.var(0)

    return call


def default_session(path):
    """The file in an onnxruntime session with default settings (idle threads aside), as any
    binding would load it."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), quiet_options(), providers=["CPUExecutionProvider"])


def mcdrop_graph(session, passes):
    """The graph alone: one onnxruntime run, no chunking, no measures."""
    from mcdrop.runtime.format.mask_sets import control_feeds

    def call(x):
        return session.run(["mean", "variance"], {"input": x, **control_feeds(passes)})

    return call


# ---------------------------------------------------------------------------------------------
# Work counts and onnxruntime's own ceilings


def work(model):
    """Per input row: FLOPs before the first Dropout, FLOPs after it, dropout-masked elements.

    FLOPs are 2 * multiply-adds of Dense, Conv and DepthwiseConv layers (kernel size times output
    positions). The models here are Sequential, or a nested base followed by Dropout and Dense
    (bench/subjects.py), so the order of the flattened layers is graph order around the dropouts:
    mcdrop runs the layers before the first Dropout on B rows and the rest on T*B rows
    (docs/DESIGN.md). Their Dropout layers have no noise_shape, so each masks its whole input.
    """
    import keras

    before = after = masked = 0
    seen_dropout = False
    kinds = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
             keras.layers.DepthwiseConv2D)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Dropout):
            seen_dropout = True
            masked += int(np.prod(layer.output.shape[1:]))
        elif isinstance(layer, kinds):
            flops = 2 * int(np.prod(layer.kernel.shape)) * int(np.prod(layer.output.shape[1:-1]))
            if seen_dropout:
                after += flops
            else:
                before += flops
    return before, after, masked


def one_node_session(nodes, inputs, output, threads=0):
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "bench", inputs, [output])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def matmul_gflops(size, budget_s, min_repeats):
    from onnx import TensorProto, helper

    session = one_node_session(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"],
        helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size]))
    rng = np.random.default_rng(0)
    feeds = {n: rng.random((size, size), dtype=np.float32) for n in "ab"}
    ms = median_ms(lambda: session.run(None, feeds), budget_s, min_repeats)
    return 2 * size**3 / (ms * 1e-3) / 1e9


def random_mask_ns(count, budget_s, min_repeats, sessions=1):
    """ns per element of a dropout mask as mcdrop's graph draws it (ConstantOfShape(bool) ->
    RandomUniformLike -> GreaterOrEqual -> Cast), `count` elements per call. sessions > 1: that
    many single-threaded sessions with their own seeds draw count / sessions each, side by side,
    as MCSession's workers do."""
    from concurrent.futures import ThreadPoolExecutor

    from onnx import TensorProto, helper

    from mcdrop.runtime.format.seeds import fresh_seeds

    def session(seed, threads):
        return one_node_session(
            [helper.make_node("ConstantOfShape", ["shape"], ["fill"],
                              value=helper.make_tensor("v", TensorProto.BOOL, [1], [True])),
             helper.make_node("RandomUniformLike", ["fill"], ["u"], dtype=TensorProto.FLOAT, seed=seed),
             helper.make_node("GreaterOrEqual", ["u", "rate"], ["kept"]),
             helper.make_node("Cast", ["kept"], ["mask"], to=TensorProto.FLOAT)],
            [helper.make_tensor_value_info("shape", TensorProto.INT64, [1]),
             helper.make_tensor_value_info("rate", TensorProto.FLOAT, [])],
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None]), threads)

    feeds = {"shape": np.array([count // sessions], np.int64), "rate": np.array(0.2, np.float32)}
    if sessions == 1:
        single = session(fresh_seeds(1, 0)[0], 0)
        return median_ms(lambda: single.run(None, feeds), budget_s, min_repeats) * 1e6 / count
    workers = [session(seed, 1) for seed in fresh_seeds(sessions, 0)]
    with ThreadPoolExecutor(sessions) as pool:
        return median_ms(lambda: list(pool.map(lambda w: w.run(None, feeds), workers)),
                         budget_s, min_repeats) * 1e6 / count


# ---------------------------------------------------------------------------------------------
# Report


def timing_args(description):
    """(budget_s, min_repeats) per cell from a script's command line: --quick shortens them. For the
    scripts that time cells as this harness does (mask_sets.py, dropped_units.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="shorter timing budget")
    return (0.3, 3) if parser.parse_args().quick else (1.5, 5)


def machine_line():
    import onnxruntime
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return (f"Machine: {cpu}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__} "
            f"(CPUExecutionProvider, ORT_ENABLE_ALL, default threads), tensorflow {tf.__version__}; "
            f"run on {datetime.date.today().isoformat()}.")


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    print("\n".join(lines) + "\n")


def ms(value):
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


def plot(path, sweep, cfg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_t, by_b) = plt.subplots(1, 2, figsize=(11, 4.4))
    series = [(by_t, f"{name.upper()}, batch {b}", cfg["sweep_passes"], [sweep[name, t, b] for t in cfg["sweep_passes"]])
              for name in MODELS for b in cfg["batches"]]
    series += [(by_b, f"{name.upper()}, T=50", cfg["sweep_batches"], [sweep[name, 50, b] for b in cfg["sweep_batches"]])
               for name in MODELS]
    for axis, label, xs, ys in series:
        line, = axis.plot(xs, ys, "o-", label=label)
        # Proportional guide through the largest point: linear growth runs parallel to it.
        axis.plot(xs, [ys[-1] * x / xs[-1] for x in xs], ":", color=line.get_color(), alpha=0.5)
    for axis, xlabel, title in ((by_t, "Monte Carlo passes T", "mcdrop: time against passes"),
                                (by_b, "batch", "mcdrop: time against batch (T=50)")):
        axis.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="ms per predict call", title=title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.text(0.5, 0.01, "dotted: proportional to T (left) or batch (right), through the largest point; "
             "MCSession.predict, onnxruntime CPU", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(cfg):
    import keras
    import tensorflow as tf

    from mcdrop.runtime import MCSession

    print(machine_line() + "\n")
    budget, minimum = cfg["budget_s"], cfg["min_repeats"]
    rng = np.random.default_rng(0)
    keras_models = {name: keras.models.load_model(ROOT / "models" / f"{name}.keras", compile=False) for name in MODELS}
    sessions = {name: MCSession(ROOT / "models" / f"{name}.onnx", seed=0) for name in MODELS}
    graphs = {name: default_session(ROOT / "models" / f"{name}.onnx") for name in MODELS}
    counts = {name: work(model) for name, model in keras_models.items()}
    inputs = {(name, b): rng.random((b, *model.inputs[0].shape[1:]), dtype=np.float32)
              for name, model in keras_models.items() for b in sorted({*cfg["batches"], *cfg["sweep_batches"]})}

    def predict_ms(name, passes, batch):
        session, x = sessions[name], inputs[name, batch]
        return median_ms(lambda: session.predict(x, passes=passes), budget, minimum)

    # 1-4: the four ways, every case.
    results = {}
    for name, model in keras_models.items():
        batched, plain = keras_batched(model), plain_onnx_session(model)
        for passes in cfg["passes"]:
            for batch in cfg["batches"]:
                x = inputs[name, batch]
                session = sessions[name]
                fast = interleaved_ms({
                    "batched": lambda: [v.numpy() for v in batched(x, tf.constant(passes))],
                    "plain": lambda: plain_onnx_tiled(plain, passes)(x),
                    "predict": lambda: session.predict(x, passes=passes),
                    "graph": lambda: mcdrop_graph(graphs[name], passes)(x),
                }, budget, minimum)
                # The loop takes seconds per call: timed on its own, fewer repeats.
                results[name, passes, batch] = {"loop": median_ms(lambda: keras_loop(model, passes)(x), budget, minimum),
                                                **fast}
    ceiling = matmul_gflops(2048, budget, minimum)
    cores = sessions["cnn"].threads
    random_ns = random_mask_ns(10_000_000, budget, minimum)
    random_workers_ns = random_mask_ns(10_000_000, budget, minimum, sessions=cores)

    print("## Milliseconds per call (median)\n")
    print("Same inputs for every method; `tf2onnx + ORT, tiled` has no dropout (the network alone at "
          "T*B rows). mcdrop predict is MCSession.predict (chunking at 256 MiB, measures, the runs shared "
          f"by {cores} single-threaded sessions); mcdrop graph is one onnxruntime run of the file in a "
          "default session (all threads).\n")
    table(["model", "T", "batch", "Keras loop", "Keras batched", "tf2onnx + ORT, tiled", "mcdrop predict",
           "mcdrop graph"],
          [[name.upper(), t, b, *(ms(r[k]) for k in ("loop", "batched", "plain", "predict", "graph"))]
           for (name, t, b), r in results.items()])

    print("## Ratios and throughput\n")
    print(f"Effective GFLOP/s count 2 x multiply-adds of the Dense/Conv layers for the work each method "
          f"does: Keras batched runs every layer on T*B rows, mcdrop the layers before the first dropout "
          f"on B rows. Ceiling: onnxruntime MatMul 2048x2048 float32 in this run, "
          f"**{ceiling:.0f} GFLOP/s**.\n")
    rows = []
    for (name, t, b), r in results.items():
        before, after, _ = counts[name]
        keras_gflop, mcdrop_gflop = t * b * (before + after) / 1e9, (b * before + t * b * after) / 1e9
        rows.append([name.upper(), t, b, f"{r['predict'] / r['batched']:.2f}", f"{r['loop'] / r['predict']:.1f}",
                     f"{mcdrop_gflop / (r['graph'] * 1e-3):.1f}", f"{keras_gflop / (r['batched'] * 1e-3):.1f}",
                     f"{mcdrop_gflop / (r['graph'] * 1e-3) / ceiling:.0%}"])
    table(["model", "T", "batch", "mcdrop predict / Keras batched", "Keras loop / mcdrop predict",
           "mcdrop graph GFLOP/s", "Keras batched GFLOP/s", "mcdrop graph / MatMul ceiling"], rows)

    print("## Random-number cost\n")
    print(f"A dropout mask as mcdrop's graph draws it (ConstantOfShape(bool) -> RandomUniformLike -> "
          f"GreaterOrEqual -> Cast, 10M elements per call): **{random_ns:.2f} ns per masked element** in one "
          f"session, **{random_workers_ns:.2f} ns** drawn by {cores} single-threaded sessions side by side "
          f"(MCSession's workers). Masked elements per input per pass: "
          + ", ".join(f"{name.upper()} {counts[name][2]:,}" for name in MODELS) + ".\n")
    table(["model", "T", "batch", "masks drawn per call", "drawing in one session (est.)", "mcdrop graph", "share"],
          [[name.upper(), t, b, f"{counts[name][2] * t * b:,}", f"{counts[name][2] * t * b * random_ns * 1e-6:.3g} ms",
            f"{ms(r['graph'])} ms", f"{counts[name][2] * t * b * random_ns * 1e-6 / r['graph']:.0%}"]
           for (name, t, b), r in results.items()])
    cuda_section(inputs)

    int8_section(keras_batched(keras_models["cnn"]), inputs, cfg)

    # Scaling of the user path; cells already timed above are reused.
    sweep = {}
    for name in MODELS:
        cells = {*((t, b) for t in cfg["sweep_passes"] for b in cfg["batches"]),
                 *((50, b) for b in cfg["sweep_batches"])}
        for t, b in sorted(cells):
            known = results.get((name, t, b))
            sweep[name, t, b] = known["predict"] if known else predict_ms(name, t, b)
    print(f"## Scaling of mcdrop predict (ms per call; plotted in {cfg['plot'].relative_to(ROOT)})\n")
    table(["model", "batch", *(f"T={t}" for t in cfg["sweep_passes"]), "ms per pass x input at the largest T"],
          [[name.upper(), b, *(ms(sweep[name, t, b]) for t in cfg["sweep_passes"]),
            f"{sweep[name, cfg['sweep_passes'][-1], b] / (cfg['sweep_passes'][-1] * b):.3g}"]
           for name in MODELS for b in cfg["batches"]])
    table(["model", "T", *(f"batch {b}" for b in cfg["sweep_batches"])],
          [[name.upper(), 50, *(ms(sweep[name, 50, b]) for b in cfg["sweep_batches"])] for name in MODELS])
    plot(cfg["plot"], sweep, cfg)

    print("## Peak memory of chunked mcdrop (CNN, child process, max_chunk_bytes default)\n")
    rows = []
    for passes, batch in cfg["memory_cases"]:
        wall, peak, stdout = run_child([sys.executable, __file__, "--memory-child", str(passes), str(batch)])
        child = json.loads(stdout)
        unchunked = child["floats_per_sample"] * 4 * passes * batch / MIB
        rows.append([f"T={passes}, batch {batch}", child["runs"], f"{child['wall_s']:.1f} s", f"{wall:.1f} s",
                     f"{child['first_run_mib']:.0f}", f"{child['rss_before_mib']:.0f}", f"{peak:.0f}",
                     f"{peak - child['rss_before_mib']:.0f}", f"{child['max_chunk_mib']:.0f}", f"{unchunked:,.0f}"])
    table(["case", "onnxruntime runs", "predict wall", "process wall", "first run of the session (MiB)",
           "RSS before predict (MiB)", "peak RSS (MiB)", "peak - before (MiB)", "bound: max_chunk_bytes (MiB)",
           "unchunked activations (MiB)"], rows)

    print(f"## Cold start: whole processes, median of {cfg['cold_repeats']} (run one after another)\n")
    commands = {
        "mcdrop: `python cli.py infer " + SAMPLE + "`": [sys.executable, "cli.py", "infer", SAMPLE],
        "Keras: `python bench/cold_start.py " + SAMPLE + "` (load, Pillow, 50 passes batched)":
            [sys.executable, "bench/cold_start.py", SAMPLE],
        'TensorFlow import alone: `python -c "import tensorflow"`': [sys.executable, "-c", "import tensorflow"],
    }
    cold = {}
    for label, args in commands.items():
        runs = [run_child(args, TF_ENV) for _ in range(cfg["cold_repeats"])]
        cold[label] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                       _label(runs[0][2]))
    infer_s, tf_s = cold[next(iter(commands))][0], cold[list(commands)[-1]][0]
    table(["process", "wall (s)", "peak RSS (MB)", "printed label"],
          [[label, f"{wall:.2f}", f"{rss * MIB / 1e6:.0f}", printed] for label, (wall, rss, printed) in cold.items()])
    print(f"mcdrop infer / import tensorflow: **{infer_s / tf_s:.2f}x** the wall time.\n")


def cuda_section(inputs, passes=100, batch=256):
    """mcdrop on the CUDA provider beside the CPU, T=100, batch 256, where a GPU answers."""
    from mcdrop.runtime import MCSession
    from mcdrop.runtime.errors import DeviceError

    print(f"## CUDA provider (T={passes}, batch {batch})\n")
    rows = []
    for name in MODELS:
        path = ROOT / "models" / f"{name}.onnx"
        try:
            gpu = MCSession(path, device="cuda", seed=0)
        except DeviceError as err:
            print(f"Not measured: {err}\n")
            return
        x = np.repeat(inputs[name, 32], batch // 32, axis=0)
        cpu = MCSession(path, device="cpu", seed=0)
        gpu_ms = median_ms(lambda: gpu.predict(x, passes=passes), 1.5, 3)
        cpu_ms = median_ms(lambda: cpu.predict(x, passes=passes), 1.5, 3)
        rows.append([name.upper(), passes, batch, ms(cpu_ms), ms(gpu_ms), f"{cpu_ms / gpu_ms:.1f}"])
    table(["model", "T", "batch", "mcdrop CPU ms", "mcdrop CUDA ms", "CPU / CUDA"], rows)


def int8_section(batched, inputs, cfg):
    """The shipped CNN's int8 file (export --quantize int8) beside the float one and Keras batched
    (timed in interleaved rounds): speed, held-out digits accuracy, and how far its MC mean and
    variance move on the same digits."""
    import tensorflow as tf

    sys.path.insert(0, str(ROOT / "models"))
    import build_models

    from mcdrop.runtime import MCSession

    float_session = MCSession(ROOT / "models" / "cnn.onnx", seed=0)
    int8_session = MCSession(ROOT / "models" / "cnn_int8.onnx", seed=0)
    rows = []
    for passes in cfg["passes"]:
        for batch in cfg["batches"]:
            x = inputs["cnn", batch]
            r = interleaved_ms({
                "batched": lambda: [v.numpy() for v in batched(x, tf.constant(passes))],
                "float": lambda: float_session.predict(x, passes=passes),
                "int8": lambda: int8_session.predict(x, passes=passes),
            }, cfg["budget_s"], cfg["min_repeats"])
            rows.append(["CNN", passes, batch, ms(r["batched"]), ms(r["float"]), ms(r["int8"]),
                         f"{r['int8'] / r['float']:.2f}", f"{r['int8'] / r['batched']:.2f}"])
    print("## int8 (models/cnn_int8.onnx)\n")
    table(["model", "T", "batch", "Keras batched ms", "mcdrop float ms", "mcdrop int8 ms", "int8 / float",
           "int8 / Keras batched"], rows)

    images, labels = build_models.digits_28x28()
    _, test_img, _, test_y = build_models.split(images, labels)
    x = build_models.to_input(test_img, flat=False)
    passes = 200
    preds = {name: s.predict(x, passes=passes) for name, s in (("float", float_session), ("int8", int8_session))}
    accuracy = {name: float((p.mean.argmax(-1) == test_y).mean()) for name, p in preds.items()}
    mean_drift = np.abs(preds["int8"].mean - preds["float"].mean)
    var_drift = np.abs(preds["int8"].variance - preds["float"].variance)
    print(f"Held-out digits ({len(test_y)} images, MC mean of T={passes}): float {accuracy['float']:.2%}, "
          f"int8 {accuracy['int8']:.2%} ({(accuracy['int8'] - accuracy['float']) * 100:+.2f} points). "
          f"int8 - float on the same images: MC mean max {mean_drift.max():.3f}, mean {mean_drift.mean():.4f}; "
          f"MC variance max {var_drift.max():.3f}, mean {var_drift.mean():.4f} (each side's sampling noise "
          f"included).\n")


def _label(stdout):
    """The label a cold-start child printed: the cli table's row for the sample, or a bare number."""
    for line in stdout.splitlines():
        if line.startswith(SAMPLE):
            return line.split()[1]
    return stdout.strip() or "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and repeats; output under bench/out/")
    parser.add_argument("--memory-child", nargs=2, type=int, metavar=("T", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cfg = QUICK if args.quick else FULL
    start = time.perf_counter()
    buffer = io.StringIO()

    class Tee(io.TextIOBase):  # print live and keep a copy for the saved report
        def write(self, text):
            sys.__stdout__.write(text)
            sys.__stdout__.flush()
            return buffer.write(text)

    with redirect_stdout(Tee()):
        report(cfg)
        print(f"Total wall time of this run: {time.perf_counter() - start:.0f} s "
              f"(peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB).")
    OUT.mkdir(parents=True, exist_ok=True)
    cfg["report"].write_text(buffer.getvalue())


if __name__ == "__main__":
    main()
