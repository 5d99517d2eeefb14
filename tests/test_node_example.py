"""The Node example (examples/node/infer.js, examples/lib/mcdrop.mjs) against the Python runtime.

Skipped without node or without `npm ci` in examples/ (failed instead with
MCDROP_REQUIRE_EXAMPLES=1; tests/js_support.py).
"""

import base64
import json
import math
import re

import numpy as np
import PIL
import pytest
from PIL import Image

from mcdrop.runtime import uncertain_rule as decision
from mcdrop.runtime.image_files import _pixels
from mcdrop.runtime.input_files import load_inputs
from mcdrop.runtime.format.metadata import Preprocessing
from mcdrop.runtime.prediction import Prediction
from mcdrop.runtime.format.seeds import MINSTD_MODULUS, find_seeds
from mcdrop.runtime.session import MCSession
from js_support import (EXAMPLES, INFER_JS, LIVE_ATOL, NODE_TIMEOUT, ROOT, assert_mc_agrees, golden, golden_input,
                        int8_mean_tolerance, node, run_node, start_node)

MODELS = ("models/cnn.onnx", "models/mlp.onnx", "models/cnn_int8.onnx")
CALIBRATED = "models/cnn_calibrated.onnx"
HOOKS = EXAMPLES / "node" / "test"
MC_PASSES = 1000
# Inputs of the Monte Carlo comparison: the uncertain samples, where dropout moves the output most
# (the shipped CNN takes about 1.7 s per input at T=1000 in one Node session).
MC_INPUTS = {"models/cnn.onnx": ["models/samples/ambiguous.png", "models/samples/digit_8.png"],
             "models/mlp.onnx": None}  # None: every sample


@pytest.fixture(scope="module", autouse=True)
def _node_ready():
    node()


@pytest.fixture(scope="module")
def samples():
    return [entry["path"] for entry in golden()["samples"]]


class _Sessions(dict):
    """One Python session per model (seed 0), made when first asked for."""

    def __missing__(self, name):
        self[name] = MCSession(ROOT / name, seed=0)
        return self[name]


@pytest.fixture(scope="module")
def sessions():
    return _Sessions()


def inputs_for(session, paths):
    _, x = load_inputs([str(ROOT / path) for path in paths], session.info)
    return x


def infer(*args, ok=True):
    """infer.js's result: the parsed JSON document with --json, else the completed process."""
    done = run_node([INFER_JS, *args])
    if ok:
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", f"infer.js printed on stderr: {done.stderr!r}"
    return json.loads(done.stdout) if ok and "--json" in args else done


@pytest.fixture(scope="module")
def node_deterministic(samples):
    """infer.js --deterministic --json over every sample, per model."""
    return {name: infer(name, *samples, "--deterministic", "--json") for name in MODELS}


# The acceptance -------------------------------------------------------------------------

def test_digit_3_is_a_3_with_its_uncertainty():
    done = infer("models/cnn.onnx", "models/samples/digit_3.png")
    lines = done.stdout.splitlines()
    assert lines[0] == "model models/cnn.onnx  passes 50"  # the file's default_passes
    assert lines[1].split() == ["input", "label", "confidence", "std", "mutual_information"]
    cells = lines[2].split()
    assert cells[:2] == ["models/samples/digit_3.png", "3"]
    confidence, std, mutual_information = map(float, cells[2:5])
    assert confidence > 0.9 and 0 <= std < 0.2 and 0 <= mutual_information < 0.1
    assert lines[3] == "UNCERTAIN if mutual_information > 0.1 or confidence < 0.6 (default rule)"
    assert done.stderr == ""


# Deterministic pass: Node = Python ---------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_deterministic_pass_equals_python(model, samples, sessions, node_deterministic):
    document = node_deterministic[model]
    assert (document["passes"], document["stochastic"]) == (1, False)
    node_mean = np.array([result["mean"] for result in document["results"]])
    python = sessions[model].predict(inputs_for(sessions[model], samples), dropout=False)
    difference = np.abs(node_mean - python.mean).max()
    print(f"{model}: deterministic pass, max |node - python| = {difference:.2e}")
    assert difference <= LIVE_ATOL
    assert [r["label"] for r in document["results"]] == [python.labels[i] for i in python.mean.argmax(-1)]
    assert all(v == 0 for r in document["results"] for v in r["variance"])
    assert all(r["mutual_information"] == 0 for r in document["results"])


