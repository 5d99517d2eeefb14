"""calibrate/conformal.py, runtime/conformal_sets.py and the graph's conformal outputs: each method's
threshold against a numpy reference written from its paper (MAPIE is not installed), its coverage on
synthetic data with a known distribution (within the finite-sample bound), the graph's sets equal
to numpy's on the same means, calibrate end to end on the toy heads, and one-line errors."""

import json
import math
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from scipy.special import softmax

from conftest import ROOT
from mcdrop.calibrate import conformal as K
from mcdrop.calibrate.graph import add_calibration
from mcdrop.evaluate import metrics
from mcdrop.runtime.conformal_sets import prediction_sets
from mcdrop.runtime.errors import InputError
from toy_model import build_toy_model

ALPHA = 0.1


def reference_quantile(scores, alpha):
    """The ceil((n+1)(1-alpha))/n empirical quantile, no interpolation (Vovk; Romano et al. eq. 6)."""
    n = len(scores)
    level = math.ceil((n + 1) * (1 - alpha)) / n
    return math.inf if level > 1 else float(np.quantile(scores, level, method="inverted_cdf"))


def reference_aps_score(p, y, k_reg=0, penalty=0.0):
    """Romano et al. 2020 (u = 1) / Angelopoulos et al. 2021: the mass of the classes likelier than y
    plus p_y, plus penalty * (rank - k_reg)^+; one input at a time."""
    ranked = sorted(range(len(p)), key=lambda c: (-p[c], c))
    rank = ranked.index(y) + 1
    return float(sum(p[c] for c in ranked[:rank])) + penalty * max(0, rank - k_reg)


def classification(rng, n, classes=6):
    logits = rng.normal(scale=2.0, size=(n, classes))
    y = np.array([rng.choice(classes, p=row) for row in softmax(logits, axis=1)])
    return softmax(1.3 * logits, axis=1), y  # miscalibrated on purpose: conformal does not care


# --- thresholds against the papers -------------------------------------------------------------

def test_aps_and_raps_scores_and_quantiles_match_the_papers():
    rng = np.random.default_rng(1)
    probs, y = classification(rng, 300)
    for k_reg, penalty in ((0, 0.0), (2, 0.1)):
        ours = K.aps_scores(probs, y, k_reg, penalty)
        theirs = np.array([reference_aps_score(p, c, k_reg, penalty) for p, c in zip(probs, y)])
        np.testing.assert_allclose(ours, theirs, atol=1e-5)  # ours sums float32 tails
    entry = K.fit_aps(probs, y, ALPHA)
    assert entry["score_quantile"] == pytest.approx(reference_quantile(K.aps_scores(probs, y), ALPHA))
    # The set: every class whose score is <= the quantile.
    scores = np.array([[reference_aps_score(p, c) for c in range(6)] for p in probs])
    chosen = prediction_sets(entry, probs)["prediction_set"]
    clear = np.abs(scores - entry["score_quantile"]) > 1e-5
    np.testing.assert_array_equal(chosen[clear], (scores <= entry["score_quantile"])[clear])


def test_raps_tunes_on_one_part_and_calibrates_on_the_rest():
    rng = np.random.default_rng(2)
    probs, y = classification(rng, 500)
    entry = K.fit_raps(probs, y, ALPHA, seed=3)
    order = np.random.default_rng(3).permutation(len(y))
    rest = order[entry["tuned_on"]:]
    tuned = order[:entry["tuned_on"]]
    assert entry["k_reg"] == reference_quantile(K.true_class_ranks(probs[tuned], y[tuned]), ALPHA)
    assert entry["penalty"] in K.RAPS_PENALTIES
    scores = [reference_aps_score(p, c, entry["k_reg"], entry["penalty"]) for p, c in zip(probs[rest], y[rest])]
    assert entry["score_quantile"] == pytest.approx(reference_quantile(np.array(scores), ALPHA), abs=1e-5)


