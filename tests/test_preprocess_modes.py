"""Image preprocessing modes: what Keras's preprocess_input does, written into the file's metadata
by the exporter and applied by the runtime (docs/FORMAT.md, Metadata)."""

import numpy as np
import pytest
from PIL import Image
from toy_model import build_toy_model

pytest.importorskip("tf2onnx")

import keras  # noqa: E402
from keras import layers  # noqa: E402
from keras.applications.imagenet_utils import preprocess_input  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mcdrop import cli  # noqa: E402
from mcdrop.export import PREPROCESS_MODES, UNKNOWN_PREPROCESS, export_model, image_preprocessing  # noqa: E402
from mcdrop.runtime.errors import ExportError, ModelFileError  # noqa: E402
from mcdrop.runtime.input_files import load_inputs  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

pytestmark = pytest.mark.slow

SIZE = 8  # the image is written at the model's size: no resizing between Keras and the runtime
ATOL = 1e-5


def keras_preprocessed(pixels, mode):
    """What a Keras user feeds the model for 0..255 RGB pixels [H, W, 3] in each mode."""
    x = pixels.astype(np.float32)[None]
    if mode == "raw":
        return x
    if mode == "unit":
        return x / np.float32(255)
    return preprocess_input(x.copy(), data_format="channels_last", mode=mode)


def tiny_image_model(name=None, channels=3):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, channels))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    # small weights: even caffe's +-150 inputs leave the softmax unsaturated, so outputs show the pipeline
    x = layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=0.002))(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("preprocess") / "tiny.keras"
    model = tiny_image_model()
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def pixels_png(tmp_path_factory):
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("images") / "random.png"
    Image.fromarray(pixels).save(path)
    return pixels, str(path)


@pytest.mark.parametrize("mode", list(PREPROCESS_MODES))
def test_each_mode_matches_keras_preprocess_input(mode, model_file, pixels_png, tmp_path):
    model, source = model_file
    pixels, png = pixels_png
    report = export_model(source, tmp_path / "m.onnx", preprocess=mode, validate=False)
    session = MCSession(tmp_path / "m.onnx", seed=0)
    assert session.info.preprocessing.mode == mode
    assert f"mode {mode}:" in report.lines()[4] and "(given: --preprocess)" in report.lines()[4]

    _, x = load_inputs([png], session.info)
    expected = keras_preprocessed(pixels, mode)
    np.testing.assert_allclose(x, expected, rtol=0, atol=ATOL)  # the runtime builds Keras's input

    ours = session.predict(x, dropout=False).mean
    theirs = np.asarray(model(expected, training=False))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL)
    if mode != "unit":  # the model tells pipelines apart, so the agreement above means something
        assert np.abs(theirs - np.asarray(model(keras_preprocessed(pixels, "unit"), training=False))).max() > 1e-3


def test_the_name_of_a_keras_application_picks_its_mode(tmp_path, pixels_png):
    model = tiny_image_model(name="mobilenetv2_1.00_224")
    model.save(tmp_path / "named.keras")
    report = export_model(tmp_path / "named.keras", tmp_path / "named.onnx", validate=False)
    line = report.lines()[4]
    assert line == ("  preprocessing: 8x8 rgb, mode tf: x = pixel / 127.5 - 1 "
                    "(from the model's name 'mobilenetv2_1.00_224')")
    info = MCSession(tmp_path / "named.onnx").info
    assert info.metadata["preprocessing"]["mode"] == "tf"
    _, x = load_inputs([pixels_png[1]], info)
    np.testing.assert_allclose(x, keras_preprocessed(pixels_png[0], "tf"), rtol=0, atol=ATOL)


@pytest.mark.parametrize("name, mode", [
    ("resnet50", "caffe"), ("vgg16", "caffe"), ("densenet121", "torch"), ("resnet50v2", "tf"),
    ("inception_v3", "tf"), ("xception", "tf"), ("nasnet_mobile", "tf"), ("mobilenet_1.00_224", "tf"),
    ("efficientnetb0", "raw"), ("efficientnetv2-s", "raw"), ("convnext_tiny", "raw"), ("MobileNetV3Small", "raw"),
])
def test_keras_application_names(name, mode):
    pre, reason = image_preprocessing(tiny_image_model(name=name))
    assert pre["mode"] == mode and name in reason


