"""LiteRT (issue 25 item 4): `cli.py export MODEL --format tflite` writes a portable TensorFlow Lite
file (export/litert.py) that LiteRT's interpreter and MCSession (runtime/litert_engine.py) run with
the portable ONNX file's samples for the same keep masks: deterministic <= 1e-5, MC mean and
variance <= 1e-4; every bad input is one line."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from mcdrop import cli  # noqa: E402
from mcdrop.convert import convert_file  # noqa: E402
from mcdrop.runtime import litert_engine, portable_masks  # noqa: E402
from mcdrop.runtime.errors import DeviceError, ExportError, InputError, ModelFileError  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"
PASSES = 8
DETERMINISTIC, MC = 1e-5, 1e-4  # issue 25's acceptance (measured on this machine: 2e-6 at most)


def build(source: Path, folder: Path, name: str, **options):
    """(the .tflite path, the portable ONNX path) made from the shipped ONNX and Keras files, as
    export --format tflite makes them after its own ONNX export (export/litert.py)."""
    from mcdrop.export import load_keras_model
    from mcdrop.export.litert import tflite_bytes
    from mcdrop.runtime.format.rules import METADATA_KEY
    from mcdrop.runtime.format.onnx_file import read_model

    portable = folder / f"{name}.onnx"
    convert_file(MODELS / f"{source}.onnx", portable, passes=PASSES, validate=False, **options)
    meta = json.loads(read_model(portable.read_bytes()).metadata[METADATA_KEY])
    data, ops = tflite_bytes(load_keras_model(MODELS / f"{source}.keras"), meta, options.get("bake_masks"))
    path = folder / f"{name}.tflite"
    path.write_bytes(data)
    return path, portable


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("litert")
    return {"cnn": build("cnn", folder, "cnn"), "mlp": build("mlp", folder, "mlp"),
            "mlp_baked": build("mlp", folder, "mlp_baked", bake_masks=7)}


def inputs(info, count, seed=0):
    return np.random.default_rng(seed).random((count, *info.input_shape[1:]), dtype=np.float32)


def gaps(want, got):
    return (float(np.max(np.abs(want.samples.mean(0) - got.samples.mean(0)))),
            float(np.max(np.abs(want.samples.var(0) - got.samples.var(0)))))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_same_samples_as_the_portable_onnx_file(files, name):
    lite_path, onnx_path = files[name]
    lite, reference = MCSession(lite_path, seed=3), MCSession(onnx_path, seed=3)
    assert lite.provider == "LiteRT" and lite.info.portable == reference.info.portable
    x = inputs(reference.info, 5)
    want, got = reference.predict(x, dropout=False), lite.predict(x, dropout=False)
    assert np.max(np.abs(want.samples - got.samples)) <= DETERMINISTIC
    # 20 passes: three runs of the file's 8 (rows 0-7, 8-15, 16-23 of the set), batch 5 in one run
    want, got = reference.predict(x, passes=20), lite.predict(x, passes=20)
    assert got.samples.shape == (20, 5, 10)
    assert max(gaps(want, got)) <= MC
    assert np.max(np.abs(want.samples - got.samples)) <= DETERMINISTIC  # the same masks, pass by pass


@pytest.mark.slow
def test_golden_vectors_litert(files):
    """tests/golden/portable_cnn.json on LiteRT (each runtime's test checks the same file)."""
    from portable_golden import check, golden, golden_inputs, golden_masks

    assert golden()["passes"] == PASSES
    session = MCSession(files["cnn"][0])
    x = golden_inputs()
    check(session.run_raw(x, masks=golden_masks(session.info))["samples"], session.predict(x, dropout=False).samples)


@pytest.mark.slow
def test_the_litert_interpreter_runs_it_alone(files):
    """An app with LiteRT alone: feed input, stochastic and the keep masks of a mask seed by name."""
    from ai_edge_litert.interpreter import Interpreter

    lite_path, onnx_path = files["cnn"]
    reference = MCSession(onnx_path, seed=0)
    info = reference.info
    x = inputs(info, 2, seed=1)
    kept = portable_masks.keep_masks(info.mask_layout, [layer.rate for layer in info.stochastic_layers], 11, 0, PASSES)
    interpreter = Interpreter(model_path=str(lite_path))
    by_name = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    assert sorted(by_name) == ["input", "masks", "stochastic"]
    interpreter.resize_tensor_input(by_name["input"], x.shape)
    interpreter.allocate_tensors()
    for name, value in (("input", x), ("stochastic", np.array(True)), ("masks", kept)):
        interpreter.set_tensor(by_name[name], value)
    interpreter.invoke()
    [output] = interpreter.get_output_details()
    assert output["name"] == "samples"
    want = reference.run_raw(x, PASSES, masks=kept)["samples"]
    assert np.max(np.abs(interpreter.get_tensor(output["index"]) - want)) <= DETERMINISTIC


@pytest.mark.slow
def test_metadata_is_in_the_flatbuffer(files):
    """One file: mcdrop's metadata is the flatbuffer's Model.metadata entry "mcdrop", equal to
    the portable ONNX file's, so the same keep masks feed both."""
    lite_path, onnx_path = files["mlp"]
    found = json.loads(litert_engine.read_metadata(lite_path.read_bytes(), str(lite_path)))
    assert found == MCSession(onnx_path).info.metadata
    assert found["portable"] == {"batch": None, "passes": PASSES, "masks": "keep-uint8", "baked": None}


@pytest.mark.slow
def test_baked_file(files):
    lite_path, onnx_path = files["mlp_baked"]
    lite, reference = MCSession(lite_path), MCSession(onnx_path)
    assert [arg.name for arg in lite._session.get_inputs()] == ["input", "stochastic"]
    x = inputs(reference.info, 3)
    assert np.max(np.abs(lite.predict(x).samples - reference.predict(x).samples)) <= DETERMINISTIC
    with pytest.raises(InputError, match="holds the baked mask set of seed 7"):
        lite.predict(x, mask_seed=8)
    with pytest.raises(InputError, match=f"holds {PASSES} baked passes"):
        lite.predict(x, passes=PASSES + 1)


def raw_masks(dtype=np.uint8, rows=PASSES, value=1, floats=87_616):
    masks = np.ones((rows, floats), dtype=dtype)
    masks[0, 0] = value
    return masks


@pytest.mark.slow
@pytest.mark.parametrize("case, call, fragment", [
    ("float masks", lambda s, x: s.run_raw(x, PASSES, masks=raw_masks(np.float32)), "dtype float32"),
    ("short masks", lambda s, x: s.run_raw(x, PASSES, masks=raw_masks(rows=3)), "have shape [8, 87616]"),
    ("masks of 2", lambda s, x: s.run_raw(x, PASSES, masks=raw_masks(value=2)), "hold 0 (drop) or 1 (keep)"),
    ("other passes", lambda s, x: s.run_raw(x, 4), "runs its 8 passes at once"),
    ("independent", lambda s, x: s.predict(x, masks="independent"), "shared masks only"),
    ("wrong input shape", lambda s, x: s.predict(x[:, :5]), "the model expects"),
])
def test_bad_input_is_one_input_error(files, case, call, fragment):
    session = MCSession(files["cnn"][0])
    with pytest.raises(InputError) as err:
        call(session, inputs(session.info, 2))
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content, error, fragment", [
    (b"not a flatbuffer at all", ModelFileError, "LiteRT cannot load it"),
    (b"\x00\x00\x00\x00TFL3" + b"\xff" * 40, ModelFileError, "LiteRT cannot load it"),
], ids=["garbage", "broken"])
def test_broken_files_are_one_line(tmp_path, content, error, fragment):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(error, match=fragment) as err:
        MCSession(path)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_tflite_file_without_mcdrop_metadata_is_refused(files, tmp_path):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(files["mlp"][0].read_bytes()), 0)
    model.metadata = [entry for entry in model.metadata if entry.name != b"mcdrop"]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "plain.tflite"
    path.write_bytes(bytes(builder.Output()))
    with pytest.raises(ModelFileError, match="not an mcdrop export .no .mcdrop. metadata entry"):
        MCSession(path)