# Golden vectors ----------------------------------------------------------------------------------

def test_golden_file_is_for_these_models():
    import hashlib

    stale = [name for name, entry in golden()["models"].items()
             if hashlib.sha256((ROOT / name).read_bytes()).hexdigest() != entry["sha256"]]
    assert not stale, f"{', '.join(stale)} changed since tests/golden/digits.json was written: run " \
                      "tests/golden/make_golden.py"


def test_preprocessing_gives_the_golden_inputs(samples, sessions):
    tolerance = golden()["tolerances"]["input"]
    want = np.stack([golden_input(entry)[0] for entry in golden()["samples"]])
    for model in ("models/cnn.onnx", "models/mlp.onnx"):
        python = inputs_for(sessions[model], samples)
        np.testing.assert_allclose(python.reshape(want.shape), want, rtol=0, atol=tolerance)
        done = run_node([HOOKS / "preprocess.mjs", model, *samples])
        assert done.returncode == 0, done.stderr
        node_inputs = json.loads(done.stdout)["inputs"]
        assert [x["dims"] for x in node_inputs] == [[1, *python.shape[1:]]] * len(samples)
        np.testing.assert_allclose(np.array([x["data"] for x in node_inputs]).reshape(want.shape), want,
                                   rtol=0, atol=tolerance)
        assert np.array_equal(np.array([x["data"] for x in node_inputs], np.float32).reshape(python.shape), python)


