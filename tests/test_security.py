"""Hostile and odd inputs, as an attacker or an unlucky user would bring them (README: Trust model).

Every case runs the real CLI in a child process and checks what a user sees: one `error:` line,
a non-zero exit, no traceback, no file touched outside the requested path, and the child's peak
memory under PEAK_BOUND_MIB. Keras model files that would run code on export are in
tests/test_untrusted_keras.py; the bounded fuzz of the shipped CNN is tests/test_fuzz.py.
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import ROOT
from mcdrop.runtime.errors import McdropError, ModelFileError, ModelRunError
from mcdrop.runtime.safe_files import csv_safe_cell
from mcdrop.runtime.format.integrity import seal
from mcdrop.runtime.format.onnx_file import encode_entry
from mcdrop.runtime.session import MCSession
from test_inputs import write_bilevel_png
from toy_model import build_toy_model

X = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
SAMPLES = ROOT / "models" / "samples"
# `cli.py infer` on the shipped CNN peaks at about 150 MiB (README); a bomb that got through
# would take gigabytes.
PEAK_BOUND_MIB = 512
# Runs the CLI and writes the process's peak resident memory in KiB to $PEAK_FILE: VmHWM, the
# high-water mark of this process's own memory map (ru_maxrss would carry over the parent's peak
# across fork and exec: a pytest worker that loaded TensorFlow reads 1 GB). 0 where /proc is absent.
MEASURED = """
import os, sys
sys.argv = ["cli.py", *sys.argv[1:]]
from mcdrop import cli
try:
    cli.main()
finally:
    peak = 0
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_FILE"], "w") as f:
        f.write(str(peak))