@pytest.mark.slow
def test_other_devices_are_refused(files):
    with pytest.raises(InputError, match="runs on LiteRT's CPU kernels"):
        MCSession(files["mlp"][0], device="openvino")


def test_without_litert_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import ai_edge_litert raises ImportError
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x00\x00\x00\x00TFL3")
    with pytest.raises(DeviceError, match=r"pip install -e '\.\[litert\]'"):
        MCSession(path)


def test_noise_kinds_it_cannot_take_are_refused():
    from mcdrop.export.litert import _check_kinds

    _check_kinds({"stochastic_layers": [{"name": "d", "kind": "TimeDistributed SpatialDropout1D"}]})
    with pytest.raises(ExportError, match="layer 'lstm' is LSTM dropout"):
        _check_kinds({"stochastic_layers": [{"name": "d", "kind": "Dropout"}, {"name": "lstm", "kind": "LSTM dropout"}]})


def invoke(*args):
    result = CliRunner().invoke(cli.app, [*map(str, args)])
    return result.exit_code, result.output


@pytest.mark.parametrize("args, fragment", [
    (["--format", "tflite", "-o", "OUT.onnx"], "must end in .tflite"),
    (["--format", "coreml", "-o", "OUT.tflite"], "choose onnx or tflite"),
    (["--format", "tflite", "--portable", "-o", "OUT.tflite"], "no --portable or --quantize"),
    (["--format", "tflite", "--quantize", "int8", "-o", "OUT.tflite"], "no --portable or --quantize"),
    (["--bake-masks", "3", "-o", "OUT.onnx"], "--bake-masks is for --portable or --format tflite"),
], ids=["suffix", "format", "portable", "quantize", "bake"])
def test_cli_export_options_are_one_line_errors(tmp_path, args, fragment):
    out = tmp_path / "out"
    code, output = invoke("export", MODELS / "mlp.keras", *[str(out) + a[3:] if a.startswith("OUT") else a for a in args])
    assert code == 2 and output.count("\n") == 1 and output.startswith("error: ") and fragment in output, output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_export_tflite(tmp_path):
    """The whole path: export, convert, trace, convert to TensorFlow Lite, check against the
    portable ONNX file, write one file (baked, so its metadata names the seed)."""
    pytest.importorskip("tf2onnx")
    out = tmp_path / "mlp.tflite"
    code, output = invoke("export", MODELS / "mlp.keras", "-o", out, "--format", "tflite", "--passes", "4",
                          "--bake-masks", "5", "--no-validate")  # skips the checks against Keras only
    assert code == 0, output
    assert "same samples as the portable ONNX file" in output and "baked (seed 5)" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.tflite"]
    session = MCSession(out)
    assert session.info.portable["baked"] == {"mask_seed": 5} and session.predict(inputs(session.info, 1)).samples.shape == (4, 1, 10)