def check_golden_means(means, model):
    """means [samples, classes] against the recorded ones, within the file's tolerances."""
    tolerances = golden()["tolerances"]
    recorded = np.array([entry["means"][model] for entry in golden()["samples"]])
    if "int8" in model:
        # A few quantization steps of the file (tests/js_support.py), not one machine's differences.
        assert tolerances["mean_int8"] == pytest.approx(int8_mean_tolerance(ROOT / model), rel=1e-6)
        assert np.abs(means - recorded).max() <= tolerances["mean_int8"]
        top2 = np.sort(recorded, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > tolerances["int8_same_label_margin"]
        assert (means.argmax(-1) == recorded.argmax(-1))[clear].all()
    else:
        assert np.abs(means - recorded).max() <= tolerances["mean"]


@pytest.mark.parametrize("model", MODELS)
def test_golden_means_hold_for_python(model, samples, sessions):
    x = np.stack([golden_input(entry)[0] for entry in golden()["samples"]])
    session = sessions[model]
    check_golden_means(session.predict(x.reshape((len(x), *session.info.input_shape[1:])), dropout=False).mean, model)


@pytest.mark.parametrize("model", MODELS)
def test_golden_means_hold_for_node(model, node_deterministic):
    check_golden_means(np.array([r["mean"] for r in node_deterministic[model]["results"]]), model)


# Monte Carlo: Node's samples are Python's distribution --------------------------------------------

@pytest.mark.parametrize("model", list(MC_INPUTS))
def test_monte_carlo_agrees_with_python(model, samples, sessions):
    paths = MC_INPUTS[model] or samples
    running = start_node([INFER_JS, model, *paths, "--passes", str(MC_PASSES), "--samples", "--json"])
    python = sessions[model].predict(inputs_for(sessions[model], paths), passes=MC_PASSES)  # meanwhile
    out, err = running.communicate(timeout=NODE_TIMEOUT)
    assert running.returncode == 0 and err == "", err
    document = json.loads(out)
    node_samples = np.array([r["samples"] for r in document["results"]]).transpose(1, 0, 2)  # [T, B, classes]
    assert node_samples.shape == (MC_PASSES, len(paths), 10)
    worst = assert_mc_agrees(node_samples, python.samples)
    print(f"{model}: T={MC_PASSES}, worst z {worst}")
    # Node's summary of its own samples is the Python runtime's summary of the same samples.
    again = Prediction.from_samples(node_samples, "softmax", labels=python.labels, rule=decision.default_rule("softmax"))
    for i, result in enumerate(document["results"]):
        assert result["label"] == again.labels[int(again.measures["label"][i])]
        for name in ("confidence", "predictive_entropy", "expected_entropy", "mutual_information"):
            assert result[name] == pytest.approx(float(again.measures[name][i]), abs=1e-6), name
        np.testing.assert_allclose(result["mean"], again.mean[i], atol=1e-6)
        np.testing.assert_allclose(result["variance"], again.variance[i], atol=1e-6)
        assert result["uncertain"] == bool(again.uncertain[i])


# Seeds ------------------------------------------------------------------------------------------

def test_fresh_seeds_per_launch_and_reproducible_with_a_seed():
    def draws(*extra):
        document = infer("models/cnn.onnx", "models/samples/digit_8.png", "--passes", "20", "--samples", "--json", *extra)
        return np.array(document["results"][0]["samples"])

    unseeded = [draws(), draws()]
    assert not np.array_equal(*unseeded), "two launches without --seed drew the same dropout masks"
    seeded = [draws("--seed", "7"), draws("--seed", "7")]
    assert np.array_equal(*seeded)
    assert not np.array_equal(seeded[0], draws("--seed", "8"))
    assert unseeded[0].std(axis=0).max() > 0  # the samples vary at all


def _discrete_log(value: int, multiplier: int) -> int:
    """k with multiplier**k = value mod minstd's modulus (baby-step giant-step)."""
    order = MINSTD_MODULUS - 1
    m = math.isqrt(order) + 1
    baby = {}
    power = 1
    for j in range(m):
        baby.setdefault(power, j)
        power = power * multiplier % MINSTD_MODULUS
    giant = pow(multiplier, order - m, MINSTD_MODULUS)  # multiplier**-m
    gamma = value
    for i in range(m):
        if gamma in baby:
            return (i * m + baby[gamma]) % order
        gamma = gamma * giant % MINSTD_MODULUS
    raise AssertionError(f"{value} is not a power of {multiplier}")


@pytest.mark.parametrize("multiplier", [16807, 48271])  # onnxruntime-node, onnxruntime-web's wasm
def test_seed_rewrite_touches_only_the_seeds(multiplier):
    model = ROOT / "models" / "cnn.onnx"
    done = run_node([HOOKS / "seeds.mjs", model, "11", str(multiplier)])
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    python = find_seeds(model.read_bytes())
    assert found["rewrittenLength"] == found["length"] == model.stat().st_size
    assert [(n["seedOffset"], n["seed"]) for n in found["randomNodes"]] == python
    seed_bytes = {offset + i for offset, _ in python for i in range(4)}
    assert set(found["changed"]) <= seed_bytes
    assert all(any(offset + i in found["changed"] for i in range(4)) for offset, _ in python)
    seeds = found["seeds"]
    assert found["again"] == seeds  # the same seed, the same seeds
    assert all(float(np.float32(s)) == s and s == int(s) and 1 <= s < MINSTD_MODULUS for s in seeds)
    # Spread around the cycle as runtime/format/seeds.py does: stream j in the j-th of n arcs.
    arc = (MINSTD_MODULUS - 1) // len(seeds)
    positions = [_discrete_log(int(s), multiplier) for s in seeds]
    for j, position in enumerate(positions):
        assert round(((position - positions[0]) % (MINSTD_MODULUS - 1)) / arc) == j


# Passes, stochastic, rules ----------------------------------------------------------------------

def test_passes_and_stochastic_can_be_set():
    seven = infer("models/mlp.onnx", "models/samples/digit_7.png", "models/samples/digit_8.png", "--passes", "7",
                  "--samples", "--json")
    assert (seven["passes"], seven["stochastic"]) == (7, True)
    assert [np.shape(r["samples"]) for r in seven["results"]] == [(7, 10), (7, 10)]
    assert any(v > 0 for r in seven["results"] for v in r["variance"])
    off = infer("models/mlp.onnx", "models/samples/digit_8.png", "--passes", "7", "--deterministic", "--samples", "--json")
    assert (off["passes"], off["stochastic"]) == (1, False)
    assert np.shape(off["results"][0]["samples"]) == (1, 10)
    assert all(v == 0 for v in off["results"][0]["variance"])


def test_calibrated_file_shows_its_rule(sessions):
    rule = decision.file_rule(sessions[CALIBRATED].info.model_outputs[0].calibration, "softmax")
    assert rule.source == "calibrated"
    done = infer(CALIBRATED, "models/samples/ambiguous.png", "models/samples/digit_3.png")
    assert done.stdout.splitlines()[-1] == f"UNCERTAIN if {rule} (calibrated rule)"
    assert "conformal set" in done.stdout.splitlines()[1]
    document = infer(CALIBRATED, "models/samples/digit_3.png", "--json")
    assert (document["rule"], document["rule_source"]) == (str(rule), "calibrated")
    overridden = infer(CALIBRATED, "models/samples/digit_3.png", "--json", "--rule", "confidence<0.99,margin < 1e-5")
    assert (overridden["rule"], overridden["rule_source"]) == ("confidence < 0.99 or margin < 1e-05", "override")
    if all(c.measure in decision.SINGLE_PASS_MEASURES for c in rule.conditions):  # the verdict needs no MC
        paths = [f"models/samples/{name}.png" for name in ("ambiguous", "digit_3", "digit_7", "digit_8", "not_a_digit")]
        found = infer(CALIBRATED, *paths, "--json", "--passes", "4")
        python = sessions[CALIBRATED].predict(inputs_for(sessions[CALIBRATED], paths), passes=4)
        assert [r["uncertain"] for r in found["results"]] == python.uncertain.tolist()


def test_rules_and_measures_match_the_python_runtime(sessions):
    """Every measure a rule may name, on the same samples, in Node's summarize and in Python."""
    metadata = sessions["models/cnn.onnx"].info.metadata
    x = inputs_for(sessions["models/cnn.onnx"], [e["path"] for e in golden()["samples"]])
    # Independent masks: with a shared set an input and its copy get equal values, and a median
    # threshold would fall on one of them, where float rounding decides.
    samples = sessions["models/cnn.onnx"].predict(np.concatenate([x, x]), passes=30, masks="independent").samples
    python = Prediction.from_samples(samples, "softmax", labels=metadata["labels"])
    rules = [None]  # the file's (default) rule
    for measure in decision.RULE_MEASURES["categorical"]:
        values = decision.measure_value(python, measure)
        rules.append(f"{measure} > {float(np.median(values)):.9g}")
        rules.append(f"{measure} < {float(np.median(values)):.9g}")
    rules += ["never", "mutual_information > 0.1 or confidence < 0.6", "variation_ratio>0.5,margin<0.2"]
    request = {"metadata": metadata, "samples": {"dims": list(samples.shape), "data": samples.ravel().tolist()},
               "rules": rules}
    done = run_node([HOOKS / "summarize.mjs"], input=json.dumps(request))
    assert done.returncode == 0, done.stderr
    for text, result in zip(rules, json.loads(done.stdout)["results"]):
        rule = decision.default_rule("softmax") if text is None else decision.Rule.parse(text, "softmax")
        assert result["ruleText"] == str(rule)
        assert result["ruleSource"] == ("default" if text is None else "override")
        flagged = decision.Rule(rule.conditions).evaluate(python)
        assert [r["uncertain"] for r in result["inputs"]] == flagged.tolist(), text
    for i, r in enumerate(json.loads(done.stdout)["results"][0]["inputs"]):
        for name in ("confidence", "margin", "predictive_entropy", "expected_entropy", "mutual_information",
                     "variation_ratio"):
            assert r[name] == pytest.approx(float(python.measures[name][i]), abs=1e-6), name
        assert r["std"] == pytest.approx(float(python.measures["std"][i][python.measures["label"][i]]), abs=1e-6)
    bad = run_node([HOOKS / "summarize.mjs"], input=json.dumps({**request, "rules": ["entropy > 1", "confidence >", "margin < inf"]}))
    assert [r.get("error", "")[:24] for r in json.loads(bad.stdout)["results"]] == [
        "uncertain rule: a catego", "uncertain rule \"confiden", "uncertain rule: margin <"]


def test_standard_errors_match_the_python_runtime(sessions):
    """Node's summarize gives each measure's Monte Carlo standard error as Prediction does."""
    metadata = sessions["models/cnn.onnx"].info.metadata
    x = inputs_for(sessions["models/cnn.onnx"], [e["path"] for e in golden()["samples"]])
    samples = sessions["models/cnn.onnx"].predict(x, passes=30, mask_seed=11).samples
    python = Prediction.from_samples(samples, "softmax", labels=metadata["labels"])
    request = {"metadata": metadata, "samples": {"dims": list(samples.shape), "data": samples.ravel().tolist()},
               "rules": [None]}
    done = run_node([HOOKS / "summarize.mjs"], input=json.dumps(request))
    assert done.returncode == 0, done.stderr
    errors = python.standard_errors
    assert (errors["mutual_information"] > 0).any()  # not a batch where every error is 0
    for i, r in enumerate(json.loads(done.stdout)["results"][0]["inputs"]):
        for name in ("confidence", "margin", "predictive_entropy", "expected_entropy", "mutual_information",
                     "variation_ratio"):
            assert r[f"{name}_se"] == pytest.approx(float(errors[name][i]), abs=1e-6), name
        np.testing.assert_allclose(r["mean_se"], errors["mean"][i], atol=1e-6)
        np.testing.assert_allclose(r["variance_se"], errors["variance"][i], atol=1e-6)
        assert r["std_se"] == pytest.approx(float(errors["std"][i][python.measures["label"][i]]), abs=1e-6)


# Bad input: one line, no stack trace ------------------------------------------------------------

def _not_mcdrop_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("case", ["missing image", "not a png", "model is a png", "not an mcdrop model",
                                  "truncated model", "passes zero", "passes text", "bad rule", "seed negative"])
def test_bad_input_is_one_line(case, tmp_path):
    image, model = "models/samples/digit_3.png", "models/cnn.onnx"
    extra = []
    if case == "missing image":
        image = str(tmp_path / "missing.png")
    elif case == "not a png":
        image = tmp_path / "text.png"
        image.write_text("not a picture\n")
    elif case == "model is a png":
        model = image
    elif case == "not an mcdrop model":
        model = _not_mcdrop_onnx(tmp_path / "plain.onnx")
    elif case == "truncated model":
        model = tmp_path / "cut.onnx"
        model.write_bytes((ROOT / "models" / "cnn.onnx").read_bytes()[:5000])
    else:
        extra = {"passes zero": ["--passes", "0"], "passes text": ["--passes", "many"],
                 "bad rule": ["--rule", "entropy > 1"], "seed negative": ["--seed", "-1"]}[case]
    done = infer(model, image, *extra, ok=False)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert not re.search(r"\n\s+at ", done.stderr)


@pytest.mark.parametrize("args", [[], ["models/cnn.onnx"], ["models/cnn.onnx", "x.png", "--bogus"],
                                  ["models/cnn.onnx", "x.png", "--passes"]])
def test_usage_errors_exit_2(args):
    done = infer(*args, ok=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "usage:" in done.stderr


# Image preprocessing: Pillow's arithmetic -------------------------------------------------------

# (source width, height, channels, model height, width, colour): upscales and downscales, square
# and not, mixed (one axis up, the other down), grey, grey + alpha, RGB and RGBA.
RESIZES = [(28, 28, 1, 28, 28, "grayscale"), (50, 37, 1, 28, 28, "grayscale"), (13, 9, 3, 28, 28, "grayscale"),
           (100, 61, 4, 28, 28, "grayscale"), (300, 200, 3, 24, 32, "rgb"), (9, 13, 3, 24, 32, "rgb"),
           (61, 100, 2, 28, 28, "grayscale"), (28, 28, 1, 24, 32, "rgb"), (7, 40, 2, 28, 28, "grayscale"),
           (20, 50, 4, 30, 40, "rgb")]


def _vertical_first(sw, sh, tw, th) -> bool:
    """Pillow 13 resamples vertically first here (examples/lib/mcdrop.mjs: resize); older Pillow never."""
    return th < sh and sh - th > 2 * (sw - tw)


def _image(rng, width, height, channels):
    """Smooth gradients, sharp edges and noise, so every tap of the filter counts."""
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 255 // max(width - 1, 1) + 80 * ((x // 3 + y // 4) % 2)) % 256
    pixels = np.stack([(base + 70 * c) % 256 for c in range(channels)], axis=-1)
    pixels[height // 2:] = rng.integers(0, 256, pixels[height // 2:].shape)
    if channels in (2, 4):
        pixels[..., -1] = np.where(rng.random((height, width)) < 0.4, 255, rng.integers(0, 256, (height, width)))
    return pixels.astype(np.uint8)


def test_lanczos_resize_and_alpha_match_pillow():
    rng = np.random.default_rng(0)
    pillow_13 = int(PIL.__version__.split(".")[0]) >= 13
    cases = [c for c in RESIZES if pillow_13 or not _vertical_first(c[0], c[1], c[4], c[3])]
    # Every alpha over every value, composited and not resized: Pillow's alpha_composite exactly.
    every = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), axis=-1).astype(np.uint8)
    images = [_image(rng, w, h, c) for w, h, c, *_ in cases] + [every]
    shapes = [(th, tw, mode) for *_, th, tw, mode in cases] + [(256, 256, "grayscale")]
    request = [{"metadata": {"format": 2, "default_passes": 1, "outputs": [{"head": "softmax"}],
                             "inputs": [{"name": "input", "shape": [None, th, tw, 1 if mode == "grayscale" else 3]}],
                             "preprocessing": {"height": th, "width": tw, "color_mode": mode, "scale": 1.0,
                                               "offset": 0.0, "background": 37.0}},
                "images": [{"data": base64.b64encode(pixels.tobytes()).decode(), "width": pixels.shape[1],
                            "height": pixels.shape[0], "channels": pixels.shape[2]}]}
               for pixels, (th, tw, mode) in zip(images, shapes)]
    done = run_node([HOOKS / "preprocess.mjs"], input=json.dumps(request))
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["inputs"]
    assert all("data" in x for x in outputs), outputs
    worst = 0.0
    for pixels, (th, tw, mode), got in zip(images, shapes, (x["data"] for x in outputs)):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels,
                                {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]])
        want = _pixels("x", image, Preprocessing(height=th, width=tw, color_mode=mode, scale=1.0, offset=0.0,
                                                 background=37.0))
        difference = np.abs(np.array(got, np.float32).reshape(want.shape) - want).max()
        worst = max(worst, difference)
        assert difference <= 1, f"{pixels.shape} -> {tw}x{th} {mode}: {difference} grey levels from Pillow"
    print(f"Lanczos and alpha: worst {worst} grey levels from Pillow {PIL.__version__}")


