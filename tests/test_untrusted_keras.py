"""Keras model files from someone else never run their code on export (README: Trust model).

A Lambda layer's function, written to write a marker file when called, is saved in every form the
exporter loads (Keras 2 SavedModel, Keras 2 and Keras 3 .h5, .keras). Loaded with trust, the marker
appears, which shows the hostile files work; exported without trust, each is one error line, no
marker and no output file. Also: configs hand-edited to name modules outside Keras, SavedModel
folders with links out of the folder or FIFOs in it, a FIFO as the model path, and size caps.
"""

import base64
import json
import marshal
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("tf2onnx")

import h5py  # noqa: E402
import keras  # noqa: E402

from mcdrop import export  # noqa: E402
from mcdrop.export.model_source import source_sha256  # noqa: E402
from mcdrop.export.model_code import MAX_NESTING, check_model_code, find_code  # noqa: E402
from mcdrop.runtime.errors import ModelFileError, UnsafeModelError  # noqa: E402
from mcdrop.runtime.format.integrity import verify  # noqa: E402
from mcdrop.runtime.format.onnx_file import _length_field, read_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
FORMATS = ["keras2_saved_model", "keras2.h5", "keras3.h5", "keras3.keras"]
REFUSAL = "refused (pass --trust-model-code if you trust this file's author)"


def marker_lambda(marker):
    """Writes `marker` when called; the path is in the lambda's closure, which Keras saves with
    its bytecode, so no global of this module is needed where it is loaded."""
    marker = str(marker)
    return lambda x: (open(marker, "w").write("ran"), x)[1]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """{format: path} of one model with a Lambda layer named 'evil', and the marker it writes."""
    import tf_keras

    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "marker"
    k2 = tf_keras.Sequential([
        tf_keras.Input((4,)), tf_keras.layers.Dense(3, name="hidden"),
        tf_keras.layers.Lambda(marker_lambda(marker), name="evil"),
        tf_keras.layers.Dropout(0.3), tf_keras.layers.Dense(2, activation="softmax"),
    ])
    k2.save(folder / "keras2_saved_model", save_format="tf")
    k2.save(folder / "keras2.h5")
    k3 = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
        keras.layers.Lambda(marker_lambda(marker), name="evil"),
        keras.layers.Dropout(0.3), keras.layers.Dense(2, activation="softmax"),
    ])
    k3.save(folder / "keras3.h5")
    k3.save(folder / "keras3.keras")
    return {name: folder / name for name in FORMATS}, marker


@pytest.fixture
def marker(hostile):
    """The marker path, absent at the start of the test (building the models called the lambda)."""
    path = hostile[1]
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def stock_saved_model(tmp_path_factory):
    """A Keras 2 SavedModel with nothing but stock layers."""
    import tf_keras

    folder = tmp_path_factory.mktemp("stock") / "k2"
    tf_keras.Sequential([
        tf_keras.Input((5,)), tf_keras.layers.Dense(8, activation="relu"), tf_keras.layers.Dropout(0.3),
        tf_keras.layers.Dense(3, activation="softmax"),
    ]).save(folder, save_format="tf")
    return folder


def stock_mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                             keras.layers.Dropout(0.3), keras.layers.Dense(3, activation="softmax")])


# --- the hostile files really run code when trusted ------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_control_trusted_load_runs_the_lambda(fmt, hostile, marker):
    """Without this, a refusal test could pass because the marker never worked."""
    export.load_keras_model(hostile[0][fmt], trust_model_code=True)
    assert marker.read_text() == "ran"


def test_control_tf_keras_runs_lambda_even_in_safe_mode(hostile, marker):
    """The reason for reading the config first: tf_keras's safe_mode does not stop it."""
    import tf_keras

    tf_keras.models.load_model(hostile[0]["keras2_saved_model"], compile=False, safe_mode=True)
    assert marker.exists()


