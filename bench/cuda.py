"""mcdrop on onnxruntime's CUDA provider against its CPU provider, in one go: the device check that
BENCHMARKS.md's CUDA section comes from.

For each shipped file, on held-out digits, rotated digits, noise and blends of two digits
(bench/subjects.py), one session per provider (seed 0):
- the CUDA session really runs on CUDA (`provider`), and self_check passes there: the random
  nodes are live on the GPU's kernels (onnxruntime's CUDA RandomUniformLike is not the CPU's);
- shared masks (mask seed 0, T=50): the largest gap of the mean and variance to the CPU's, and
  whether every label is the same;
- passes="auto" (max 200): the same passes per input and labels as on the CPU;
- independent masks (T=200): two calls differ, and the mean stays within Monte Carlo noise of the
  CPU's (5 standard errors);
- the analytic mode (converted with --analytic on other held-out inputs of the four kinds): the
  gap to the CPU's, and the provider its own moment session got under device "cuda" and "auto";
- the median ms per predict at B=1, 32 and 256, T=50, on each provider;
- one predict under several run bounds, TF32 on and off, and cuDNN's two algorithm searches
  (the choices runtime/providers.py and runtime/chunk_plan.py make on CUDA).
Then `cli.py infer models/samples/digit_3.png --device cuda --json`, as a user runs it.

    python bench/cuda.py            # markdown tables; exit 1 if a check fails, 0 without a GPU
    python bench/cuda.py --on cpu   # the same checks with the CPU provider on both sides (a dry run)

Needs the runtime, onnx and scikit-learn (the digits), not TensorFlow.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import subjects  # noqa: E402  (bench/subjects.py: the held-out inputs)

from mcdrop.runtime import MCSession  # noqa: E402
from mcdrop.runtime.errors import DeviceError, McdropError  # noqa: E402
from mcdrop.runtime.providers import CPU, CUDA, CUDA_OPTIONS  # noqa: E402

FILES = ("mlp", "cnn", "cnn_int8", "cnn_calibrated")
PASSES, AUTO_MAX, INDEPENDENT_PASSES = 50, 200, 200
PER_KIND = 25  # inputs of each of the four kinds
# float32 sums in another order (cuDNN/cuBLAS against MLAS, TF32 off: runtime/providers.py) move
# probabilities by ~1e-6; the int8 file's activations may also round to another step.
GAP = 1e-5
INT8_GAP = 1e-3
BATCHES, REPEATS, BUDGET_S = (1, 32, 256), 20, 3.0
CHUNK_MB = (256, 1024, 4096, 16384)
SECTIONS = ("parity", "analytic", "time", "chunks", "tf32", "search", "cli")
failures = []
device, expected = "cuda", CUDA  # main() sets the dry run's


def check(ok: bool, what: str) -> str:
    if not ok:
        failures.append(what)
    return "yes" if ok else "**NO**"


def median_ms(run) -> float:
    """Median of REPEATS runs after a warm-up, or of those that fit in BUDGET_S (3 at least)."""
    run()
    times = []
    while len(times) < REPEATS and (len(times) < 3 or sum(times) < BUDGET_S):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times)


def inputs_for(session) -> np.ndarray:
    x = np.concatenate(list(subjects.kinds(PER_KIND, start=200).values()))
    return subjects.as_input(x, session.info.input_shape[1:])


def parity(name: str, path: Path, rows: list):
    gpu = MCSession(path, device=device, seed=0)
    cpu = MCSession(path, device="cpu", seed=0)
    x = inputs_for(cpu)
    try:
        gpu.self_check()  # the random nodes are live on this provider's kernels
        live = ""
    except McdropError as err:
        live = f" ({err})"
    shared = [s.predict(x, passes=PASSES, masks="shared", mask_seed=0) for s in (cpu, gpu)]
    auto = [s.predict(x, passes="auto", max_passes=AUTO_MAX, mask_seed=0) for s in (cpu, gpu)]
    first, second = (gpu.predict(x, passes=INDEPENDENT_PASSES, masks="independent") for _ in range(2))
    reference = cpu.predict(x, passes=INDEPENDENT_PASSES, masks="independent")
    noise = np.sqrt(first.variance / INDEPENDENT_PASSES + reference.variance / INDEPENDENT_PASSES) + 1e-6
    gaps = {key: float(np.max(np.abs(getattr(shared[1], key) - getattr(shared[0], key)))) for key in ("mean", "variance")}
    bound = INT8_GAP if "int8" in name else GAP
    rows.append([name, gpu.provider, check(not live, f"{name}: self_check{live}"),
                 f"{gaps['mean']:.1e} {check(gaps['mean'] <= bound, f'{name}: shared mean gap')}",
                 f"{gaps['variance']:.1e} {check(gaps['variance'] <= bound, f'{name}: shared variance gap')}",
                 check(np.array_equal(shared[0].measures["label"], shared[1].measures["label"]), f"{name}: shared labels"),
                 check(np.array_equal(auto[0].input_passes, auto[1].input_passes)
                       and np.array_equal(auto[0].measures["label"], auto[1].measures["label"]), f"{name}: auto passes"),
                 f"{float(np.mean(auto[1].input_passes)):.1f}",
                 check(not np.array_equal(first.mean, second.mean), f"{name}: independent calls repeat"),
                 f"{float(np.max(np.abs(first.mean - reference.mean) / noise)):.1f} "
                 + check(bool(np.all(np.abs(first.mean - reference.mean) <= 5 * noise)), f"{name}: independent mean")])


def analytic(name: str, path: Path, folder: Path, rows: list):
    import onnx

    from mcdrop.convert import convert_analytic
    from mcdrop.runtime.format.metadata_writer import metadata_of, write_metadata

    validation = folder / f"{name}_validation.npy"
    probe = MCSession(path, device="cpu")
    np.save(validation, subjects.as_input(np.concatenate(list(subjects.kinds(PER_KIND, start=0).values())),
                                          probe.info.input_shape[1:]))
    converted = folder / f"{name}_analytic.onnx"
    convert_analytic(path, converted, validation)
    # Run it whatever agreement with MC convert recorded (bench/analytic.py measures that): this
    # compares the providers.
    proto = onnx.load(converted)
    meta = metadata_of(proto)
    meta["analytic"]["agreement"].update(max_abs_mean_gap=0.0, spearman_mutual_information=1.0)
    write_metadata(proto, meta)
    onnx.save(proto, converted)
    sessions = {kind: MCSession(converted, device=kind, seed=0, verify=False) for kind in ("cpu", device, "auto")}
    sessions["cuda"] = sessions[device]
    x = inputs_for(probe)
    results = {kind: s.predict(x, method="analytic") for kind, s in sessions.items()}
    gap = float(np.max(np.abs(results["cuda"].mean - results["cpu"].mean)))
    moment_providers = {kind: sessions[kind]._analytic_session.get_providers()[0] for kind in ("cuda", "auto")}
    rows.append([name, f"{gap:.1e} {check(gap <= GAP, f'{name}: analytic gap')}",
                 f"{moment_providers['cuda']} {check(moment_providers['cuda'] == expected, f'{name}: analytic on CPU')}",
                 f"{moment_providers['auto']} {check(moment_providers['auto'] == expected, f'{name}: auto analytic on CPU')}",
                 f"{median_ms(lambda: sessions['cpu'].predict(x[:1], method='analytic')):.2f}",
                 f"{median_ms(lambda: sessions['cuda'].predict(x[:1], method='analytic')):.2f}"])


def timings(name: str, path: Path, rows: list):
    sessions = [MCSession(path, device=kind, seed=0) for kind in ("cpu", device)]
    x = inputs_for(sessions[0])
    for batch in BATCHES:
        rows_x = np.resize(x, (batch, *x.shape[1:]))
        cpu, gpu = (median_ms(lambda s=s: s.predict(rows_x, passes=PASSES, masks="shared", mask_seed=0))
                    for s in sessions)
        rows.append([name, PASSES, batch, f"{cpu:.2f}", f"{gpu:.2f}", f"{cpu / gpu:.1f}"])


def gpu_memory_mib() -> int:
    """MiB in use on the GPU (this process is its only user here); -1 where nvidia-smi does not answer."""
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=30).stdout.split()
        return int(found[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return -1


def chunk_sweep(rows):
    """One predict's time and GPU memory on CUDA under several run bounds (max_chunk_bytes): the
    default bound was measured for the CPU provider (DESIGN.md: Session internals)."""
    import gc

    for name in ("mlp", "cnn"):
        path = ROOT / "models" / f"{name}.onnx"
        x = inputs_for(MCSession(path, device="cpu"))
        for batch in (32, 256):
            rows_x = np.resize(x, (batch, *x.shape[1:]))
            for megabytes in CHUNK_MB if device == "cuda" else CHUNK_MB[:2]:  # a dry run stays in the CPU's RAM
                gc.collect()
                before = gpu_memory_mib()
                session = MCSession(path, device=device, seed=0, max_chunk_bytes=megabytes * 2**20)
                ms = median_ms(lambda: session.predict(rows_x, passes=PASSES, masks="shared", mask_seed=0))
                rows.append([name, PASSES, batch, megabytes, len(session.chunk_plan(batch, PASSES, "shared")),
                             f"{ms:.2f}", gpu_memory_mib() - before])
                session = None  # its GPU arena goes before the next is measured


def with_tf32(on: bool):
    """A session factory that sets the CUDA provider's use_tf32 (onnxruntime's default: on)."""
    import onnxruntime as ort

    def create(model_bytes, sess_options=None, providers=None):
        options = {**CUDA_OPTIONS, "use_tf32": str(int(on))}
        providers = [(CUDA, options) if CUDA in (p, p[0]) else p for p in providers]
        return ort.InferenceSession(model_bytes, sess_options=sess_options, providers=providers)
    return create


def tf32(rows):
    """The CUDA provider with TF32 on (onnxruntime's default) and off (mcdrop's): gaps to the CPU and
    time at B=32."""
    for name in FILES:
        path = ROOT / "models" / f"{name}.onnx"
        cpu = MCSession(path, device="cpu", seed=0)
        x = inputs_for(cpu)
        shared = cpu.predict(x, passes=PASSES, masks="shared", mask_seed=0)
        auto = cpu.predict(x, passes="auto", max_passes=AUTO_MAX, mask_seed=0)
        for on in (True, False):
            gpu = MCSession(path, device=device, seed=0, session_factory=with_tf32(on))
            got = gpu.predict(x, passes=PASSES, masks="shared", mask_seed=0)
            got_auto = gpu.predict(x, passes="auto", max_passes=AUTO_MAX, mask_seed=0)
            ms = [median_ms(lambda: gpu.predict(x[:batch], passes=PASSES, masks="shared", mask_seed=0))
                  for batch in (1, 32)]
            rows.append([name, "on" if on else "off", f"{np.max(np.abs(got.mean - shared.mean)):.1e}",
                         f"{np.max(np.abs(got.variance - shared.variance)):.1e}",
                         int(np.sum(got_auto.input_passes != auto.input_passes)), f"{ms[0]:.2f}", f"{ms[1]:.2f}"])


def conv_search(rows):
    """Each file under cuDNN's two algorithm searches: a predict, the deterministic pass, and the
    T=50 run alone (run_raw). The calibrated file's predict alternates the two shapes."""
    import onnxruntime as ort

    def create(search):
        def session(model_bytes, sess_options=None, providers=None):
            options = {**CUDA_OPTIONS, "cudnn_conv_algo_search": search}
            providers = [(CUDA, options) if CUDA in (p, p[0]) else p for p in providers]
            return ort.InferenceSession(model_bytes, sess_options=sess_options, providers=providers)
        return session

    x = subjects.as_input(subjects.kinds(8)["digits"], (28, 28, 1))
    for search in ("EXHAUSTIVE", "HEURISTIC"):
        for name in ("cnn", "cnn_calibrated"):
            session = MCSession(ROOT / "models" / f"{name}.onnx", device=device, seed=0, session_factory=create(search))
            rows.append([name, search, *(f"{median_ms(run):.2f}" for run in (
                lambda: session.predict(x[:1], passes=PASSES, masks="shared", mask_seed=0),
                lambda: session.predict(x[:1], dropout=False), lambda: session.run_raw(x[:1], passes=PASSES)))])


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