def test_every_kind_of_png_reads_as_in_python(tmp_path, sessions):
    """Grey, grey + alpha, RGB, RGBA, palette, colour-key transparency and 16-bit PNGs, some resized:
    infer.js's decoding and preprocessing give the Python runtime's input (16-bit: pngjs rounds to
    8 bits where Python keeps floats, so half a grey level)."""
    rng = np.random.default_rng(1)
    digit = np.asarray(Image.open(ROOT / "models/samples/digit_8.png").convert("L"))

    def colour(height=28, width=28):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[..., 0] = np.resize(digit, (height, width))
        return pixels

    alpha = rng.integers(0, 256, digit.shape, dtype=np.uint8)
    images = {
        "grey": (Image.fromarray(digit), {}),
        "grey_alpha": (Image.fromarray(np.stack([digit, alpha], -1), "LA"), {}),
        "grey_key": (Image.fromarray(digit), {"transparency": 0}),
        "rgb": (Image.fromarray(colour()), {}),
        "rgb_key": (Image.fromarray(colour()), {"transparency": (0, 0, 0)}),
        "rgba": (Image.fromarray(np.concatenate([colour(), alpha[..., None]], -1)), {}),
        "palette": (Image.fromarray(colour()).quantize(64), {}),
        "palette_alpha": (Image.fromarray(colour()).quantize(64), {"transparency": 3}),
        "rgb_resized": (Image.fromarray(colour(40, 30)), {}),
        "grey_resized": (Image.fromarray(np.resize(digit, (60, 45))), {}),
        "grey_16": (Image.frombytes("I;16", digit.shape[::-1], (digit.astype(np.uint16) * 257 + rng.integers(
            0, 257, digit.shape)).clip(0, 65535).astype("<u2").tobytes()), {}),
    }
    paths = []
    for name, (image, options) in images.items():
        paths.append(tmp_path / f"{name}.png")
        image.save(paths[-1], **options)
    done = run_node([HOOKS / "preprocess.mjs", "models/cnn.onnx", *paths])
    assert done.returncode == 0, done.stderr
    session = sessions["models/cnn.onnx"]
    for name, path, got in zip(images, paths, json.loads(done.stdout)["inputs"]):
        assert "data" in got, (name, got)
        want = inputs_for(session, [path])
        levels = np.abs(np.array(got["data"], np.float32).reshape(want.shape) - want).max() * 255
        assert levels <= (0.5 + 1e-4 if name == "grey_16" else 0), f"{name}: {levels} grey levels from Python"


