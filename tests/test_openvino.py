"""OpenVINO as an engine of MCSession (issue 25 item 3; runtime/openvino_engine.py): any mcdrop file,
float, int8 or portable, gives onnxruntime's samples for the same mask seed (issue 25: 1e-4)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mcdrop.runtime.errors import DeviceError
from mcdrop.runtime.session import MCSession

MODELS = Path(__file__).resolve().parent.parent / "models"
TOLERANCE = 1e-4  # issue 25's acceptance (measured: 2e-6 at most with the f32 hint)


@pytest.fixture(scope="module")
def portable_cnn(tmp_path_factory):
    pytest.importorskip("onnx")
    from mcdrop.convert import convert_file

    path = tmp_path_factory.mktemp("openvino") / "cnn_portable.onnx"
    convert_file(MODELS / "cnn.onnx", path, batch_size=1, passes=8, validate=False)
    return path


@pytest.mark.parametrize("name", ["cnn.onnx", "cnn_int8.onnx", "mlp.onnx", "portable"])
def test_same_samples_as_onnxruntime(name, portable_cnn):
    pytest.importorskip("openvino")
    path = portable_cnn if name == "portable" else MODELS / name
    reference, engine = MCSession(path, seed=2), MCSession(path, seed=2, device="openvino")
    assert engine.provider == "OpenVINO"
    x = np.random.default_rng(0).random((2, *reference.info.input_shape[1:]), dtype=np.float32)
    for options in (dict(passes=10), dict(dropout=False)):
        want, got = reference.predict(x, **options), engine.predict(x, **options)
        assert np.max(np.abs(got.samples - want.samples)) <= TOLERANCE


def test_a_file_with_analytic_outputs_runs_both_modes(tmp_path):
    """convert --analytic's If compiles on OpenVINO's CPU plugin (its branches agree in rank), and
    both modes give onnxruntime's values."""
    pytest.importorskip("openvino")
    onnx = pytest.importorskip("onnx")
    from mcdrop.convert import convert_analytic
    from mcdrop.runtime.format.metadata_writer import metadata_of, write_metadata

    x = np.random.default_rng(0).random((16, 784), dtype=np.float32)  # convert's minimum
    np.save(tmp_path / "inputs.npy", x)
    convert_analytic(MODELS / "mlp.onnx", tmp_path / "analytic.onnx", tmp_path / "inputs.npy", reference_passes=50)
    proto = onnx.load(tmp_path / "analytic.onnx")
    meta = metadata_of(proto)
    meta["analytic"]["agreement"].update(max_abs_mean_gap=0.0, spearman_mutual_information=1.0)  # allow the mode
    write_metadata(proto, meta)
    onnx.save(proto, tmp_path / "vouched.onnx")
    reference, engine = (MCSession(tmp_path / "vouched.onnx", seed=2, verify=False, device=device)
                         for device in ("cpu", "openvino"))
    assert engine.provider == "OpenVINO"
    for options in (dict(passes=10), dict(method="analytic")):
        np.testing.assert_allclose(engine.predict(x, **options).mean, reference.predict(x, **options).mean,
                                   atol=TOLERANCE)


def test_cli_infer_device_openvino():
    pytest.importorskip("openvino")
    from typer.testing import CliRunner

    from mcdrop import cli

    image = str(MODELS / "samples" / "ambiguous.png")
    runs = [CliRunner().invoke(cli.app, ["infer", image, "--seed", "3", "--json", *extra]) for extra in
            ([], ["--device", "openvino"])]
    documents = [json.loads(run.output) for run in runs]
    assert [d["provider"] for d in documents] == ["CPUExecutionProvider", "OpenVINO"]
    want, got = (np.array(d["predictions"][0]["mean"]) for d in documents)
    assert np.max(np.abs(got - want)) <= TOLERANCE


def test_without_openvino_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(DeviceError, match=r"pip install -e '\.\[openvino\]'"):
        MCSession(MODELS / "mlp.onnx", device="openvino")


def test_golden_vectors_openvino(tmp_path):
    """tests/golden/portable_cnn.json on OpenVINO (each runtime's test checks the same file)."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    from mcdrop.convert import convert_file
    from portable_golden import check, golden, golden_inputs, golden_masks

    path = tmp_path / "cnn_portable.onnx"
    convert_file(MODELS / "cnn.onnx", path, passes=golden()["passes"], validate=False)
    session = MCSession(path, device="openvino")
    x = golden_inputs()
    check(session.run_raw(x, masks=golden_masks(session.info))["samples"], session.predict(x, dropout=False).samples)
