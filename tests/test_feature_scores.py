"""Single-pass scores written by `cli.py calibrate` (calibrate/feature_density.py): the feature
distance (Mahalanobis, shared Ledoit-Wolf covariance) and energy / max logit, against numpy and
scikit-learn references, and as measures in predict, the UNCERTAIN rule, evaluate and score."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mcdrop.calibrate.command import calibrate_model
from mcdrop.calibrate.feature_density import (feature_candidates, fit_gaussians, layer_output, ledoit_wolf,
                                              mahalanobis_min, pool)
from mcdrop.evaluate import metrics
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.format.mask_sets import control_feeds
from mcdrop.runtime.session import MCSession

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(0, str(MODELS))
import build_models  # noqa: E402  (the shipped build script: its splits and data sets)

PASSES = 20


def _ood_inputs(eval_img):
    """Inputs unlike any training digit: the build's OOD images, rotated digits and uniform noise."""
    rng = np.random.default_rng(7)
    rotated = np.rot90(eval_img[:80], k=1, axes=(1, 2))
    noise = rng.uniform(0, eval_img.max(), size=(80,) + eval_img.shape[1:]).astype(eval_img.dtype)
    images = np.concatenate([build_models.ood_images(80), rotated, noise])
    return build_models.to_input(images, False)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """models/cnn.onnx calibrated on one half of the held-out digits; the other half and OOD inputs."""
    folder = tmp_path_factory.mktemp("feature_scores")
    images, labels = build_models.digits_28x28()
    _, test_img, _, test_y = build_models.split(images, labels)
    cal_img, cal_y, eval_img, eval_y = build_models.calibration_split(test_img, test_y)
    np.savez(folder / "calibration.npz", x=build_models.to_input(cal_img, False), y=cal_y)
    np.savez(folder / "test.npz", x=build_models.to_input(eval_img, False), y=eval_y)
    ood = _ood_inputs(eval_img)
    np.save(folder / "ood.npy", ood)
    path = folder / "cnn_calibrated.onnx"
    report = calibrate_model(MODELS / "cnn.onnx", path, folder / "calibration.npz", target_accuracy=0.99, passes=10)
    return {"folder": folder, "path": path, "report": report, "cal_x": build_models.to_input(cal_img, False),
            "cal_y": cal_y, "x": build_models.to_input(eval_img, False), "y": eval_y, "ood": ood}


def test_ledoit_wolf_equals_sklearn():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    for n, p in ((40, 60), (300, 8)):  # fewer rows than dimensions, and many
        x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p))
        expected = LedoitWolf(assume_centered=True).fit(x).covariance_
        np.testing.assert_allclose(ledoit_wolf(x), expected, rtol=1e-10, atol=1e-12)


def test_metadata_names_the_layer_and_outputs(calibrated):
    entry = calibrated["report"].calibration["single_pass_scores"]
    assert entry["feature_layer"] == "conv2d_1/Relu:0" and entry["pooled_axes"] == [2, 3]
    assert entry["outputs"] == ["feature_distance", "energy", "max_logit"]
    meta = json.loads({p.key: p.value for p in onnx.load(calibrated["path"]).metadata_props}["mcdrop"])
    assert meta["outputs"][0]["calibration"]["single_pass_scores"]["feature_dim"] == 128


def test_feature_distance_equals_numpy_reference(calibrated):
    """The graph's distance = sklearn's LedoitWolf + numpy Mahalanobis on the graph's own features."""
    from sklearn.covariance import LedoitWolf

    plain = onnx.load(MODELS / "cnn.onnx")
    layer = calibrated["report"].calibration["single_pass_scores"]["feature_layer"]
    assert layer in feature_candidates(plain)
    width = MCSession(MODELS / "cnn.onnx").info.mask_layout.floats_per_pass
    feeds = control_feeds(1, False, None, width)

    def features(x):
        return pool(layer_output(plain, layer, {"input": x, **feeds}))

    f_cal, y = features(calibrated["cal_x"]), calibrated["cal_y"]
    means = np.stack([f_cal[y == k].mean(0) for k in range(10)])
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(f_cal - means[y]).covariance_)
    f = features(calibrated["x"][:50])
    offset = f[:, None, :] - means[None]
    expected = np.einsum("nkd,de,nke->nk", offset, precision, offset).min(-1)
    found = MCSession(calibrated["path"]).run_raw(calibrated["x"][:50], passes=1, stochastic=False)
    np.testing.assert_allclose(found["feature_distance"], expected, rtol=1e-4)