def test_mondrian_per_label_normalized_and_risk_thresholds_match_their_definitions():
    rng = np.random.default_rng(4)
    probs, y = classification(rng, 400)
    entry = K.fit_mondrian(probs, y, ALPHA)
    for c in range(6):  # Vovk: each class's LAC quantile from its own inputs
        own = 1 - probs[y == c, c]
        assert entry["class_quantiles"][c] == pytest.approx(min(reference_quantile(own, ALPHA), 1.0), abs=1e-6)
        assert entry["class_counts"][c] == (y == c).sum()
    mean, std = rng.normal(size=(400, 2)), np.exp(rng.normal(size=(400, 2)))
    target = mean + std * rng.standard_t(4, size=(400, 2))
    entry = K.fit_normalized(mean, std, target, ALPHA)
    for j in range(2):
        assert entry["unit_quantiles"][j] == pytest.approx(
            reference_quantile(np.abs(target[:, j] - mean[:, j]) / std[:, j], ALPHA), rel=1e-6)
    p = rng.uniform(size=(400, 4))
    truth = rng.uniform(size=(400, 4)) < p
    entry = K.fit_per_label(p, truth, ALPHA)
    for j in range(4):
        assert entry["label_quantiles"][j] == pytest.approx(reference_quantile(1 - p[truth[:, j], j], ALPHA), abs=1e-6)
    # Conformal risk control (Angelopoulos et al. 2022): the smallest lambda on a fine grid whose
    # (n FNR(lambda) + 1) / (n + 1) <= alpha, FNR brute-forced input by input.
    lam = K.fit_risk(p, truth, ALPHA)["label_quantiles"][0]

    def bound(value):
        kept = 1 - p <= value
        losses = [1 - (kept[i] & truth[i]).sum() / truth[i].sum() if truth[i].any() else 0 for i in range(len(p))]
        return (sum(losses) + 1) / (len(p) + 1)

    assert bound(lam) <= ALPHA < bound(lam - 1e-6)


def test_min_class_count_is_where_coverage_below_the_margin_gets_rare():
    from scipy.stats import beta

    needed = K.min_class_count(ALPHA)
    for n, ok in ((needed, True), (needed - 1, False)):
        rank = math.ceil((n + 1) * (1 - ALPHA))
        assert bool(beta.cdf(1 - ALPHA - K.MARGIN, rank, n + 1 - rank) <= K.RISK) is ok


# --- coverage on synthetic data with a known distribution --------------------------------------

def covered(entry, probs, y, std=None):
    return K.coverage(entry, probs, y, std)[0]


@pytest.mark.parametrize("method", ["aps", "raps", "mondrian"])
def test_class_sets_cover_exchangeable_data_within_the_finite_sample_bound(method):
    rng = np.random.default_rng(5)
    pool, n_cal, splits = 4000, 600, 40
    probs, y = classification(rng, pool, classes=4)
    coverages, by_class = [], []
    for split in range(splits):
        order = rng.permutation(pool)
        cal, test = order[:n_cal], order[n_cal:]
        entry = K.fit(method, ALPHA, probs[cal], y[cal], seed=split)
        hits = covered(entry, probs[test], y[test])
        coverages.append(hits.mean())
        by_class.append([hits[y[test] == c].mean() for c in range(4)])
    # Averaged over splits: k / (n + 1) of the n (raps: its calibration part) scores, within
    # [1 - alpha, 1 - alpha + 1 / (n + 1)], give or take the mean's noise.
    n = n_cal - round(K.RAPS_TUNING_SHARE * n_cal) if method == "raps" else n_cal
    per_class_n = n_cal / 4
    assert 1 - ALPHA - 0.01 <= np.mean(coverages) <= 1 - ALPHA + 1 / (n + 1) + 0.01
    if method == "mondrian":  # each class on its own, with its own (smaller) n
        assert np.mean(by_class, axis=0).min() >= 1 - ALPHA - 0.015
        assert np.mean(by_class, axis=0).max() <= 1 - ALPHA + 1 / (per_class_n * 0.7) + 0.015


