"""`export --custom-objects my_layers.py`: the user's registered layers load from the CLI, and only
those: the file's own code (a Lambda) is still refused."""

import json
import subprocess
import sys
import textwrap
import zipfile

import pytest

pytest.importorskip("tf2onnx")

from conftest import ROOT  # noqa: E402

LAYERS = textwrap.dedent('''
    import keras

    @keras.saving.register_keras_serializable(package="user_layers")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x
''')
BUILD = textwrap.dedent('''
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("my_layers", sys.argv[1])
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    import keras
    layers = [keras.Input((4,)), keras.layers.Dense(6, activation="relu"), module.Doubler(name="double")]
    if sys.argv[3] == "lambda":
        layers.append(keras.layers.Lambda(lambda x: x + 1.0, name="plus_one"))
    layers += [keras.layers.Dropout(0.3), keras.layers.Dense(3, activation="softmax")]
    keras.Sequential(layers).save(sys.argv[2])
''')


def cli(*args):
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("custom")
    (folder / "my_layers.py").write_text(LAYERS)
    for kind in ("plain", "lambda"):
        subprocess.run([sys.executable, "-c", BUILD, folder / "my_layers.py", folder / f"{kind}.keras", kind],
                       check=True, capture_output=True)
    return folder


def test_a_registered_custom_layer_exports_with_its_module(files, tmp_path):
    refused = cli("export", files / "plain.keras", "-o", tmp_path / "m.onnx", "--no-validate")
    assert refused.returncode == 2 and "user_layers>Doubler" in refused.stderr and "Traceback" not in refused.stderr
    # trusting the file would not help: the class is looked up in a registry the user's module fills
    assert "--custom-objects FILE.py" in refused.stderr and "--trust-model-code" not in refused.stderr
    done = cli("export", files / "plain.keras", "-o", tmp_path / "m.onnx", "--custom-objects", files / "my_layers.py")
    assert done.returncode == 0, done.stderr
    assert "validation: " in done.stdout and (tmp_path / "m.onnx").exists()


def test_the_module_does_not_let_the_files_own_code_through(files, tmp_path):
    done = cli("export", files / "lambda.keras", "-o", tmp_path / "m.onnx", "--custom-objects", files / "my_layers.py")
    assert done.returncode == 2 and "Lambda" in done.stderr and not (tmp_path / "m.onnx").exists()


def test_a_module_that_fails_or_registers_nothing_is_one_line(files, tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "empty.py").write_text("x = 1\n")
    for module, message in (("broken.py", "importing it failed (RuntimeError: boom)"), ("empty.py", "registers no Keras object")):
        done = cli("export", files / "plain.keras", "-o", tmp_path / "m.onnx", "--custom-objects", tmp_path / module)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and lines[-1].startswith("error: ") and message in lines[-1], done.stderr
        assert not (tmp_path / "m.onnx").exists()


def keras_archive(path, layers):
    """A .keras file holding only the config.json of a Sequential model: what the check reads."""
    config = {"module": "keras", "class_name": "Sequential", "config": {"name": "m", "layers": layers}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    return path


CUSTOM = {"module": "user_layers", "class_name": "Doubler", "registered_name": "user_layers>Doubler",
          "config": {"name": "double"}}
LAMBDA = {"module": "keras.layers", "class_name": "Lambda", "config": {"name": "plus_one"}}


@pytest.mark.parametrize("layers, hint, not_hinted", [
    ([CUSTOM], "refused: pass --custom-objects FILE.py", "--trust-model-code"),
    ([LAMBDA], "refused (pass --trust-model-code if you trust this file's author)", "--custom-objects"),
    ([CUSTOM, LAMBDA], "--custom-objects FILE.py for the custom objects; --trust-model-code for the file's own code",
     None),
], ids=["custom-object", "lambda", "both"])
def test_the_refusal_names_the_option_that_loads_it(tmp_path, layers, hint, not_hinted):
    from mcdrop.export.model_code import check_model_code
    from mcdrop.runtime.errors import UnsafeModelError

    with pytest.raises(UnsafeModelError) as refused:
        check_model_code(keras_archive(tmp_path / "m.keras", layers))
    assert hint in str(refused.value) and (not_hinted is None or not_hinted not in str(refused.value))
    check_model_code(keras_archive(tmp_path / "ok.keras", [CUSTOM]), registered={"user_layers>Doubler"})
