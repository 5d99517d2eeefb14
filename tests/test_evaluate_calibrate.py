"""`cli.py evaluate` and `cli.py calibrate`, end to end: on the shipped CNN with held-out digits
(the acceptance figures), and on the toy files for the other heads and for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from mcdrop.calibrate import fitting as C
from mcdrop.evaluate import metrics
from mcdrop.runtime.format.mask_sets import control_feeds
from mcdrop.runtime.session import MCSession

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(0, str(MODELS))
import build_models  # noqa: E402  (the shipped build script: its splits and data sets)
from cli_runs import run_cli  # noqa: E402

PASSES = 50



def one_line_error(done, code=2):
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The shipped build's calibration and test halves of the held-out digits, and its OOD set."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = build_models.digits_28x28()
    _, test_img, _, test_y = build_models.split(images, labels)
    cal_img, cal_y, eval_img, eval_y = build_models.calibration_split(test_img, test_y)
    for name, img, y in (("calibration", cal_img, cal_y), ("test", eval_img, eval_y)):
        np.savez(folder / f"{name}.npz", x=build_models.to_input(img, False), y=y)
    np.save(folder / "ood.npy", build_models.to_input(build_models.ood_images(60), False))
    return {"folder": folder, "test_img": eval_img, "test_y": eval_y, "cal_y": cal_y}


# The shipped calibrated file --------------------------------------------------------------------

def test_shipped_calibration_lowers_ece_on_held_out_digits(digits):
    x, y = np.load(digits["folder"] / "test.npz")["x"], digits["test_y"]
    plain, calibrated = MCSession(MODELS / "cnn.onnx", seed=0), MCSession(MODELS / "cnn_calibrated.onnx", seed=0)

    def ece(session, dropout):
        mean = session.predict(x, passes=PASSES, dropout=dropout).mean
        return metrics.expected_calibration_error(mean.max(-1), mean.argmax(-1) == y)

    # The deterministic pass has no randomness: its ECE must drop (0.0204 -> 0.0163 in MODEL_CARD.md).
    assert ece(calibrated, False) < ece(plain, False)
    # The MC mean was close to calibrated already (temperature near 1): no worse beyond MC noise.
    assert ece(calibrated, True) < ece(plain, True) + 0.005


def test_shipped_rule_and_conformal_sets_hold_on_held_out_digits(digits):
    card = json.loads((MODELS / "model_card.json").read_text())["calibration"]
    x, y = np.load(digits["folder"] / "test.npz")["x"], digits["test_y"]
    prediction = MCSession(MODELS / "cnn_calibrated.onnx", seed=0).predict(x, passes=PASSES)
    assert prediction.rule.source == "calibrated" and str(prediction.rule).startswith(card["measure_choice"]["chosen"])
    accepted = ~prediction.uncertain
    correct = prediction.mean.argmax(-1) == y
    target = card["target"]["accuracy"]
    # Within three binomial standard errors of the target over the accepted inputs.
    assert correct[accepted].mean() >= target - 3 * np.sqrt(target * (1 - target) / accepted.sum())
    sets = prediction.measures["prediction_set"]
    alpha = card["conformal"]["alpha"]
    coverage = sets[np.arange(len(y)), y].mean()
    assert coverage >= 1 - alpha - 3 * np.sqrt(alpha * (1 - alpha) / len(y))


def test_calibrated_file_runs_in_a_plain_onnxruntime_session(digits):
    """No mcdrop code: the graph itself returns the calibrated mean and the decision outputs."""
    x = np.load(digits["folder"] / "test.npz")["x"][:16]
    meta = json.loads(onnx.load(str(MODELS / "cnn_calibrated.onnx")).metadata_props[0].value)
    calibration = meta["outputs"][0]["calibration"]
    feed = {"input": x, **control_feeds(1, False)}
    plain = ort.InferenceSession(str(MODELS / "cnn.onnx"), providers=["CPUExecutionProvider"])
    calibrated = ort.InferenceSession(str(MODELS / "cnn_calibrated.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in calibrated.get_outputs()]
    assert {"uncertain", "prediction_set"} <= set(names)
    out = dict(zip(names, calibrated.run(None, feed)))
    expected = C.apply_temperature(plain.run(["samples"], feed)[0], calibration["deterministic_temperature"], "softmax")
    np.testing.assert_allclose(out["mean"], expected[0], atol=1e-5)
    q = calibration["conformal"]["quantile"]
    np.testing.assert_array_equal(out["prediction_set"], out["mean"] >= np.float32(1) - np.float32(q))
    # MC passes run with their own temperature: a stochastic run's mean is a mean of calibrated passes.
    stochastic = dict(zip(names, calibrated.run(None, {**feed, **control_feeds(meta["default_passes"])})))
    np.testing.assert_allclose(stochastic["mean"], stochastic["samples"].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(stochastic["samples"].sum(axis=-1), 1.0, atol=1e-5)


# evaluate ---------------------------------------------------------------------------------------

def test_evaluate_report_writes_json_markdown_and_plots(digits, tmp_path):
    report = tmp_path / "report"
    done = run_cli("evaluate", MODELS / "cnn_calibrated.onnx", digits["folder"] / "test.npz", "--ood",
                   digits["folder"] / "ood.npy", "--passes", 10, "--seed", 0, "--report", report, "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == json.loads((report / "report.json").read_text())
    for mode in ("mc", "deterministic"):
        for key in ("accuracy", "nll", "brier", "ece", "mce", "adaptive_ece"):
            assert 0 <= printed[mode][key] <= 2
        for key in ("aurc", "error_auroc", "error_aupr", "ood_auroc", "ood_aupr", "ood_fpr_at_95_tpr"):
            assert "one_minus_confidence" in printed[mode][key]
    assert set(printed["mc"]["error_auroc"]) == {"mutual_information", "predictive_entropy", "expected_entropy",
                                                 "variation_ratio", "top_class_variance", "one_minus_confidence",
                                                 "feature_distance", "energy", "negative_max_logit"}  # the file's scores
    assert "mutual_information" not in printed["deterministic"]["error_auroc"]  # 0 for one pass: no figure
    assert printed["mc"]["uncertain_rule"]["source"] == "calibrated"
    assert len(printed["mc"]["confusion"]) == 10 and sum(map(sum, printed["mc"]["confusion"])) == len(digits["test_y"])
    # The report's accuracy is the one numpy gives for the same predictions.
    assert printed["mc"]["accuracy"] == pytest.approx(sum(printed["mc"]["confusion"][i][i] for i in range(10))
                                                      / len(digits["test_y"]))
    markdown = (report / "report.md").read_text()
    assert "| ece |" in markdown and "![reliability](reliability.png)" in markdown
    for name in ("reliability", "risk_coverage", "mutual_information", "roc"):
        with Image.open(report / f"{name}.png") as image:
            assert image.format == "PNG" and image.size == (1500, 600)


def test_evaluate_reads_class_folders(digits, tmp_path):
    folder = tmp_path / "classes"
    for i, (img, label) in enumerate(zip(digits["test_img"][:40], digits["test_y"][:40])):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / str(label) / f"{i}.png")
    done = run_cli("evaluate", MODELS / "cnn.onnx", folder, "--passes", 5, "--seed", 0, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["count"] == 40
    assert sum(row["support"] for row in report["mc"]["per_class"].values()) == 40
    assert report["mc"]["accuracy"] > 0.8


def test_evaluate_sigmoid_and_regression_heads(tmp_path):
    from toy_model import build_toy_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    multilabel = build_toy_model(tmp_path / "multilabel.onnx", "multilabel")
    np.savez(tmp_path / "multilabel.npz", x=x, y=rng.integers(0, 2, (200, 3)))
    report = json.loads(run_cli("evaluate", multilabel, tmp_path / "multilabel.npz", "--json", "--seed", 0).stdout)
    assert set(report["mc"]["per_label"]) == {"a", "b", "c"}
    assert {"subset_accuracy", "hamming_loss", "nll"} <= set(report["mc"])
    assert 0 <= report["mc"]["per_label"]["a"]["roc_auc"] <= 1
    regression = build_toy_model(tmp_path / "regression.onnx", "regression")
    np.savez(tmp_path / "regression.npz", x=x, y=rng.normal(size=(200, 2)))
    report = json.loads(run_cli("evaluate", regression, tmp_path / "regression.npz", "--json", "--seed", 0).stdout)
    assert {"rmse", "mae", "gaussian_nll", "coverage_1_sigma", "coverage_2_sigma"} <= set(report["mc"])
    assert "gaussian_nll" not in report["deterministic"]  # one pass has no spread


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((3, 28, 28, 1), np.float32)}, "no array named y"),
    ({"x": np.zeros((3, 28, 28, 1), np.float32), "y": np.array([0, 1, 10])}, "class indices 0..9"),
    ({"x": np.zeros((3, 28, 28, 1), np.float32), "y": np.array([0, 1])}, "2 targets for 3 inputs"),
    ({"x": np.zeros((3, 5), np.float32), "y": np.array([0, 1, 2])}, "the model expects"),
])
def test_evaluate_refuses_bad_data_in_one_line(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    assert message in one_line_error(run_cli("evaluate", MODELS / "cnn.onnx", tmp_path / "bad.npz"))


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs")
def test_evaluate_refuses_a_fifo_instead_of_waiting_on_it(tmp_path):
    import os

    os.mkfifo(tmp_path / "data.npz")
    done = subprocess.run([sys.executable, "cli.py", "evaluate", MODELS / "cnn.onnx", tmp_path / "data.npz"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "not a regular file" in one_line_error(done)


def test_evaluate_refuses_unknown_class_folder_and_bad_rule(tmp_path):
    (tmp_path / "classes" / "seven").mkdir(parents=True)
    Image.new("L", (28, 28)).save(tmp_path / "classes" / "seven" / "a.png")
    assert "'seven' is not one of the model's labels" in one_line_error(
        run_cli("evaluate", MODELS / "cnn.onnx", tmp_path / "classes"))
    assert "no measure 'certainty'" in one_line_error(
        run_cli("evaluate", MODELS / "cnn.onnx", tmp_path / "classes", "--uncertain-if", "certainty > 1"))


# calibrate --------------------------------------------------------------------------------------

def test_calibrating_a_calibrated_file_refits_and_never_stacks(digits, tmp_path):
    first, second = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    data = digits["folder"] / "calibration.npz"
    done = run_cli("calibrate", MODELS / "cnn.onnx", data, "-o", first, "--passes", 10, "--target-coverage", 0.9)
    assert done.returncode == 0, done.stderr
    assert run_cli("calibrate", first, data, "-o", second, "--passes", 10, "--target-coverage", 0.9).returncode == 0
    fitted = [json.loads(onnx.load(str(p)).metadata_props[0].value)["outputs"][0]["calibration"] for p in (first, second)]
    assert fitted[0]["temperature"] == fitted[1]["temperature"]
    assert fitted[0]["uncertain_rule"] == fitted[1]["uncertain_rule"]
    graph = onnx.load(str(second)).graph
    assert sum(init.name.endswith("/temperature") for init in graph.initializer) == 1
    # The rule accepts the target share of the calibration inputs.
    assert fitted[0]["achieved"]["coverage"] == pytest.approx(0.9, abs=0.01)


def test_calibrate_multilabel_writes_thresholds_and_decision_output(tmp_path):
    from toy_model import build_toy_model

    rng = np.random.default_rng(1)
    path = build_toy_model(tmp_path / "multilabel.onnx", "multilabel")
    x = rng.normal(size=(300, 4)).astype(np.float32)
    truth = MCSession(path, seed=0).predict(x, dropout=False).mean > 0.5
    np.savez(tmp_path / "data.npz", x=x, y=(truth ^ (rng.random(truth.shape) < 0.1)).astype(np.int64))
    done = run_cli("calibrate", path, tmp_path / "data.npz", "-o", tmp_path / "calibrated.onnx")
    assert done.returncode == 0, done.stderr
    session = MCSession(tmp_path / "calibrated.onnx", seed=0)
    thresholds = session.info.model_outputs[0].calibration["thresholds"]
    assert len(thresholds) == 3 and all(0 <= t <= 1 for t in thresholds)
    prediction = session.predict(x[:20])
    np.testing.assert_allclose(prediction.measures["thresholds"], thresholds, rtol=1e-6)
    raw = session.run_raw(x[:20], passes=1, stochastic=False)
    np.testing.assert_array_equal(raw["decision"], raw["mean"] >= np.float32(thresholds))


@pytest.mark.parametrize("flags, message", [
    (["--target-accuracy", "1.5"], "--target-accuracy must lie in (0, 1]"),
    (["--target-accuracy", "0.9", "--target-coverage", "0.9"], "not both"),
    (["--conformal", "1"], "--conformal ALPHA must lie in (0, 1)"),
    (["--measure", "confidence"], "--measure 'confidence'"),
])
def test_calibrate_refuses_bad_options_and_writes_nothing(digits, tmp_path, flags, message):
    out = tmp_path / "out.onnx"
    done = run_cli("calibrate", MODELS / "cnn.onnx", digits["folder"] / "calibration.npz", "-o", out, *flags)
    assert message in one_line_error(done)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_calibrate_refuses_a_regression_head(tmp_path):
    from toy_model import build_toy_model

    path = build_toy_model(tmp_path / "regression.onnx", "regression")
    np.savez(tmp_path / "data.npz", x=np.zeros((10, 4), np.float32), y=np.zeros((10, 2)))
    assert "regression head" in one_line_error(run_cli("calibrate", path, tmp_path / "data.npz", "-o", tmp_path / "c.onnx"))
    assert not (tmp_path / "c.onnx").exists()


# infer uses what the file says ------------------------------------------------------------------

def test_infer_names_the_rule_and_shows_conformal_sets():
    done = run_cli("infer", "models/samples/digit_3.png", "models/samples/not_a_digit.png", "--model",
                   MODELS / "cnn_calibrated.onnx", "--seed", 0)
    assert done.returncode == 0, done.stderr
    assert "(calibrated rule)" in done.stdout and "conformal set" in done.stdout and "{3}" in done.stdout
    done = run_cli("infer", "models/samples/not_a_digit.png", "--seed", 0, "--uncertain-if", "never", "--json")
    document = json.loads(done.stdout)
    assert document["uncertain_rule"] == {"rule": "never", "source": "override"}
    assert document["predictions"][0]["uncertain"] is False
    default = json.loads(run_cli("infer", "models/samples/not_a_digit.png", "--json").stdout)["uncertain_rule"]
    assert default == {"rule": "mutual_information > 0.1 or confidence < 0.6", "source": "default"}