# JPEG and array inputs ---------------------------------------------------------------------------

# jpeg-js and Pillow's libjpeg-turbo decode the same file a little differently: another integer
# IDCT, and subsampled chroma repeated where libjpeg interpolates it ("fancy upsampling"). Measured
# on the files below and on crops of scikit-learn's two sample photos: at most 2 grey levels of the
# model input. Sharp colour edges in a 4:2:0 file differ more (4 to 6 levels for a digit drawn in
# the red channel only, 12 on random colour noise): the tolerance is for photograph-like files.
JPEG_LEVELS = 2


def _jpegs(tmp_path):
    digit = np.asarray(Image.open(ROOT / "models/samples/digit_8.png").convert("L"))
    rows, cols = np.mgrid[0:28, 0:28]
    # A digit in every channel (luma) under a smooth colour cast (chroma), as in a photograph.
    smooth = np.stack([digit * 0.8 + rows * 1.5, digit * 0.8 + cols * 1.5, digit * 0.8 + 20], -1).round().astype(np.uint8)
    images = {
        "grey": (Image.fromarray(digit), dict(quality=90)),
        "grey_low_quality": (Image.fromarray(digit), dict(quality=40)),
        "colour_420": (Image.fromarray(smooth), dict(quality=90)),
        "colour_444": (Image.fromarray(smooth), dict(quality=95, subsampling=0)),
        "progressive": (Image.fromarray(smooth), dict(quality=85, progressive=True)),
        "cmyk": (Image.fromarray(smooth).convert("CMYK"), dict(quality=90)),
        "grey_resized": (Image.fromarray(np.resize(digit, (60, 45))), dict(quality=90)),
    }
    paths = {}
    for name, (image, options) in images.items():
        paths[name] = tmp_path / f"{name}.jpg"
        image.save(paths[name], **options)
    return paths