def test_mondrian_covers_a_hard_class_that_marginal_lac_leaves_behind():
    rng = np.random.default_rng(6)
    n = 6000
    y = rng.choice(3, size=n, p=[0.475, 0.475, 0.05])
    # Class 2 is rare and hard: its true probability is low, so one marginal quantile skips it.
    confidence = np.where(y == 2, rng.uniform(0.3, 0.5, n), rng.uniform(0.85, 0.99, n))
    probs = np.full((n, 3), 0.0)
    probs[np.arange(n), y] = confidence
    probs[np.arange(n), (y + 1) % 3] = 1 - confidence
    cal, test = slice(0, 3000), slice(3000, None)
    mondrian = covered(K.fit_mondrian(probs[cal], y[cal], ALPHA), probs[test], y[test])
    lac = covered({"method": "lac", "quantile": K.finite(reference_quantile(1 - probs[cal][np.arange(3000), y[cal]],
                                                                            ALPHA))}, probs[test], y[test])
    hard = y[test] == 2
    assert lac[hard].mean() < 1 - ALPHA - 0.05 <= 1 - ALPHA - 0.03 <= mondrian[hard].mean()


def test_normalized_intervals_cover_heteroscedastic_regression():
    rng = np.random.default_rng(7)
    pool, n_cal, splits = 4000, 500, 40
    mean = rng.normal(size=(pool, 1))
    std = np.exp(rng.normal(scale=0.7, size=(pool, 1)))
    target = mean + std * rng.normal(size=(pool, 1))  # the MC std is the noise's scale
    coverages, widths = [], []
    for _ in range(splits):
        order = rng.permutation(pool)
        cal, test = order[:n_cal], order[n_cal:]
        entry = K.fit_normalized(mean[cal], std[cal], target[cal], ALPHA)
        hits, width = K.coverage(entry, mean[test], target[test], std[test])
        coverages.append(hits.mean())
        widths.append(entry["unit_quantiles"][0])
    assert 1 - ALPHA - 0.01 <= np.mean(coverages) <= 1 - ALPHA + 1 / (n_cal + 1) + 0.01
    assert np.mean(widths) == pytest.approx(1.645, abs=0.05)  # the normal's 95% point: std-scaled is exact here


def test_per_label_and_risk_control_hold_for_multilabel_data():
    rng = np.random.default_rng(8)
    pool, n_cal, splits = 4000, 600, 30
    p = rng.beta(0.6, 0.6, size=(pool, 5))
    truth = rng.uniform(size=(pool, 5)) < p
    recalls, fnrs = [], []
    for split in range(splits):
        order = rng.permutation(pool)
        cal, test = order[:n_cal], order[n_cal:]
        sets = prediction_sets(K.fit_per_label(p[cal], truth[cal], ALPHA), p[test])["prediction_set"]
        recalls.append((sets & truth[test]).sum(axis=0) / truth[test].sum(axis=0))
        sets = prediction_sets(K.fit_risk(p[cal], truth[cal], ALPHA), p[test])["prediction_set"]
        present = truth[test].sum(axis=1)
        fnrs.append(np.where(present > 0, 1 - (sets & truth[test]).sum(axis=1) / np.maximum(present, 1), 0).mean())
    assert np.mean(recalls, axis=0).min() >= 1 - ALPHA - 0.01  # every label's recall
    assert ALPHA - 0.02 <= np.mean(fnrs) <= ALPHA + 0.005  # the false negative rate is controlled, not far below