def test_a_fine_tuned_model_is_known_by_the_base_it_starts_with():
    base = tiny_image_model(name="densenet121")
    outer = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, layers.Dense(2, activation="softmax")])
    pre, reason = image_preprocessing(outer)
    assert pre["mode"] == "torch" and reason == "from the name of the model it starts with, 'densenet121'"


def test_a_leading_rescaling_layer_means_raw_pixels():
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = layers.Dense(2)(layers.Flatten()(layers.Rescaling(1 / 255)(inputs)))
    pre, reason = image_preprocessing(keras.Model(inputs, outputs))
    assert (pre["mode"], pre["scale"], pre["offset"]) == ("raw", 1.0, 0.0)
    assert "Rescaling" in reason and "scales pixels itself" in reason


def test_unknown_models_default_to_unit_and_say_so():
    pre, reason = image_preprocessing(tiny_image_model(name="my_classifier"))
    assert (pre["mode"], pre["scale"], pre["mean"], pre["std"]) == ("unit", 1 / 255, [0.0], [1.0])
    assert reason == UNKNOWN_PREPROCESS and "--preprocess" in reason
    gray, _ = image_preprocessing(tiny_image_model(name="resnet50", channels=1))
    assert gray["mode"] == "unit"  # caffe's per-channel means cannot be what a grayscale model takes


def test_scale_and_offset_still_give_a_custom_pipeline(model_file, tmp_path, pixels_png):
    _, source = model_file
    report = export_model(source, tmp_path / "c.onnx", scale=1 / 127.5, offset=-1.0, validate=False)
    assert "mode custom: x = pixel / 127.5 - 1 (given: --scale/--offset)" in report.lines()[4]
    info = MCSession(tmp_path / "c.onnx").info
    _, x = load_inputs([pixels_png[1]], info)
    expected = pixels_png[0].astype(np.float32) * np.float32(1 / 127.5) + np.float32(-1)
    assert np.array_equal(x[0], expected)


def test_bad_preprocess_options(model_file, tmp_path):
    model, source = model_file
    with pytest.raises(ExportError, match="leave them out with --preprocess tf"):
        image_preprocessing(model, preprocess="tf", scale=1.0)
    with pytest.raises(ExportError, match="not grayscale"):
        image_preprocessing(tiny_image_model(channels=1), preprocess="caffe")
    with pytest.raises(ExportError, match="--image-size"):
        image_preprocessing(keras.Sequential([keras.Input((5,)), layers.Dense(2)]), preprocess="tf")
    for args, fragment in [(["--preprocess", "yolo"], "choose tf, torch, caffe, raw, unit"),
                           (["--preprocess", "tf", "--offset", "0"], "custom pipeline")]:
        result = CliRunner().invoke(cli.app, ["export", str(source), "-o", str(tmp_path / "o.onnx"), *args])
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and fragment in errors[0], result.output
        assert "Traceback" not in result.output and not (tmp_path / "o.onnx").exists()


def test_the_cli_prints_the_pipeline(model_file, tmp_path):
    _, source = model_file
    result = CliRunner().invoke(cli.app, ["export", str(source), "-o", str(tmp_path / "o.onnx"), "--no-validate"])
    assert result.exit_code == 0, result.output
    assert f"  preprocessing: 8x8 rgb, mode unit: x = pixel / 255 ({UNKNOWN_PREPROCESS})" in result.output


# Files from before the per-channel fields, and broken fields: toy models, no Keras ------------

OLD_RGB = {"height": 2, "width": 2, "color_mode": "rgb", "scale": 1 / 127.5, "offset": -1.0}
OLD_GRAY = {"height": 2, "width": 3, "color_mode": "grayscale", "scale": 1 / 255, "offset": 0.0}


def rgb_image(tmp_path, mode="RGB"):
    pixels = np.random.default_rng(1).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    path = tmp_path / f"{mode}.png"
    (image.convert("RGBA") if mode == "RGBA" else image).save(path)
    return pixels.astype(np.float32), str(path)