def test_jpeg_reads_as_in_python(tmp_path, sessions):
    """JPEG files through infer.js's decoder and preprocessing: the Python runtime's model input
    (Pillow) within JPEG_LEVELS grey levels, and infer.js's deterministic means equal the Python
    runtime's on the inputs Node made (the decoding is the only difference)."""
    paths = _jpegs(tmp_path)
    session = sessions["models/cnn.onnx"]
    done = run_node([HOOKS / "preprocess.mjs", "models/cnn.onnx", *paths.values()])
    assert done.returncode == 0, done.stderr
    made = []
    for name, got in zip(paths, json.loads(done.stdout)["inputs"]):
        assert "data" in got, (name, got)
        want = inputs_for(session, [paths[name]])
        made.append(np.array(got["data"], np.float32).reshape(want.shape))
        levels = np.abs(made[-1] - want).max() * 255
        print(f"{name}: {levels:.0f} grey levels from Pillow")
        assert levels <= JPEG_LEVELS + 1e-3, f"{name}: {levels} grey levels from Pillow"
    document = infer("models/cnn.onnx", *paths.values(), "--deterministic", "--json")
    assert [r["input"] for r in document["results"]] == [str(p) for p in paths.values()]
    python = session.predict(np.concatenate(made), dropout=False).mean
    assert np.abs(np.array([r["mean"] for r in document["results"]]) - python).max() <= LIVE_ATOL


