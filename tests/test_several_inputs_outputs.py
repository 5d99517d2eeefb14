"""A model with two named inputs and two outputs: exported through the CLI, fed by input name
(`infer X.npz`, `MCSession.predict(dict)`), each output with its own head, measures and parity.
Mask-for-mask and statistical parity of each output: tests/zoo.py two_inputs_two_outputs."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

pytest.importorskip("tf2onnx")

from conftest import ROOT  # noqa: E402
from mcdrop.runtime.errors import InputError, ModelFileError  # noqa: E402
from mcdrop.runtime.format.integrity import seal  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402
from zoo import two_inputs_two_outputs  # noqa: E402

pytestmark = pytest.mark.slow
RNG = np.random.default_rng(5)
X = {"image": RNG.random((4, 6, 6, 1), dtype=np.float32), "meta": RNG.normal(size=(4, 3)).astype(np.float32)}


def cli(*args):
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("several")
    model, _ = two_inputs_two_outputs()
    model.save(folder / "m.keras")
    (folder / "digits.txt").write_text("zero\none\ntwo\n")
    done = cli("export", folder / "m.keras", "-o", folder / "m.onnx", "--head", "size=regression",
               "--labels", f"digit={folder / 'digits.txt'}")
    assert done.returncode == 0, done.stderr
    np.savez(folder / "x.npz", **X)
    return model, folder, done.stdout + done.stderr


def test_export_reports_a_head_and_parity_per_output(exported):
    _, _, report = exported
    assert "head: digit: softmax, size: regression" in report
    for check in ("deterministic parity of digit", "deterministic parity of size", "statistical parity of digit",
                  "statistical parity of size"):
        assert f"ok  {check}:" in report


def test_predict_takes_a_dict_and_gives_each_output_its_own_head_and_measures(exported):
    model, folder, _ = exported
    session = MCSession(folder / "m.onnx", seed=0)
    assert session.input_names == ["image", "meta"] and session.output_names == ["digit", "size"]
    keras_digit, keras_size = (np.asarray(y) for y in model([X["image"], X["meta"]], training=False))
    plain = session.predict(X, dropout=False)
    np.testing.assert_allclose(plain["digit"].mean, keras_digit, atol=1e-5)
    np.testing.assert_allclose(plain["size"].mean, keras_size, atol=1e-5)
    mc = session.predict([X["image"], X["meta"]], passes=40)  # a list in input order also works
    assert mc["digit"].head == "softmax" and mc["digit"].labels == ["zero", "one", "two"]
    assert mc["digit"].measures["mutual_information"].shape == (4,) and (mc["digit"].variance > 0).any()
    assert mc["size"].head == "regression" and mc["size"].measures["std"].shape == (4, 2)
    assert (mc["size"].variance > 0).all()  # the GaussianNoise reaches every regression unit


@pytest.mark.parametrize("x, message", [
    (X["image"], r"takes 2 inputs \(image, meta\): pass a dict"),
    ({"image": X["image"]}, "missing meta"),
    ({**X, "other": X["meta"]}, "unknown other"),
    ({"image": X["image"], "meta": X["meta"][:2]}, "differ in batch size"),
    ({"image": X["image"], "meta": X["image"]}, "input 'meta' has shape"),
])
def test_bad_inputs_by_name_are_one_line_errors(exported, x, message):
    session = MCSession(exported[1] / "m.onnx")
    with pytest.raises(InputError, match=message):
        session.predict(x)


def test_infer_reads_an_npz_by_input_name_and_writes_every_output(exported):
    _, folder, _ = exported
    done = cli("infer", folder / "x.npz", "--model", folder / "m.onnx", "--json", "--no-dropout",
               "--out", folder / "r.npz")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    first = document["predictions"][0]
    assert first["input"].endswith("x.npz[0]") and set(first["outputs"]) == {"digit", "size"}
    assert first["outputs"]["digit"]["measures"]["label_name"] in ("zero", "one", "two")
    session = MCSession(folder / "m.onnx")
    expected = session.predict(X, dropout=False)
    with np.load(folder / "r.npz") as saved:
        np.testing.assert_allclose(saved["digit/mean"], expected["digit"].mean, atol=1e-6)
        np.testing.assert_allclose(saved["size/mean"], expected["size"].mean, atol=1e-6)
    table = cli("infer", folder / "x.npz", "--model", folder / "m.onnx", "--passes", 5)
    assert "output digit (softmax)" in table.stdout and "output size (regression)" in table.stdout


def test_infer_names_the_missing_array(exported, tmp_path):
    _, folder, _ = exported
    np.savez(tmp_path / "half.npz", image=X["image"])
    done = cli("infer", tmp_path / "half.npz", "--model", folder / "m.onnx")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(errors) == 1 and "has no array named meta" in errors[0]


def test_info_lists_each_output_and_input(exported):
    done = cli("info", exported[1] / "m.onnx")
    assert done.returncode == 0, done.stderr
    for line in ("head             digit: softmax", "head             size: regression",
                 "labels           digit: zero, one, two", "input            image [?, 6, 6, 1]",
                 "input            meta [?, 3]"):
        assert line in done.stdout


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta["outputs"][1].update(prefix="other/"), "prefix must be size/"),
    (lambda meta: meta["outputs"][1].update(name="gone", prefix="gone/"), "no 'gone/samples' output"),
    (lambda meta: meta["inputs"].pop(), "one input names it 'input'"),
    (lambda meta: meta["outputs"][0].update(labels=None), "first output's"),
])
def test_metadata_that_misdescribes_the_inputs_or_outputs_is_refused(exported, tmp_path, edit, message):
    proto = onnx.load(exported[1] / "m.onnx")
    entry = next(e for e in proto.metadata_props if e.key == "mcdrop")
    meta = json.loads(entry.value)
    edit(meta)
    entry.value = json.dumps(meta)
    (tmp_path / "bad.onnx").write_bytes(seal(proto.SerializeToString()))
    with pytest.raises(ModelFileError, match=message):
        MCSession(tmp_path / "bad.onnx")


def test_an_npz_member_that_cannot_be_read_is_one_line(exported, tmp_path):
    """Named members are read as any .npz input is (runtime/array_files.py): a member stored with a
    compression method zipfile does not know is a one-line error, not a traceback."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, value in X.items():
            member = io.BytesIO()
            np.save(member, value)
            archive.writestr(f"{name}.npy", member.getvalue())
    data = bytearray(buffer.getvalue())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local headers, central directory
        start = data.find(signature)
        while start != -1:  # every member's compression method becomes 99, which no zip reader knows
            data[start + offset:start + offset + 2] = (99).to_bytes(2, "little")
            start = data.find(signature, start + 4)
    (tmp_path / "odd.npz").write_bytes(bytes(data))
    done = cli("infer", tmp_path / "odd.npz", "--model", exported[1] / "m.onnx")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and "cannot read array" in errors[0]


