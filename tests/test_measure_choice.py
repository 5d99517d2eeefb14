"""How `calibrate` picks the UNCERTAIN rule's measure (calibrate/measure_choice.py): the halves, the
criterion, cross-fitted feature distances against a scikit-learn reference, and end to end on the
shipped CNN with OOD inputs (every candidate's AUROCs in the report and the metadata)."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mcdrop.calibrate import measure_choice as M
from mcdrop.evaluate import metrics
from mcdrop.runtime.session import MCSession

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(0, str(MODELS))
import build_models  # noqa: E402  (the shipped build script: its data sets)
from cli_runs import run_cli  # noqa: E402



def test_halves_are_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(4), [6, 7, 2, 5])
    first, second = M.halves(y, 3)
    assert sorted(np.r_[first, second].tolist()) == list(range(len(y)))
    for label in range(4):
        assert abs((y[first] == label).sum() - (y[second] == label).sum()) <= 1
    np.testing.assert_array_equal(M.halves(y, 3)[0], first)
    assert not np.array_equal(M.halves(y, 4)[0], first)


def test_choice_by_error_auroc_then_by_the_mean_with_ood():
    wrong = np.array([0, 0, 0, 0, 1, 1], bool)
    inside = {"mutual_information": np.array([0, 1, 2, 3, 4, 5.]),   # ranks errors perfectly
              "feature_distance": np.array([0, 1, 2, 5, 3, 4.]),     # worse on errors
              "energy": np.array([0, 1, 2, 3, 4, 5.])}                 # ties the first: the order decides
    table = M.compare(inside, wrong)
    assert table["mutual_information"]["error_auroc"] == 1.0 and table["feature_distance"]["error_auroc"] == 0.75
    assert M.choose(table, None) == "mutual_information"
    outside = {"mutual_information": np.array([1., 2]), "feature_distance": np.array([9., 9]),
               "energy": np.array([1., 2])}
    table = M.compare(inside, wrong, outside)
    assert table["feature_distance"]["ood_auroc"] == 1.0
    assert table["feature_distance"]["criterion"] == pytest.approx((0.75 + 1.0) / 2)
    assert table["mutual_information"]["criterion"] == pytest.approx((1.0 + metrics.auroc(
        np.r_[inside["mutual_information"], 1, 2], np.r_[np.zeros(6, bool), True, True])) / 2)
    assert M.choose(table, None) == "feature_distance"
    assert M.choose(table, "energy") == "energy"  # --measure wins over the criterion
    no_errors = M.compare(inside, np.zeros(6, bool))
    assert M.choose(no_errors, None) == M.FALLBACK and no_errors["energy"]["criterion"] is None


def test_feature_distances_are_cross_fitted_against_sklearn():
    """Each input's distance comes from the density of the other half (sklearn LedoitWolf + numpy);
    in-sample distances, which the rule would otherwise be fitted on, are smaller."""
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    features = rng.normal(size=(60, 12)) + y[:, None]
    parts = M.halves(y, 0)
    distance, _ = M.cross_fitted(features, y, parts, 3)
    for rows, other in ((parts[0], parts[1]), (parts[1], parts[0])):
        means = np.stack([features[other][y[other] == k].mean(0) for k in range(3)])
        precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(features[other] - means[y[other]]).covariance_)
        offset = features[rows][:, None] - means[None]
        expected = np.einsum("nkd,de,nke->nk", offset, precision, offset).min(-1)
        np.testing.assert_allclose(distance[rows], expected, rtol=1e-8)
    means = np.stack([features[y == k].mean(0) for k in range(3)])
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(features - means[y]).covariance_)
    offset = features[:, None] - means[None]
    in_sample = np.einsum("nkd,de,nke->nk", offset, precision, offset).min(-1)
    assert in_sample.mean() < 0.9 * distance.mean()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """80 held-out digits to calibrate on and 40 OOD inputs (the build's letters, photos and noise)."""
    folder = tmp_path_factory.mktemp("measure_choice")
    images, labels = build_models.digits_28x28()
    _, test_img, _, test_y = build_models.split(images, labels)
    np.savez(folder / "calibration.npz", x=build_models.to_input(test_img[:80], False), y=test_y[:80])
    np.save(folder / "ood.npy", build_models.to_input(build_models.ood_images(40), False))
    return folder


def calibration_of(path):
    meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["mcdrop"])
    return meta["outputs"][0]["calibration"]