def _npy_header_dtype(path):
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        return np.lib.format.read_array_header_1_0(f)


@pytest.mark.parametrize("model", ["models/cnn.onnx", "models/mlp.onnx"])
def test_arrays_give_the_golden_means(model, tmp_path):
    """The golden inputs as .npy (float32; float64 big-endian in Fortran order) and as a JSON list
    through infer.js: one result per row, named path[i], the recorded means (the MLP: flat rows,
    as a tabular model takes them)."""
    session = MCSession(ROOT / model, seed=0)
    x = np.stack([golden_input(entry)[0] for entry in golden()["samples"]])
    x = x.reshape((len(x), *session.info.input_shape[1:]))
    paths = [tmp_path / "c.npy", tmp_path / "fortran_big_endian.npy", tmp_path / "rows.json"]
    np.save(paths[0], x)
    np.save(paths[1], np.asfortranarray(x.astype(">f8")))
    paths[2].write_text(json.dumps(x.tolist()))
    assert _npy_header_dtype(paths[1])[1] is True  # the file really is in Fortran order
    document = infer(model, *paths, "--deterministic", "--json")
    assert [r["input"] for r in document["results"]] == [f"{p}[{i}]" for p in paths for i in range(len(x))]
    means = np.array([r["mean"] for r in document["results"]]).reshape(len(paths), len(x), -1)
    for mean in means:
        check_golden_means(mean, model)


