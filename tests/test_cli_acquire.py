"""`cli.py acquire` and acquire_with_session: the pool scored with one shared mask set."""

import json
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from mcdrop import cli
from mcdrop.acquire import acquisition
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.session import MCSession
from conftest import ROOT
from toy_model import build_toy_model

CNN = ROOT / "models" / "cnn.onnx"
PASSES, MASK_SEED = 20, 3
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """40 real digits (scikit-learn's, as the shipped models saw them) and 8 smooth noise images."""
    import sys

    sys.path.insert(0, str(ROOT / "models"))
    import build_models

    images, _ = build_models.digits_28x28()
    digits = build_models.to_input(images[:40], flat=False)
    noise = np.random.default_rng(0).random((8, *digits.shape[1:]), dtype=np.float32)
    x = np.concatenate([digits, noise]).astype(np.float32)
    path = tmp_path_factory.mktemp("pool") / "pool.npy"
    np.save(path, x)
    return path, x


def _samples(x):
    return MCSession(CNN).predict(x, passes=PASSES, masks="shared", mask_seed=MASK_SEED).samples


@pytest.mark.parametrize("strategy", ["bald", "entropy", "variation-ratio", "margin"])
def test_cli_ranks_the_pool_by_the_strategy_on_shared_mask_samples(pool, tmp_path, strategy):
    path, x = pool
    out = tmp_path / "ranking.json"
    result = invoke("acquire", path, "--model", CNN, "--k", 5, "--strategy", strategy, "--passes", PASSES,
                    "--mask-seed", MASK_SEED, "--batch-size", 7, "--out", out)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert (written["strategy"], written["passes"], written["mask_seed"]) == (strategy, PASSES, MASK_SEED)
    scores = acquisition.per_input_scores(_samples(x), strategy)
    expected = sorted(range(len(x)), key=lambda i: (-scores[i], i))[:5]
    assert [row["index"] for row in written["rows"]] == expected
    np.testing.assert_allclose([row["score"] for row in written["rows"]], scores[expected], rtol=1e-6, atol=1e-9)
    assert f"masks shared (seed {MASK_SEED})" in result.output


def test_batchbald_from_the_cli_equals_batchbald_on_the_whole_pool_for_any_batch_size(pool, tmp_path):
    path, x = pool
    rankings = []
    for batch_size in (5, 48):
        out = tmp_path / f"b{batch_size}.csv"
        result = invoke("acquire", path, "--model", CNN, "--k", 3, "--strategy", "batchbald", "--passes", PASSES,
                        "--mask-seed", MASK_SEED, "--batch-size", batch_size, "--out", out)
        assert result.exit_code == 0, result.output
        rankings.append([line.split(",") for line in out.read_text().splitlines()[1:]])
    # Shared masks: the split of the pool changes nothing but float rounding (GEMMs of other sizes).
    assert [row[:3] for row in rankings[0]] == [row[:3] for row in rankings[1]]
    np.testing.assert_allclose([float(r[3]) for r in rankings[0]], [float(r[3]) for r in rankings[1]], rtol=1e-5)
    indices, scores = acquisition.batchbald(_samples(x), 3)
    assert [int(row[1]) for row in rankings[0]] == indices.tolist()
    np.testing.assert_allclose([float(row[3]) for row in rankings[0]], scores, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--strategy", "coreset"], "--strategy 'coreset': choose one of"),
    (["--k", "0"], "--k must be >= 1"),
    (["--k", "49"], "k"),
    (["--out", "ranking.txt"], "write the ranking to .csv or .json"),
    (["--passes", "0"], "--passes must be >= 1"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(pool, tmp_path, args, message):
    path, _ = pool
    result = invoke("acquire", path, "--model", CNN, "--out", tmp_path / "r.csv", *args)
    assert result.exit_code != 0
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error:") and message in error and "Traceback" not in result.output
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "ranking.txt").exists()


def test_a_regression_model_is_refused(tmp_path):
    path = build_toy_model(tmp_path / "regression.onnx", head="regression")
    with pytest.raises(InputError, match="classifiers"):
        acquisition.acquire_with_session(MCSession(path), np.zeros((4, 4), np.float32), 2)


def test_bald_over_100000_inputs_keeps_only_its_top_k(tmp_path):
    """The samples of 100,000 inputs (T=40, 3 classes: 48 MB as float32) are never held at once."""
    session = MCSession(build_toy_model(tmp_path / "toy.onnx"), threads=1)
    x = np.random.default_rng(0).normal(size=(100_000, 4)).astype(np.float32)
    tracemalloc.start()
    try:
        chosen = acquisition.acquire(lambda piece: session.predict(piece, passes=40, keep_samples=True).samples,
                                     x, 10, "bald", batch_size=2048)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(chosen.indices) == 10
    # One slice's predict holds its samples (1 MB) and their measures (runtime/session.py: SAMPLE_COPIES).
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"