def test_energy_and_max_logit_from_the_logits(calibrated):
    model = onnx.load(MODELS / "cnn.onnx")
    logits_name = next(n.input[0] for n in model.graph.node if n.op_type == "Softmax")
    session = MCSession(MODELS / "cnn.onnx")
    feeds = {"input": calibrated["x"][:30], **control_feeds(1, False, None, session.info.mask_layout.floats_per_pass)}
    logits = layer_output(model, logits_name, feeds).astype(np.float64)
    found = MCSession(calibrated["path"]).run_raw(calibrated["x"][:30], passes=1, stochastic=False)
    top = logits.max(-1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(-1))
    np.testing.assert_allclose(found["energy"], -lse, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(found["max_logit"], top, rtol=1e-5, atol=1e-4)


def test_feature_distance_detects_ood_better_than_the_plain_network(calibrated):
    session = MCSession(calibrated["path"], seed=0)
    inside = session.predict(calibrated["x"], passes=PASSES, dropout=False)
    outside = session.predict(calibrated["ood"], passes=PASSES, dropout=False)
    is_ood = np.r_[np.zeros(len(inside), bool), np.ones(len(outside), bool)]

    def auroc(name):
        if name == "one_minus_confidence":
            return metrics.auroc(np.r_[1 - inside.mean.max(-1), 1 - outside.mean.max(-1)], is_ood)
        return metrics.auroc(np.r_[inside.measures[name], outside.measures[name]], is_ood)

    plain = auroc("one_minus_confidence")
    assert auroc("feature_distance") >= 0.99 and auroc("feature_distance") > plain + 0.02


def test_rule_on_feature_distance(calibrated):
    session = MCSession(calibrated["path"], seed=0)
    x = np.concatenate([calibrated["x"][:40], calibrated["ood"][-40:]])
    prediction = session.predict(x, passes=5, uncertain_if="feature_distance > 200")
    assert np.array_equal(prediction.uncertain, prediction.measures["feature_distance"] > 200)
    assert prediction.uncertain[40:].mean() > 0.9 and prediction.uncertain[:40].mean() < 0.2
    assert prediction.to_dict(0)["measures"]["feature_distance"] == pytest.approx(
        float(prediction.measures["feature_distance"][0]))
    with pytest.raises(InputError, match="does not compute"):  # a file without the scores
        MCSession(MODELS / "cnn.onnx").predict(x[:2], passes=2, uncertain_if="feature_distance > 200").uncertain


def test_evaluate_and_score_report_the_new_scores(calibrated, tmp_path):
    folder = calibrated["folder"]
    done = subprocess.run([sys.executable, "cli.py", "evaluate", calibrated["path"], folder / "test.npz", "--ood",
                           folder / "ood.npy", "--passes", "5", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    for name in ("feature_distance", "energy", "negative_max_logit"):
        assert 0 <= report["deterministic"]["ood_auroc"][name] <= 1
        assert name in report["mc"]["error_auroc"]
    pyarrow = pytest.importorskip("pyarrow.parquet")
    np.save(tmp_path / "x.npy", calibrated["x"][:8])
    done = subprocess.run([sys.executable, "cli.py", "score", tmp_path / "x.npy", "--model", calibrated["path"],
                           "--out", tmp_path / "s.parquet", "--passes", "3"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = pyarrow.read_table(tmp_path / "s.parquet")
    distance = MCSession(calibrated["path"]).run_raw(calibrated["x"][:8], passes=1, stochastic=False)["feature_distance"]
    np.testing.assert_allclose(table.column("feature_distance").to_numpy(), distance, rtol=1e-5)


def test_mlp_dense_features_and_a_refused_layer(tmp_path):
    """An MLP's hidden ReLU output is taken as it is (no pooling); a layer that is no candidate is refused."""
    images, labels = build_models.digits_28x28()
    _, test_img, _, test_y = build_models.split(images, labels)
    cal_img, cal_y, eval_img, _ = build_models.calibration_split(test_img, test_y)
    np.savez(tmp_path / "calibration.npz", x=build_models.to_input(cal_img, True), y=cal_y)
    with pytest.raises(InputError, match="--feature-layer 'dense_1_2/Relu:0'"):  # after a dropout
        calibrate_model(MODELS / "mlp.onnx", tmp_path / "bad.onnx", tmp_path / "calibration.npz", passes=2,
                        feature_layer="dense_1_2/Relu:0")
    assert not (tmp_path / "bad.onnx").exists()
    report = calibrate_model(MODELS / "mlp.onnx", tmp_path / "mlp.onnx", tmp_path / "calibration.npz", passes=2)
    entry = report.calibration["single_pass_scores"]
    assert entry["feature_layer"] == "dense_1/Relu:0" and entry["pooled_axes"] == []
    assert any(line.startswith("feature distance on dense_1/Relu:0") for line in report.lines())
    plain = onnx.load(MODELS / "mlp.onnx")
    feeds = control_feeds(1, False, None, MCSession(MODELS / "mlp.onnx").info.mask_layout.floats_per_pass)
    f_cal = layer_output(plain, "dense_1/Relu:0", {"input": build_models.to_input(cal_img, True), **feeds})
    fitted = fit_gaussians(f_cal, cal_y, 10)
    x = build_models.to_input(eval_img[:20], True)
    expected = mahalanobis_min(layer_output(plain, "dense_1/Relu:0", {"input": x, **feeds}), **fitted)
    found = MCSession(tmp_path / "mlp.onnx").predict(x, passes=2).measures["feature_distance"]
    np.testing.assert_allclose(found, expected, rtol=1e-4)


def test_cli_feature_layer_refused_in_one_line(calibrated, tmp_path):
    done = subprocess.run([sys.executable, "cli.py", "calibrate", MODELS / "cnn.onnx", calibrated["folder"] /
                           "calibration.npz", "-o", tmp_path / "out.onnx", "--feature-layer", "dense_1/Relu:0",
                           "--passes", "2"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --feature-layer 'dense_1/Relu:0': not a ReLU")
    assert not (tmp_path / "out.onnx").exists()


JS_SCORES = """
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
const ort = createRequire(process.argv[1] + "/examples/x.js")("onnxruntime-node");
const { readModelFile, feeds, summarize } = await import(process.argv[1] + "/examples/lib/mcdrop.mjs");
const bytes = readFileSync(process.argv[2]);
const { metadata } = readModelFile(bytes);
const session = await ort.InferenceSession.create(bytes);
const x = Float32Array.from(JSON.parse(readFileSync(0, "utf8")));
const out = await session.run(feeds(ort, { data: x, dims: [4, 28, 28, 1] }, { passes: 1, stochastic: false }, metadata));
const r = summarize(out, metadata, { rule: "feature_distance > 200" });
console.log(JSON.stringify(r.map((p) => [p.feature_distance, p.energy, p.max_logit, p.uncertain])));
"""


def test_js_library_reads_the_single_pass_scores(calibrated):
    from js_support import node, run_node

    node()  # skips (or fails where the examples are required) without node and its modules
    x = np.concatenate([calibrated["x"][:2], calibrated["ood"][-2:]]).astype(np.float32)
    done = run_node(["--input-type=module", "-e", JS_SCORES, ROOT, calibrated["path"]],
                    input=json.dumps(x.reshape(-1).tolist()))
    assert done.returncode == 0, done.stderr
    found = np.array(json.loads(done.stdout), dtype=object)
    expected = MCSession(calibrated["path"]).predict(x, passes=2, uncertain_if="feature_distance > 200")
    for column, name in enumerate(("feature_distance", "energy", "max_logit")):
        np.testing.assert_allclose(found[:, column].astype(float), expected.measures[name], rtol=1e-5)
    assert list(found[:, 3]) == list(expected.uncertain)


def test_calibrated_rule_on_feature_distance_in_the_graph(calibrated, tmp_path):
    """--measure feature_distance: the fitted rule thresholds it, and the graph's uncertain output applies it."""
    path = tmp_path / "rule.onnx"
    report = calibrate_model(MODELS / "cnn.onnx", path, calibrated["folder"] / "calibration.npz", passes=5,
                             measure="feature_distance", target_coverage=0.95)
    assert report.calibration["uncertain_rule"].startswith("feature_distance > ")
    threshold = float(report.calibration["uncertain_rule"].split(">")[1])
    x = np.concatenate([calibrated["x"][:40], calibrated["ood"][-40:]])
    found = MCSession(path).run_raw(x, passes=2, stochastic=True)
    assert np.array_equal(found["uncertain"], found["feature_distance"] > np.float32(threshold))
    assert found["uncertain"][40:].all() and found["uncertain"][:40].mean() < 0.2
    prediction = MCSession(path, seed=0).predict(x, passes=3)
    assert prediction.rule.source == "calibrated" and np.array_equal(prediction.uncertain, found["uncertain"])