"""


def run_cli(*args, cwd=ROOT, timeout=120):
    """(completed process, peak MiB) of `python cli.py ARGS` in a child process."""
    peak_file = f"/tmp/mcdrop-peak-{os.getpid()}-{time.monotonic_ns()}"
    done = subprocess.run([sys.executable, "-c", MEASURED, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PEAK_FILE": peak_file,
                                                           "PYTHONPATH": str(ROOT)})
    with open(peak_file) as f:
        peak = int(f.read()) / 1024
    os.unlink(peak_file)
    return done, peak


def assert_refused(args, message, cwd=ROOT, timeout=120):
    done, peak = run_cli(*args, cwd=cwd, timeout=timeout)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0], lines[0]
    assert peak < PEAK_BOUND_MIB, f"peak {peak:.0f} MiB"
    return lines[0]


@pytest.fixture(scope="module")
def npy(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "x.npy"
    np.save(path, X)
    return path


def toy_proto(tmp_path, **kwargs):
    return onnx.load(build_toy_model(tmp_path / "base.onnx", sealed=False, **kwargs))


def write_model(proto, path, sealed=True):
    data = proto.SerializeToString()
    path.write_bytes(seal(data) if sealed else data)
    return path


def with_metadata(tmp_path, name, edit=None, raw=None, **kwargs):
    """The toy model with its mcdrop JSON edited (edit(meta)) or replaced by raw bytes, sealed
    again so that the checks behind the checksum are what refuses it."""
    proto = toy_proto(tmp_path, **kwargs)
    entry = next(p for p in proto.metadata_props if p.key == "mcdrop")
    if raw is not None:  # any bytes, UTF-8 or not: written as a protobuf field of our own
        proto.metadata_props.remove(entry)
        (tmp_path / name).write_bytes(seal(proto.SerializeToString() + encode_entry("mcdrop", raw)))
        return tmp_path / name
    meta = json.loads(entry.value)
    edit(meta)
    entry.value = json.dumps(meta)
    return write_model(proto, tmp_path / name)


# 3. Outputs: never through a link, temporaries cleaned up ------------------------------------

def test_out_through_a_symlink_is_refused_and_its_target_untouched(tmp_path, npy, toy_model_path):
    victim = tmp_path / "victim.sh"
    victim.write_text("#!/bin/sh\necho safe\n")
    link = tmp_path / "results.json"
    link.symlink_to(victim)
    assert_refused(["infer", npy, "--model", toy_model_path, "--out", link], "symbolic link")
    assert victim.read_text() == "#!/bin/sh\necho safe\n"
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "victim.sh"]


def test_a_temporary_file_left_by_a_killed_run_is_removed_by_the_next(tmp_path, npy, toy_model_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".r.json.{dead.pid}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    done, _ = run_cli("infer", npy, "--model", toy_model_path, "--out", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_infer_leaves_no_temporary_file(tmp_path, stop):
    """The real CLI, stopped while it writes --out (the write is slowed down to be caught)."""
    # The child's SIGINT as a terminal gives it: a parent may ignore SIGINT (pytest-xdist workers
    # can), and an ignored signal stays ignored in its children.
    script = f"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = ["cli.py", "infer", {str(SAMPLES / 'digit_3.png')!r}, "--out", {str(tmp_path / 'r.json')!r}]
from mcdrop import cli
from mcdrop.runtime import safe_files as files
real = files.os.replace
def slow_replace(*args):
    print("writing", flush=True)
    time.sleep(60)
    real(*args)
files.os.replace = slow_replace
cli.main()
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file, complete but not yet renamed
    child.send_signal(stop)
    # 120 s: on a loaded 2-core CI machine (a Ray instance beside) 30 s once ran out
    assert child.wait(timeout=120) == (128 + stop if stop == signal.SIGTERM else 130)
    assert "Traceback" not in child.stderr.read()
    assert list(tmp_path.iterdir()) == []


# 3. Reads: regular files only, external data refused ------------------------------------------

def test_dev_zero_and_a_fifo_as_model_are_refused_at_once(tmp_path, npy):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    assert_refused(["info", "/dev/zero"], "not a regular file", timeout=60)
    assert_refused(["infer", npy, "--model", fifo], "not a regular file", timeout=60)


def test_model_over_the_size_limit_is_refused_before_reading(tmp_path, npy, toy_model_path):
    assert_refused(["infer", npy, "--model", toy_model_path, "--limit", "model_mb=0.001"], "model_mb limit")


def external_data_model(folder, location):
    proto = toy_proto(folder)
    weight = next(t for t in proto.graph.initializer if t.name == "W1")
    data = weight.raw_data or numpy_helper.to_array(weight).tobytes()
    (folder / os.path.basename(location)).write_bytes(data)
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return write_model(proto, folder / "external.onnx")


def test_external_data_is_never_read_from_the_working_folder(tmp_path, npy):
    model_folder, cwd = tmp_path / "model", tmp_path / "cwd"
    model_folder.mkdir(), cwd.mkdir()
    model = external_data_model(model_folder, "secret.bin")
    (model_folder / "secret.bin").rename(cwd / "secret.bin")  # only the caller's folder has it
    assert_refused(["infer", npy, "--model", model], "keeps its data in another file", cwd=cwd)
    assert_refused(["infer", npy, "--model", model, "--allow-external-data"], "not a regular file in the model",
                   cwd=cwd)


def test_external_data_outside_the_model_folder_is_refused_even_when_allowed(tmp_path, npy):
    (tmp_path / "model").mkdir()
    model = external_data_model(tmp_path / "model", "../weights.bin")
    assert_refused(["infer", npy, "--model", model, "--allow-external-data"], "points outside the model's folder")


def test_external_data_in_the_model_folder_runs_when_allowed(tmp_path, npy):
    model = external_data_model(tmp_path, "weights.bin")
    done, _ = run_cli("infer", npy, "--model", model, "--allow-external-data", "--json", cwd=tmp_path.parent)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["predictions"]) == len(X)


# 4. Bounded work ----------------------------------------------------------------------------

def test_huge_numbers_in_the_metadata_are_refused(tmp_path, npy):
    gray = {"height": 2, "width": 3, "color_mode": "grayscale", "scale": 1 / 255, "offset": 0.0}
    cases = {
        "image 60000x60000": (lambda m: m["preprocessing"].update(height=60000, width=60000), "image_pixels limit"),
        "default passes 10^9": (lambda m: m.update(default_passes=10**9), "passes limit"),
        "default passes 0": (lambda m: m.update(default_passes=0), "default_passes must be an integer >= 1"),
        "default passes -5": (lambda m: m.update(default_passes=-5), "default_passes must be an integer >= 1"),
        "negative activations": (lambda m: m.update(activation_floats_per_sample=-1), "activation_floats_per_sample"),
        "input shape differs": (lambda m: m.update(input_shape=[None, 3, 2, 1]), "differs from the metadata"),
    }
    image = tmp_path / "img.png"
    Image.new("L", (3, 2), 9).save(image)
    for name, (edit, message) in cases.items():
        model = with_metadata(tmp_path, f"{name}.onnx", edit, example_shape=(2, 3, 1), preprocessing=gray)
        assert_refused(["infer", image, "--model", model], message)


def test_broken_metadata_is_a_one_line_error(tmp_path, npy):
    cases = {
        "not utf-8": (b'{"format": 1, "head": "\xff\xfe"}', "not UTF-8"),
        "not an object": (b"[1, 2, 3]", "not an object"),
        "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "nested more than"),
        "not json": (b"{format", "not JSON"),
        "NaN number": (b'{"format": NaN}', "not JSON"),
    }
    for name, (raw, message) in cases.items():
        model = with_metadata(tmp_path, f"{name}.onnx", raw=raw)
        assert_refused(["info", model], message)


def test_huge_flags_are_refused_up_front(npy, toy_model_path):
    assert_refused(["infer", npy, "--model", toy_model_path, "--passes", 10**9], "passes limit")
    assert_refused(["infer", npy, "--model", toy_model_path, "--passes", 2**70], "passes limit")
    assert_refused(["infer", npy, "--model", toy_model_path, "--max-chunk-mb", "inf"], "--max-chunk-mb")
    assert_refused(["infer", npy, "--model", toy_model_path, "--threads", 1000], "threads limit")
    assert_refused(["infer", npy, "--model", toy_model_path, "--limit", "passes=lots"], "not a finite number")
    assert_refused(["infer", npy, "--model", toy_model_path, "--limit", "speed=9"], "expected NAME=VALUE")


def test_a_raised_limit_lets_the_same_request_through(npy, toy_model_path):
    done, _ = run_cli("infer", npy, "--model", toy_model_path, "--passes", 20_000, "--limit", "passes=20000", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["passes"] == 20_000


def test_seed_marker_bomb_costs_nothing(tmp_path, npy):
    """An unused initializer full of the bytes of a float `seed` attribute (once scanned byte by
    byte: 217 s for 100k copies) is skipped whole: the random nodes come from the graph."""
    proto = toy_proto(tmp_path)
    marker = b"\x0a\x04seed\x15" + np.float32(1234567.0).tobytes()
    proto.graph.initializer.append(helper.make_tensor("bomb", TensorProto.UINT8, [len(marker) * 1_000_000],
                                                      marker * 1_000_000, raw=True))
    model = write_model(proto, tmp_path / "bomb.onnx")
    started = time.perf_counter()
    done, _ = run_cli("infer", npy, "--model", model, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - started < 30  # a guard against the old scan, not a speed target


def test_npz_bomb_is_refused_before_inflating(tmp_path, toy_model_path):
    bomb = tmp_path / "bomb.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**28, 4)}  # 4 GiB of zeros
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        zeros = bytes(2**24)
        for _ in range(2**32 // len(zeros)):
            f.write(zeros)
    assert bomb.stat().st_size < 8 * 2**20
    assert_refused(["infer", bomb, "--model", toy_model_path], "input_mb limit")


def test_npy_header_of_10_13_rows_is_refused(tmp_path, toy_model_path):
    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**13, 4)})
        f.write(bytes(64))
    assert_refused(["infer", path, "--model", toy_model_path], "input_mb limit")


def test_png_decompression_bomb_is_refused(tmp_path, grayscale_model_path):
    bomb = tmp_path / "bomb.png"
    write_bilevel_png(bomb, 30_000, 30_000)  # 900 M pixels in about 100 KB
    assert bomb.stat().st_size < 2**20
    assert_refused(["infer", bomb, "--model", grayscale_model_path], "image_pixels limit")


# 5. Failures inside onnxruntime are typed --------------------------------------------------------

def test_runtime_failure_inside_onnxruntime_is_a_typed_error(tmp_path, npy):
    """A graph that asks for a terabyte at run time (its size depends on `passes`, so nothing is
    folded at load, and goes through CumSum, which the checks before the run do not follow):
    ModelRunError from the API, one line from the CLI."""
    proto = toy_proto(tmp_path)
    graph = proto.graph
    graph.initializer.append(numpy_helper.from_array(np.array([2**38], dtype=np.int64), "huge"))
    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), "axis"))
    graph.node.extend([
        helper.make_node("Mul", ["passes_1d", "huge"], ["huge_product"]),
        helper.make_node("CumSum", ["huge_product", "axis"], ["huge_shape"]),
        helper.make_node("ConstantOfShape", ["huge_shape"], ["huge_zeros"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("ReduceSum", ["huge_zeros"], ["huge_sum"], keepdims=0),
    ])
    samples = next(n for n in graph.node if n.output[0] == "samples")
    samples.output[0] = "samples_raw"
    graph.node.append(helper.make_node("Add", ["samples_raw", "huge_sum"], ["samples"]))
    model = write_model(proto, tmp_path / "huge.onnx")
    with pytest.raises(ModelRunError, match="onnxruntime"):
        MCSession(model).predict(X, passes=2)
    assert_refused(["infer", npy, "--model", model], "onnxruntime")


def test_a_model_that_outputs_nan_is_a_typed_error(tmp_path, npy):
    proto = toy_proto(tmp_path)
    weights = next(t for t in proto.graph.initializer if t.name == "W3")
    weights.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(weights).shape, np.nan, np.float32), "W3"))
    model = write_model(proto, tmp_path / "nan.onnx")
    with pytest.raises(ModelRunError, match="NaN or infinite outputs"):
        MCSession(model).predict(X)
    assert_refused(["infer", npy, "--model", model, "--json"], "NaN or infinite outputs")


def test_graph_that_breaks_the_contract_is_refused_on_load(tmp_path):
    proto = toy_proto(tmp_path)
    proto.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    with pytest.raises(ModelFileError, match="inputs the contract does not know: extra"):
        MCSession(write_model(proto, tmp_path / "extra_input.onnx"))
    proto = toy_proto(tmp_path)
    samples = next(o for o in proto.graph.output if o.name == "samples")
    proto.graph.output.remove(samples)
    with pytest.raises(ModelFileError, match="no 'samples' output"):
        MCSession(write_model(proto, tmp_path / "no_samples.onnx"))


# 6. Images decoded right or refused --------------------------------------------------------------

def cli_json(*args):
    done, _ = run_cli("infer", *args, "--json", "--seed", "0", "--passes", "20")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["predictions"]


def test_16_bit_png_reads_as_its_8_bit_original(tmp_path):
    pixels = np.asarray(Image.open(SAMPLES / "digit_3.png").convert("L"), dtype=np.uint16) * 257
    wide = tmp_path / "digit_3_16bit.png"
    Image.fromarray(pixels).save(wide)
    assert Image.open(wide).mode.startswith("I")
    eight, sixteen = cli_json(SAMPLES / "digit_3.png", wide)
    assert eight["measures"]["label"] == sixteen["measures"]["label"] == 3


def test_rgba_with_content_only_in_alpha_is_refused(tmp_path, grayscale_model_path):
    alpha = np.zeros((2, 3), dtype=np.uint8)
    alpha[0, 1] = 255
    rgba = np.dstack([np.zeros((2, 3, 3), dtype=np.uint8), alpha])
    path = tmp_path / "ink_in_alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert_refused(["infer", path, "--model", grayscale_model_path], "alpha")


def test_a_bad_file_in_a_folder_is_named_and_the_rest_still_run(tmp_path, grayscale_model_path):
    for name in ("a.png", "c.tiff"):
        Image.new("L", (3, 2), 50).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "d.webp").write_bytes(b"RIFF broken")
    out = tmp_path / "results.json"
    done, _ = run_cli("infer", tmp_path, "--model", grayscale_model_path, "--out", out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "b.png" in errors[0] and "d.webp" in errors[1]
    document = json.loads(out.read_text())
    assert [os.path.basename(p["input"]) for p in document["predictions"]] == ["a.png", "c.tiff"]
    assert [os.path.basename(p["input"]) for p in document["failed"]] == ["b.png", "d.webp"]
    skipped, _ = run_cli("infer", tmp_path, "--model", grayscale_model_path, "--on-error", "skip")
    assert skipped.returncode == 0 and skipped.stderr.count("warning: skipped") == 2
    stopped, _ = run_cli("infer", tmp_path, "--model", grayscale_model_path, "--on-error", "stop")
    assert stopped.returncode == 2 and len(stopped.stderr.splitlines()) == 1 and "b.png" in stopped.stderr


# 7. Terminal safety ---------------------------------------------------------------------------------

def test_escape_sequences_in_names_and_labels_never_reach_the_terminal(tmp_path):
    labels = ["\x1b[2J\x1b[31mcat", "dog\nfake row", "bird\u202e"]
    model = with_metadata(tmp_path, "labels.onnx", lambda m: m.update(labels=labels))
    folder = tmp_path / "in"
    folder.mkdir()
    name = folder / "x\x1b]0;pwned\x07\nnext.npy"
    np.save(name, X)
    done, _ = run_cli("infer", name, "--model", model, "--top-k", 3)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout and "\u202e" not in done.stdout
    assert len(done.stdout.splitlines()) == 3 + len(X)  # header line, column names, one row each, the rule
    assert "\\x1b" in done.stdout
    for suffix in (".json", ".csv"):
        out = tmp_path / f"r{suffix}"
        assert run_cli("infer", name, "--model", model, "--out", out)[0].returncode == 0
        text = out.read_text(encoding="utf-8")
        if suffix == ".json":
            assert json.loads(text)["predictions"][0]["input"] == f"{name}[0]"
        else:
            # CSV is opened in spreadsheets and terminals: its text cells carry escapes, not the bytes
            assert "\x1b" not in text and "\x07" not in text
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
            assert rows[0]["input"] == csv_safe_cell(f"{name}[0]") and len(rows) == len(X)


def test_file_names_that_are_not_utf8_give_valid_json(tmp_path, toy_model_path):
    name = os.fsdecode(bytes(tmp_path) + b"/bad\xff.npy")
    np.save(name, X)
    out = tmp_path / "r.json"
    done, _ = run_cli("infer", name, "--model", toy_model_path, "--out", out)
    assert done.returncode == 0, done.stderr
    inputs = [p["input"] for p in json.loads(out.read_bytes().decode("utf-8"))["predictions"]]
    assert inputs[0].endswith("bad\\xff.npy[0]")


# 8. Integrity ---------------------------------------------------------------------------------------

def test_a_modified_file_is_refused_unless_verification_is_skipped(tmp_path, npy):
    data = bytearray((ROOT / "models" / "mlp.onnx").read_bytes())
    weights_at = len(data) // 2  # inside the first layer's weights
    data[weights_at] ^= 0x40
    model = tmp_path / "tampered.onnx"
    model.write_bytes(bytes(data))
    image = SAMPLES / "digit_3.png"
    assert_refused(["infer", image, "--model", model], "modified after export")
    done, _ = run_cli("infer", image, "--model", model, "--no-verify")
    assert done.returncode == 0, done.stderr


def test_an_unsealed_file_is_refused_with_the_way_out(tmp_path, npy):
    model = build_toy_model(tmp_path / "old.onnx", sealed=False)
    assert_refused(["info", model], "no integrity checksum")
    assert run_cli("info", model, "--no-verify")[0].returncode == 0


def test_python_api_raises_only_mcdrop_errors(tmp_path):
    for bad in (b"", b"\x00" * 64, b"not onnx", (ROOT / "models" / "mlp.onnx").read_bytes()[:5000]):
        path = tmp_path / "bad.onnx"
        path.write_bytes(bad)
        with pytest.raises(McdropError):
            MCSession(path)