def test_old_metadata_gives_the_same_numbers_bit_for_bit(tmp_path):
    pixels, png = rgb_image(tmp_path)
    old = MCSession(build_toy_model(tmp_path / "old.onnx", example_shape=(2, 2, 3), preprocessing=OLD_RGB)).info
    pre = old.preprocessing
    assert (pre.channel_order, pre.mean, pre.std, pre.mode) == ("rgb", (0.0,), (1.0,), None)
    _, x = load_inputs([png], old)
    assert np.array_equal(x[0], pixels * np.float32(1 / 127.5) + np.float32(-1.0))  # today's formula
    explicit = {**OLD_RGB, "channel_order": "rgb", "mean": [0.0], "std": [1.0, 1.0, 1.0], "mode": "custom"}
    new = MCSession(build_toy_model(tmp_path / "new.onnx", example_shape=(2, 2, 3), preprocessing=explicit)).info
    assert np.array_equal(load_inputs([png], new)[1], x)


@pytest.mark.parametrize("source", ["RGB", "RGBA", "16-bit grey", "float grey"])
def test_every_decoding_path_gets_channel_order_and_mean_std(source, tmp_path):
    """8-bit, alpha, 16-bit and float images all end in the same normalisation."""
    fields = {"channel_order": "bgr", "mean": [10.0, 20.0, 30.0], "std": [2.0, 4.0, 8.0], "mode": "custom"}
    info = MCSession(build_toy_model(tmp_path / "m.onnx", example_shape=(2, 2, 3),
                                     preprocessing={**OLD_RGB, "scale": 1.0, "offset": 0.0, **fields})).info
    if source in ("RGB", "RGBA"):
        pixels, path = rgb_image(tmp_path, source)
    else:
        grey = np.array([[0, 100], [200, 255]], np.float32)
        path = str(tmp_path / "grey.tif")
        if source == "16-bit grey":
            Image.fromarray((grey * 257).astype(np.uint16)).save(path)
        else:
            Image.fromarray(grey / np.float32(255)).save(path)
        pixels = np.repeat(grey[..., None], 3, axis=2)
    _, x = load_inputs([path], info)
    expected = (pixels[..., ::-1] - np.float32([10, 20, 30])) / np.float32([2, 4, 8])
    np.testing.assert_allclose(x[0], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("fields, fragment", [
    ({"std": [0.0]}, "std must be > 0"),
    ({"std": [1.0, -2.0, 1.0]}, "std must be > 0"),
    ({"mean": [1.0, 2.0]}, "mean must be a list of 1 or 3 numbers"),
    ({"mean": 0.5}, "mean must be a list"),
    ({"std": ["1"]}, "std must be a finite number"),
    ({"channel_order": "gbr"}, "channel_order 'gbr' is not one of rgb, bgr"),
    ({"mode": "tf\x1b[31m"}, "mode must be a short name"),
    ({"mode": 3}, "mode must be a short name"),
])
def test_bad_rgb_fields_are_one_line_errors(fields, fragment, tmp_path):
    path = build_toy_model(tmp_path / "bad.onnx", example_shape=(2, 2, 3), preprocessing={**OLD_RGB, **fields})
    assert_one_line_model_error(path, fragment)


@pytest.mark.parametrize("fields, fragment", [
    ({"channel_order": "bgr"}, "channel_order bgr needs color_mode rgb, not grayscale"),
    ({"mean": [0.1, 0.2, 0.3]}, "mean must be a list of 1 numbers for 1 channel(s)"),
])
def test_bad_grayscale_fields_are_one_line_errors(fields, fragment, tmp_path):
    path = build_toy_model(tmp_path / "bad.onnx", example_shape=(2, 3, 1), preprocessing={**OLD_GRAY, **fields})
    assert_one_line_model_error(path, fragment)


def assert_one_line_model_error(path, fragment):
    with pytest.raises(ModelFileError) as caught:
        MCSession(path)
    message = str(caught.value)
    assert fragment in message and "\n" not in message and "export the model again" in message
    result = CliRunner().invoke(cli.app, ["info", path, "--json"])
    assert result.exit_code == 2 and "Traceback" not in result.output and fragment in result.output, result.output