def test_evaluate_reports_coverage_per_class_and_set_size():
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], bool)
    found = metrics.conformal_coverage({"prediction_set": sets}, np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert found["coverage"] == 0.75 and found["mean_set_size"] == 1.25
    assert found["per_class"] == {"a": 1.0, "b": 1.0, "c": 0.5} and found["lowest_class_coverage"] == 0.5
    intervals = {"interval_low": np.array([[0.0], [1.0]]), "interval_high": np.array([[1.0], [2.0]])}
    found = metrics.conformal_coverage(intervals, np.array([[0.5], [3.0]]))
    assert found["coverage"] == 0.5 and found["mean_interval_width"] == 1.0


# --- the graph's sets equal numpy's ------------------------------------------------------------

@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conformal_toys")
    return {head: onnx.load(str(build_toy_model(folder / f"{head}.onnx", head)))
            for head in ("softmax", "multilabel", "regression")}


def run_graph(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {"input": x, "passes": np.array(16, np.int64), "stochastic": np.array(True)}
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("entry", [
    {"method": "aps", "score_quantile": 0.93},
    {"method": "raps", "score_quantile": 0.97, "k_reg": 1, "penalty": 0.05},
    {"method": "mondrian", "class_quantiles": [0.2, 0.5, 0.8]},
])
def test_graph_class_sets_equal_numpy_sets(toys, entry):
    model = onnx.ModelProto()
    model.CopyFrom(toys["softmax"])
    assert add_calibration(model, "", "softmax", 3, conformal=entry) == ["prediction_set"]
    onnx.checker.check_model(model, full_check=True)
    x = (np.random.default_rng(9).normal(size=(400, 4)) * 2).astype(np.float32)
    out = run_graph(model, x)
    expected = prediction_sets(entry, out["mean"])["prediction_set"]
    np.testing.assert_array_equal(out["prediction_set"], expected)
    assert 0 < expected.mean() < 1  # the sets are neither empty nor full: the test tells something


def test_graph_label_sets_and_regression_intervals_equal_numpy(toys):
    model = onnx.ModelProto()
    model.CopyFrom(toys["multilabel"])
    entry = {"method": "per_label", "label_quantiles": [0.3, 0.6, 0.9]}
    add_calibration(model, "", "multilabel", 3, conformal=entry)
    x = (np.random.default_rng(10).normal(size=(200, 4)) * 2).astype(np.float32)
    out = run_graph(model, x)
    np.testing.assert_array_equal(out["prediction_set"], prediction_sets(entry, out["mean"])["prediction_set"])
    model.CopyFrom(toys["regression"])
    entry = {"method": "normalized", "unit_quantiles": [1.5, 2.5]}
    assert add_calibration(model, "", "regression", 2, conformal=entry) == ["interval_low", "interval_high"]
    onnx.checker.check_model(model, full_check=True)
    out = run_graph(model, x)
    expected = prediction_sets(entry, out["mean"], np.sqrt(out["variance"]))
    for name in ("interval_low", "interval_high"):
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-6, atol=1e-6)
    assert (out["interval_high"] > out["interval_low"]).all()


def test_graph_refuses_a_method_for_another_head(toys):
    model = onnx.ModelProto()
    model.CopyFrom(toys["softmax"])
    with pytest.raises(ValueError, match="does not apply to a softmax head"):
        add_calibration(model, "", "softmax", 3, conformal={"method": "normalized", "unit_quantiles": [1.0] * 3})
    with pytest.raises(ValueError, match="3 finite numbers"):
        add_calibration(model, "", "softmax", 3, conformal={"method": "mondrian", "class_quantiles": [0.1]})


# --- calibrate end to end on the toy heads; one-line errors ------------------------------------

def cli(*args):
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conformal_cli")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    files = {}
    for head in ("softmax", "regression"):
        path = build_toy_model(folder / f"{head}.onnx", head)
        mean = run_graph(onnx.load(str(path)), x)["mean"]
        y = mean.argmax(-1) if head == "softmax" else mean + 0.1 * rng.normal(size=mean.shape).astype(np.float32)
        np.savez(folder / f"{head}.npz", x=x, y=y)
        files[head] = path
    return folder, files


def test_calibrate_writes_regression_intervals_that_the_runtime_reads(toy_files):
    from mcdrop.runtime.session import MCSession

    folder, files = toy_files
    out = folder / "regression_calibrated.onnx"
    done = cli("calibrate", files["regression"], folder / "regression.npz", "-o", out, "--conformal", "0.2")
    assert done.returncode == 0, done.stderr
    assert "conformal        normalized, alpha 0.2" in done.stdout and "graph's intervals = the runtime's" in done.stdout
    prediction = MCSession(out, seed=0).predict(np.load(folder / "regression.npz")["x"], passes=16)
    low, high = prediction.measures["interval_low"], prediction.measures["interval_high"]
    assert (low < prediction.mean).all() and (prediction.mean < high).all()
    done = cli("evaluate", out, folder / "regression.npz", "--json")
    assert done.returncode == 0, done.stderr
    assert '"mean_interval_width"' in done.stdout


def test_calibrate_warns_once_when_mondrian_classes_are_small(toy_files):
    folder, files = toy_files
    done = cli("calibrate", files["softmax"], folder / "softmax.npz", "-o", folder / "m.onnx", "--conformal", "0.1",
               "--conformal-method", "mondrian")
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "mondrian" in warned[0] and f"fewer than {K.min_class_count(0.1)}" in warned[0]
    assert "graph's mondrian sets = the runtime's" in done.stdout


@pytest.mark.parametrize("head, options, message", [
    ("softmax", dict(conformal=1.5), "--conformal ALPHA must lie in (0, 1)"),
    ("softmax", dict(conformal=0.0, conformal_method="aps"), "--conformal ALPHA must lie in (0, 1)"),
    ("softmax", dict(conformal=0.1, conformal_method="normalized"), "--conformal-method normalized is for regression"),
    ("regression", dict(conformal=0.1, conformal_method="aps"), "--conformal-method aps is for softmax/logits"),
    ("softmax", dict(conformal=0.1, conformal_method="bogus"), "--conformal-method 'bogus': choose one of"),
    ("softmax", dict(conformal_method="raps"), "--conformal-method raps needs --conformal ALPHA"),
    ("regression", dict(target_accuracy=0.9), "regression head"),
])
def test_bad_conformal_options_are_refused_before_writing(toy_files, head, options, message):
    from mcdrop.calibrate.command import calibrate_model

    folder, files = toy_files
    target = folder / "refused.onnx"
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        calibrate_model(files[head], target, folder / f"{head}.npz", **options)
    assert not target.exists()


def test_a_bad_conformal_option_is_one_line_on_the_command_line(toy_files):
    folder, files = toy_files
    done = cli("calibrate", files["regression"], folder / "regression.npz", "-o", folder / "refused.onnx",
               "--conformal", "0.1", "--conformal-method", "mondrian")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --conformal-method mondrian is for softmax/logits heads")


# --- the JavaScript library reads every categorical method --------------------------------------

def test_js_library_sets_equal_the_python_runtime():
    from js_support import EXAMPLES, run_node

    from mcdrop.runtime.prediction import Prediction

    rng = np.random.default_rng(12)
    samples = softmax(rng.normal(scale=3.0, size=(8, 300, 5)), axis=-1).astype(np.float32)
    mean = Prediction.from_samples(samples, "softmax").mean
    for entry in ({"method": "lac", "quantile": 0.6}, {"method": "mondrian", "class_quantiles": [0.2, 0.4, 0.6, 0.8, 0.5]},
                  {"method": "aps", "score_quantile": 0.9}, {"method": "raps", "score_quantile": 0.95, "k_reg": 1,
                                                                       "penalty": 0.02}):
        metadata = {"outputs": [{"name": "out", "prefix": "", "head": "softmax", "labels": None,
                                 "calibration": {"conformal": entry}}]}
        request = {"metadata": metadata, "samples": {"dims": list(samples.shape), "data": samples.ravel().tolist()},
                   "rules": [None]}
        done = run_node([EXAMPLES / "node" / "test" / "summarize.mjs"], input=json.dumps(request))
        assert done.returncode == 0, done.stderr
        found = [[int(c) for c in r["prediction_set"]] for r in json.loads(done.stdout)["results"][0]["inputs"]]
        expected = prediction_sets(entry, mean)["prediction_set"]
        assert found == [np.flatnonzero(row).tolist() for row in expected], entry["method"]
        assert 0 < expected.mean() < 1


def test_aps_warns_when_its_quantile_sits_in_the_tail_noise():
    from mcdrop.calibrate.conformal_fit import fit_conformal

    probs = np.full((200, 3), 1e-7)
    probs[:, 0] = 1 - 2e-7
    with pytest.warns(UserWarning, match="mask seed"):
        fit_conformal(("aps", ALPHA), probs, np.zeros(200, int), {}, {})