@pytest.mark.parametrize("case", ["no batch axis", "wrong shape", "nan", "truncated", "complex", "ragged json",
                                  "string in json", "not json", "empty batch", "deep json"])
def test_bad_arrays_are_one_line(case, tmp_path):
    x = np.zeros((2, 784), np.float32)
    path = tmp_path / ("bad.json" if "json" in case else "bad.npy")
    if case == "no batch axis":
        np.save(path, x[0])
    elif case == "wrong shape":
        np.save(path, np.zeros((2, 28, 28), np.float32))
    elif case == "nan":
        x[1, 5] = np.nan
        np.save(path, x)
    elif case == "truncated":
        np.save(path, x)
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "complex":
        np.save(path, x.astype(np.complex64))
    elif case == "ragged json":
        path.write_text("[[0, 1], [2]]")
    elif case == "string in json":
        path.write_text('[["0"]]')
    elif case == "not json":
        path.write_text("[0, 1")
    elif case == "empty batch":
        np.save(path, np.zeros((0, 784), np.float32))
    elif case == "deep json":
        path.write_text("[" * 100_000 + "]" * 100_000)
    done = infer("models/mlp.onnx", path, ok=False)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), done.stderr
    said = {"no batch axis": "without the batch axis", "wrong shape": "the model expects [batch, 784]",
            "nan": "1 NaN or infinite", "truncated": "truncated", "complex": "real numbers",
            "ragged json": "one length", "string in json": "not a number", "not json": "not JSON",
            "empty batch": "no examples", "deep json": "nested more than"}[case]
    assert said in lines[0], lines[0]