def test_trusted_lambda_model_exports(tmp_path):
    from typer.testing import CliRunner

    from mcdrop import cli

    keras.utils.set_random_seed(0)
    path = tmp_path / "double.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Lambda(lambda x: x * 2.0, name="double"),
                      keras.layers.Dropout(0.3, name="drop"), keras.layers.Dense(2, activation="softmax")]).save(path)
    report = export.export_model(path, tmp_path / "api.onnx", validate=False, trust_model_code=True)
    assert [layer["name"] for layer in report.stochastic_layers] == ["drop"]
    args = ["export", str(path), "-o", str(tmp_path / "cli.onnx"), "--no-validate"]
    assert CliRunner().invoke(cli.app, args).exit_code == 2
    result = CliRunner().invoke(cli.app, [*args, "--trust-model-code"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli.onnx").exists()


# --- refused without trust ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_lambda_model_is_refused_before_loading(fmt, hostile, marker, tmp_path):
    source = hostile[0][fmt]
    with pytest.raises(UnsafeModelError) as caught:
        export.export_model(source, tmp_path / "out.onnx", validate=False)
    message = str(caught.value)
    assert message == f"{source}: layer 'evil' is a Lambda layer, whose Python code would run when loaded; {REFUSAL}"
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(done, fragment):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], lines
    assert "Traceback" not in done.stderr


def test_cli_refuses_lambda_saved_model_in_one_line(hostile, marker, tmp_path):
    done = run_cli("export", hostile[0]["keras2_saved_model"], "-o", tmp_path / "out.onnx")
    assert_one_error_line(done, "layer 'evil' is a Lambda layer")
    assert "--trust-model-code" in done.stderr
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def rewrite_keras_config(source, target, edit):
    """A copy of the .keras zip `source` whose config.json went through `edit` (a dict -> None)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            new.writestr(item, data)
    return target


def layer(config, name):
    return next(spec for spec in config["config"]["layers"] if spec["config"].get("name") == name)


OS_SYSTEM = {"module": "os", "class_name": "function", "config": "system", "registered_name": "system"}
BUILTIN_EVAL = {"module": "builtins", "class_name": "function", "config": "eval", "registered_name": "function"}


@pytest.mark.parametrize("activation, fragment", [
    (OS_SYSTEM, "names the function 'system' of Python module 'os', outside Keras"),
    (BUILTIN_EVAL, "names the function 'eval' of Python module 'builtins', outside Keras"),
    ({"module": "keras.src.utils.python_utils", "class_name": "function", "config": "func_load",
      "registered_name": "func_load"}, "'keras.src.utils.python_utils'"),
], ids=["os.system", "builtins.eval", "keras-internal-function"])
def test_hand_edited_module_outside_keras_is_refused(activation, fragment, tmp_path):
    source = tmp_path / "stock.keras"
    stock_mlp().save(source)
    edited = rewrite_keras_config(source, tmp_path / "edited.keras",
                                  lambda config: layer(config, "hidden")["config"].update(activation=activation))
    with pytest.raises(UnsafeModelError, match="layer 'hidden' \\(Dense\\)") as caught:
        export.export_model(edited, tmp_path / "out.onnx", validate=False)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out.onnx").exists()


def test_hand_edited_h5_custom_class_is_refused(tmp_path):
    path = tmp_path / "edited.h5"
    stock_mlp().save(path)
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        layer(config, "hidden")["config"]["kernel_initializer"] = {
            "module": "evil_package.init", "class_name": "Boom", "config": {}, "registered_name": "evil>Boom"}
        h5.attrs["model_config"] = json.dumps(config)
    with pytest.raises(UnsafeModelError, match="layer 'hidden' \\(Dense\\) holds the custom object 'evil>Boom'"):
        export.load_keras_model(path)


# --- configs read as data ------------------------------------------------------------------------


def bytecode():
    return base64.encodebytes(marshal.dumps((lambda x: x).__code__)).decode()


def wrap(name, class_name, **config):
    return {"module": "keras.layers", "class_name": class_name, "config": {"name": name, **config}}


@pytest.mark.parametrize("config, expected", [
    (wrap("outer", "Sequential", layers=[wrap("td", "TimeDistributed", layer=wrap("inner", "Lambda"))]),
     "layer 'inner' is a Lambda layer"),
    (wrap("bi", "Bidirectional", layer=wrap("nested", "Functional", layers=[wrap("deep", "Lambda")])),
     "layer 'deep' is a Lambda layer"),
    (wrap("d", "Dense", activation={"class_name": "__lambda__", "config": {"value": "x"}}),
     "layer 'd' (Dense) holds a Python lambda"),
    (wrap("cell", "ResidualWrapper", residual_fn=["abc", None, None], residual_fn_type="lambda"),
     "layer 'cell' (ResidualWrapper) holds a Python lambda (residual_fn_type)"),
    (wrap("d", "Dense", activation={"value": [bytecode(), None, None]}),
     "layer 'd' (Dense) holds marshalled Python bytecode"),
    (wrap("d", "Dense", anything=bytecode().replace("\n", "!")), "holds marshalled Python bytecode"),
    (wrap("t", "TFSMLayer", filepath="/elsewhere"), "layer 't' (TFSMLayer) is a TFSMLayer"),
    ({"class_name": "Custom>Thing", "config": {"name": "c"}}, "holds the custom object 'Custom>Thing'"),
], ids=["nested-lambda", "wrapped-model-lambda", "lambda-activation", "cell-wrapper-fn", "bytecode-list",
        "bytecode-with-junk", "tfsm-layer", "custom-class"])
def test_find_code_sees_code_anywhere(config, expected):
    findings = find_code(config)
    assert len(findings) == 1 and expected in findings[0], findings


def test_find_code_passes_stock_configs_and_skips_the_unread_compile_config(tmp_path):
    model = stock_mlp()
    model.compile(optimizer="adam", loss=lambda y, p: p)  # never read: the exporter loads with compile=False
    with pytest.warns(UserWarning, match="lambda"):
        model.save(tmp_path / "compiled.keras")
    check_model_code(tmp_path / "compiled.keras")
    check_model_code(ROOT / "models" / "cnn.keras")
    check_model_code(ROOT / "models" / "mlp.keras")


def test_zoo_configs_pass(tmp_path):
    """Every model kind the exporter promises (tests/zoo.py), as .keras and as .h5."""
    from zoo import ZOO

    for name, build in ZOO.items():
        model, _ = build()
        for suffix in (".keras", ".h5"):
            model.save(tmp_path / f"{name}{suffix}")
            check_model_code(tmp_path / f"{name}{suffix}")


def test_deep_nesting_is_a_model_file_error(tmp_path):
    deep = {"class_name": "Dense", "config": {"name": "d"}}
    for _ in range(MAX_NESTING):
        deep = {"a": [deep]}
    with pytest.raises(ModelFileError, match="nests more than"):
        find_code(deep)
    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match="cannot load the Keras model .*nests too deep"):
        check_model_code(path)


@pytest.mark.parametrize("content, fragment", [
    (b"not a zip", "not a readable .keras archive"),
    (None, "no config.json"),
    ({"config.json": b"{not json"}, "not JSON"),
])
def test_unreadable_keras_config_is_one_line(content, fragment, tmp_path):
    path = tmp_path / "bad.keras"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in (content or {"metadata.json": b"{}"}).items():
                archive.writestr(name, data)
    with pytest.raises(ModelFileError, match=fragment) as caught:
        export.load_keras_model(path)
    assert "\n" not in str(caught.value)


def saved_metadata(*layers):
    """keras_metadata.pb bytes: SavedMetadata.nodes (1) each with its metadata JSON (5)."""
    return b"".join(_length_field(1, _length_field(5, json.dumps(spec).encode())) for spec in layers)


def test_saved_model_metadata_is_read_without_tensorflow(tmp_path):
    folder = tmp_path / "crafted"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    dense = {"name": "d", "class_name": "Dense", "config": {"name": "d", "activation": OS_SYSTEM}}
    (folder / "keras_metadata.pb").write_bytes(saved_metadata({"name": "root", "class_name": "Sequential"}, dense))
    with pytest.raises(UnsafeModelError, match="layer 'd' \\(Dense\\) names the function 'system' of Python module 'os'"):
        check_model_code(folder)
    (folder / "keras_metadata.pb").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(ModelFileError, match="malformed keras_metadata.pb"):
        check_model_code(folder)


# --- what the source is made of ------------------------------------------------------------------


def copy_tree(folder, tmp_path):
    target = tmp_path / folder.name
    shutil.copytree(folder, target, symlinks=True)
    return target


@pytest.mark.parametrize("target_kind", ["file", "fifo"])
def test_link_out_of_saved_model_is_refused_unread(target_kind, stock_saved_model, tmp_path):
    folder = copy_tree(stock_saved_model, tmp_path / "in")
    outside = tmp_path / "outside" / "secret"
    outside.parent.mkdir()
    if target_kind == "fifo":
        os.mkfifo(outside)
    else:
        outside.write_text("secret")
    (folder / "assets" / "leak").symlink_to(outside)
    started = time.monotonic()
    with pytest.raises(ModelFileError, match=f"{folder}: assets/leak is a symbolic link to .*outside the folder"):
        export.export_model(folder, tmp_path / "out.onnx", validate=False)
    assert time.monotonic() - started < 30
    with pytest.raises(ModelFileError, match="assets/leak"):
        source_sha256(folder)


def test_fifo_inside_saved_model_is_refused(stock_saved_model, tmp_path):
    folder = copy_tree(stock_saved_model, tmp_path)
    os.mkfifo(folder / "variables" / "pipe")
    with pytest.raises(ModelFileError, match="variables/pipe is not a regular file or folder"):
        export.load_keras_model(folder)


def test_links_inside_the_folder_are_hashed_once(stock_saved_model, tmp_path):
    folder = copy_tree(stock_saved_model, tmp_path)
    before = source_sha256(folder)
    (folder / "assets" / "again").symlink_to(folder / "saved_model.pb")
    (folder / "assets" / "variables").symlink_to(folder / "variables", target_is_directory=True)
    assert source_sha256(folder) == before
    assert all(not path.is_symlink() for path in export.source_files(folder))


def test_source_size_is_capped(stock_saved_model, tmp_path):
    with pytest.raises(ModelFileError, match="more than 1000 bytes"):
        source_sha256(stock_saved_model, max_bytes=1000)
    source = tmp_path / "m.keras"
    stock_mlp().save(source)
    with pytest.raises(ModelFileError, match="more than 1000 bytes; refused"):
        export.export_model(source, tmp_path / "out.onnx", max_source_bytes=1000)


def test_fifo_as_model_path_returns_at_once(tmp_path):
    fifo = tmp_path / "model.keras"
    os.mkfifo(fifo)
    outcome = {}

    def attempt():
        try:
            export.export_model(fifo, tmp_path / "out.onnx")
        except Exception as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # blocked opening the FIFO: a writer releases it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("export_model blocked on a FIFO")
    assert isinstance(outcome.get("error"), ModelFileError), outcome
    assert "not a regular file" in str(outcome["error"])


def test_labels_must_be_a_regular_utf8_file(tmp_path):
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    with pytest.raises(export.ExportError, match="not a regular file"):
        export.read_labels(fifo, "softmax", 3)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\nb\nc\n".encode("latin-1"))
    with pytest.raises(export.ExportError, match="not UTF-8"):
        export.read_labels(latin, "softmax", 3)


# --- stock models still export ---------------------------------------------------------------------


@pytest.mark.parametrize("source", ["cnn.keras", "k2"])
def test_stock_models_export_sealed(source, stock_saved_model, tmp_path):
    path = stock_saved_model if source == "k2" else ROOT / "models" / source
    report = export.export_model(path, tmp_path / "out.onnx", validate=False)
    data = (tmp_path / "out.onnx").read_bytes()
    assert report.size_bytes == len(data)
    verify(data, read_model(data), "out.onnx")  # the exporter sealed it