def cli_infer():
    """`cli.py infer` on a shipped sample with --device, as a user runs it."""
    cli = subprocess.run([sys.executable, str(ROOT / "cli.py"), "infer", str(ROOT / "models" / "samples" / "digit_3.png"),
                          "--model", str(ROOT / "models" / "cnn.onnx"), "--device", device, "--json"],
                         capture_output=True, text=True, timeout=300)
    print(f"## cli.py infer --device {device}: exit {cli.returncode}\n")
    try:
        document = json.loads(cli.stdout)
        first = document["predictions"][0]
        print(f"provider {document['provider']}, label {first['measures']['label']}, "
              f"confidence {first['measures']['confidence']:.3f}, uncertain {first['uncertain']}\n")
    except (ValueError, KeyError, IndexError):
        document = {}
        print(cli.stdout[-1000:] + cli.stderr[-1000:])
    check(cli.returncode == 0 and document.get("provider") == expected, "cli infer --device cuda")


def main():
    import onnxruntime as ort

    global device, expected
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--on", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run without a GPU")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {','.join(SECTIONS)}")
    args = parser.parse_args()
    sections = args.sections.split(",")
    if args.on == "cpu":
        device, expected = "cpu", CPU
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    try:
        gpu_name = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        gpu_name = "no nvidia-smi"
    print(f"GPU: {gpu_name or 'none'}\n")
    try:
        MCSession(ROOT / "models" / "mlp.onnx", device=device)
    except DeviceError as err:
        print(f"skipped: {err}")
        return 0
    if "parity" in sections:
        rows = []
        for name in FILES:
            parity(name, ROOT / "models" / f"{name}.onnx", rows)
        print(f"## CUDA against CPU, {4 * PER_KIND} inputs of four kinds, seed 0\n")
        table(["file", "provider", "self_check", f"shared T={PASSES}: max mean gap", "max variance gap",
               "same labels", f"auto (max {AUTO_MAX}): same passes and labels", "mean passes",
               "independent: calls differ", f"independent T={INDEPENDENT_PASSES}: max gap / its standard error"], rows)
    if "analytic" in sections:
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            for name in ("mlp", "cnn"):
                analytic(name, ROOT / "models" / f"{name}.onnx", Path(folder), rows)
        print("## Analytic mode on CUDA\n")
        table(["file", "max mean gap to CPU", "moment session, device cuda", "moment session, device auto",
               "CPU ms (B=1)", "CUDA ms (B=1)"], rows)
    if "time" in sections:
        rows = []
        for name in ("mlp", "cnn"):
            timings(name, ROOT / "models" / f"{name}.onnx", rows)
        print(f"## Time per predict (shared masks, median of up to {REPEATS} after a warm-up)\n")
        table(["model", "T", "batch", "CPU ms", "CUDA ms", "CPU / CUDA"], rows)
    if "chunks" in sections:
        rows = []
        chunk_sweep(rows)
        print("## CUDA: one predict under several run bounds (max_chunk_bytes)\n")
        table(["model", "T", "batch", "max_chunk_mb", "runs", "CUDA ms", "GPU MiB held"], rows)
    if "tf32" in sections:
        rows = []
        tf32(rows)
        print(f"## CUDA with TF32 on and off, against the CPU ({4 * PER_KIND} inputs, T={PASSES})\n")
        table(["file", "TF32", "max mean gap", "max variance gap", f"inputs whose auto passes differ (max {AUTO_MAX})",
               "ms at B=1", "ms at B=32"], rows)
    if "search" in sections:
        rows = []
        conv_search(rows)
        print(f"## cuDNN's convolution algorithm search (batch 1, T={PASSES})\n")
        table(["file", "cudnn_conv_algo_search", "predict ms", "dropout=False ms", "run_raw ms"], rows)
    if "cli" in sections:
        cli_infer()
    print("failed: " + ("; ".join(failures) if failures else "none"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