def test_int8_takes_one_input_several_outputs_and_measures_drift_over_all(tmp_path):
    import keras
    from keras import layers

    from mcdrop.export import export_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    x = layers.Dropout(0.3)(layers.Dense(8, activation="relu")(inp))
    keras.Model(inp, [layers.Dense(3, activation="softmax", name="a")(x), layers.Dense(1, activation="sigmoid",
                                                                                        name="b")(x)]).save(tmp_path / "m.keras")
    report = export_model(tmp_path / "m.keras", tmp_path / "m.onnx", quantize="int8")
    assert set(report.drift) == {"deterministic", "mc_mean", "mc_variance"}
    assert all(0 <= value < 0.1 for value in report.drift.values())  # 0.01 and less measured here
    assert set(MCSession(tmp_path / "m.onnx").predict(np.ones((2, 6), np.float32), passes=4)) == {"a", "b"}


def test_int8_refuses_several_inputs_in_one_line(exported, tmp_path):
    done = cli("export", exported[1] / "m.keras", "-o", tmp_path / "q.onnx", "--head", "size=regression",
               "--quantize", "int8")
    assert done.returncode == 2 and "Traceback" not in done.stderr and not (tmp_path / "q.onnx").exists()
    assert "--quantize int8 takes models with one input" in done.stderr