def test_calibrate_chooses_the_measure_with_every_candidates_aurocs(digits, tmp_path):
    done = run_cli("calibrate", MODELS / "cnn.onnx", digits / "calibration.npz", "-o", tmp_path / "c.onnx",
                   "--ood", digits / "ood.npy", "--target-coverage", 0.9, "--passes", 4)
    assert done.returncode == 0, done.stderr
    choice = calibration_of(tmp_path / "c.onnx")["measure_choice"]
    assert set(choice["candidates"]) == set(M.CANDIDATES) and not choice["given"]
    assert choice["ood_inputs"] == 40 and choice["inputs"] == 80
    for row in choice["candidates"].values():
        assert 0 <= row["error_auroc"] <= 1 and 0 <= row["ood_auroc"] <= 1
        assert row["criterion"] == pytest.approx((row["error_auroc"] + row["ood_auroc"]) / 2)
    best = max(row["criterion"] for row in choice["candidates"].values())
    assert choice["candidates"][choice["chosen"]]["criterion"] == best
    rule = calibration_of(tmp_path / "c.onnx")["uncertain_rule"]
    assert rule.startswith(choice["chosen"])
    assert "feature_distance" in done.stdout and "OOD AUROC" in done.stdout and "cross-fitted" in done.stdout
    assert calibration_of(tmp_path / "c.onnx")["achieved"]["coverage"] >= 0.9


def test_given_max_logit_gives_a_less_than_rule_the_graph_agrees_with(digits, tmp_path):
    done = run_cli("calibrate", MODELS / "cnn.onnx", digits / "calibration.npz", "-o", tmp_path / "m.onnx",
                   "--measure", "max_logit", "--target-coverage", 0.8, "--passes", 4)
    assert done.returncode == 0, done.stderr
    calibration = calibration_of(tmp_path / "m.onnx")
    assert calibration["uncertain_rule"].startswith("max_logit < ")
    assert calibration["measure_choice"]["given"] and calibration["measure_choice"]["chosen"] == "max_logit"
    assert "ood_auroc" in calibration["measure_choice"]["candidates"]["energy"]
    x = np.load(digits / "calibration.npz")["x"]
    session = MCSession(tmp_path / "m.onnx", seed=0)
    prediction = session.predict(x, dropout=False)  # a graph's single-pass scores are the deterministic pass's
    threshold = float(calibration["uncertain_rule"].split("< ")[1])
    np.testing.assert_array_equal(prediction.uncertain, prediction.measures["max_logit"] < threshold)
    graph = session.run_raw(x, passes=1, stochastic=False)["uncertain"].reshape(-1)
    assert (graph != prediction.uncertain).sum() <= 1  # float32 ties at the threshold
    assert 0.1 < prediction.uncertain.mean() < 0.35


def test_ood_for_a_sigmoid_head_is_refused(tmp_path):
    from toy_model import build_toy_model

    path = build_toy_model(tmp_path / "binary.onnx", "binary")
    np.savez(tmp_path / "data.npz", x=np.zeros((6, 4), np.float32), y=np.array([0, 1] * 3))
    np.save(tmp_path / "ood.npy", np.zeros((3, 4), np.float32))
    done = run_cli("calibrate", path, tmp_path / "data.npz", "-o", tmp_path / "b.onnx", "--ood", tmp_path / "ood.npy")
    assert done.returncode != 0 and "Traceback" not in done.stderr and "--ood" in done.stderr
    assert not (tmp_path / "b.onnx").exists()
