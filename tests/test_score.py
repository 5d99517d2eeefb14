"""`cli.py score` with the local engine: one Parquet row per input, equal to MCSession.predict with
the same shared mask set, whatever the batch size or thread count; bad inputs as error rows or a
one-line stop; --resume after a crash; memory bounded for 100,000 inputs."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from mcdrop import cli
from mcdrop.runtime import scoring
from mcdrop.runtime.scoring import ScoreOptions, read_scores, score_local
from mcdrop.runtime.session import MCSession
from mcdrop.runtime.sources import plan_inputs
from conftest import ROOT

MLP, CNN = ROOT / "models" / "mlp.onnx", ROOT / "models" / "cnn.onnx"
PASSES, MASK_SEED = 20, 11
FLOATS = ("confidence", "margin", "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits():
    """Real digits as the shipped models saw them: uint8 images and the CNN's inputs."""
    sys.path.insert(0, str(ROOT / "models"))
    import build_models

    images, _ = build_models.digits_28x28()
    return images[:300], build_models.to_input(images[:300], flat=False).astype(np.float32)


@pytest.fixture(scope="module")
def digits_npy(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("digits") / "digits.npy"
    np.save(path, digits[1])
    return path


@pytest.fixture(scope="module")
def flat_npy(digits, tmp_path_factory):
    """The same digits for the MLP ([batch, 784])."""
    path = tmp_path_factory.mktemp("flat") / "flat.npy"
    np.save(path, digits[1].reshape(len(digits[1]), -1))
    return path


def assert_same_rows(a: pa.Table, b: pa.Table, atol=2e-6):
    """Row for row: identity, labels and flags exactly, numbers to float32 GEMM rounding."""
    assert a.column_names == b.column_names
    for name in ("index", "id", "label", "uncertain", "mask_seed", "passes", "error"):
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    scored = [i for i, error in enumerate(a.column("error").to_pylist()) if error is None]  # error rows: nulls
    for name in ("mean", "variance"):
        np.testing.assert_allclose(np.stack(a.column(name).to_numpy(zero_copy_only=False)[scored]),
                                   np.stack(b.column(name).to_numpy(zero_copy_only=False)[scored]), atol=atol)
    for name in FLOATS:
        if name in a.column_names:
            assert a.column(name).null_count == b.column(name).null_count == len(a) - len(scored)
            np.testing.assert_allclose(a.column(name).to_numpy(zero_copy_only=False)[scored].astype(float),
                                       b.column(name).to_numpy(zero_copy_only=False)[scored].astype(float),
                                       atol=atol * 10)


def test_rows_equal_predict_with_the_same_shared_mask_set(digits_npy, digits, tmp_path):
    out = tmp_path / "scores.parquet"
    result = invoke("score", digits_npy, "--model", CNN, "--out", out, "--passes", PASSES, "--mask-seed", MASK_SEED)
    assert result.exit_code == 0, result.output
    assert f"masks shared (seed {MASK_SEED})" in result.output
    table = pq.read_table(out)
    expected = MCSession(CNN).predict(digits[1], passes=PASSES, masks="shared", mask_seed=MASK_SEED)
    n = len(digits[1])
    assert table.column("index").to_pylist() == list(range(n))
    assert table.column("id").to_pylist() == [f"{digits_npy}[{i}]" for i in range(n)]
    np.testing.assert_allclose(np.stack(table.column("mean").to_numpy(zero_copy_only=False)), expected.mean, atol=2e-6)
    np.testing.assert_allclose(np.stack(table.column("variance").to_numpy(zero_copy_only=False)), expected.variance,
                               atol=2e-6)
    for name in FLOATS:
        np.testing.assert_allclose(table.column(name).to_numpy(), expected.measures[name], atol=2e-5, err_msg=name)
    assert table.column("label").to_pylist() == [str(v) for v in expected.measures["label_name"]]
    assert table.column("uncertain").to_pylist() == expected.uncertain.tolist()
    assert set(table.column("mask_seed").to_pylist()) == {MASK_SEED}
    assert set(table.column("passes").to_pylist()) == {PASSES}
    assert table.column("error").null_count == n
    # The labels are right for most real digits (the rows are not shuffled).
    assert np.mean(np.array(table.column("label").to_pylist(), int) == build_labels()[:n]) > 0.9


def build_labels():
    sys.path.insert(0, str(ROOT / "models"))
    import build_models

    return build_models.digits_28x28()[1]


@pytest.mark.parametrize("batch_size, threads", [(7, 1), (64, 2), (300, 2)])
def test_any_batch_size_or_thread_count_gives_the_same_rows(flat_npy, tmp_path, batch_size, threads):
    reference = _score(flat_npy, tmp_path / "reference.parquet", batch_size=32, threads=1)
    other = _score(flat_npy, tmp_path / "other.parquet", batch_size=batch_size, threads=threads)
    assert_same_rows(reference, other)


def _score(inputs, out, batch_size=32, threads=1, model=MLP, **options):
    session = MCSession(model, threads=threads)
    plan = plan_inputs(inputs if isinstance(inputs, list) else [inputs], session.info)
    options = ScoreOptions(passes=PASSES, mask_seed=MASK_SEED, **options)
    summary = score_local(session, plan, out, options, batch_size=batch_size)
    assert summary.rows == plan.total
    return pq.read_table(out)


def test_images_folders_globs_and_lists_keep_their_order_and_ids(digits, digits_npy, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(digits[0][i]).save(images / f"{i:02d}.png")
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "id"], ["images/03.png", "three"], [str(images / "01.png"), "one"]])
    pq.write_table(pa.table({"path": ["images/05.png", "images/00.png"]}), tmp_path / "list.parquet")
    np.savez(tmp_path / "two.npz", x=digits[1][:2])
    inputs = [images, str(images / "0[24].png"), tmp_path / "list.csv", tmp_path / "list.parquet", tmp_path / "two.npz"]
    table = _score([str(p) for p in inputs], tmp_path / "out.parquet", batch_size=4, model=CNN)
    ids = table.column("id").to_pylist()
    assert ids == [str(images / f"{i:02d}.png") for i in range(6)] + [str(images / "02.png"), str(images / "04.png"),
                                                                      "three", "one", "images/05.png", "images/00.png",
                                                                      f"{tmp_path / 'two.npz'}[0]",
                                                                      f"{tmp_path / 'two.npz'}[1]"]
    assert table.column("index").to_pylist() == list(range(len(ids)))
    # An image decodes to the same input as its array: image 0's rows equal the npz row 0's.
    mean = np.stack(table.column("mean").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(mean[0], mean[-2], atol=2e-6)
    np.testing.assert_allclose(mean[3], mean[8], atol=2e-6)  # images/03.png listed as "three"


def test_unreadable_inputs_become_error_rows_or_stop_the_job(digits, tmp_path):
    x = digits[1][:40].copy()
    x[5, 3, 3, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "scores.parquet"
    result = invoke("score", tmp_path / "x.npy", tmp_path / "broken.png", "--model", CNN, "--out", out,
                    "--passes", 5, "--mask-seed", 1, "--batch-size", 8)
    assert result.exit_code == 0, result.output
    assert "(2 could not be read)" in result.output
    table = pq.read_table(out)
    errors = dict(zip(table.column("index").to_pylist(), table.column("error").to_pylist()))
    assert "NaN" in errors[5] and "cannot read image" in errors[40]
    assert sum(e is not None for e in errors.values()) == 2
    bad = table.filter(pa.compute.is_valid(table.column("error")))
    for name in ("label", "confidence", "mean", "mutual_information", "uncertain"):
        assert bad.column(name).null_count == 2, name
    assert table.filter(pa.compute.is_null(table.column("error"))).column("mean").null_count == 0

    stopped = tmp_path / "stopped.parquet"
    result = invoke("score", tmp_path / "x.npy", "--model", CNN, "--out", stopped, "--passes", 5, "--batch-size", 4,
                    "--on-error", "stop")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "NaN" in lines[-1] and "--resume continues" in lines[-1]
    assert "Traceback" not in result.output
    assert not stopped.exists()
    kept = read_scores(scoring.checkpoint_folder(stopped))  # the 4 inputs before the bad batch, for --resume
    assert kept.column("index").to_pylist() == [0, 1, 2, 3]


@pytest.mark.parametrize("args, message", [
    (["--engine", "spark"], "--engine 'spark': choose local or ray"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--measures", "mutual_information,entropy"], "--measures entropy: a softmax head has margin"),
    (["--on-error", "report"], "--on-error 'report': choose one of skip, stop"),
    (["--address", "ray://x:1"], "--address is for --engine ray"),
    (["--passes", "0"], "--passes must be >= 1"),
    (["--mask-seed", "-1"], "mask_seed"),
    (["--output", "digit"], "--output 'digit': the model's outputs are"),
])
def test_bad_options_are_one_line_errors_that_write_nothing(flat_npy, tmp_path, args, message):
    out = tmp_path / "scores.parquet"
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert message in result.output
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.npy", "no such file"),
    (lambda d: d / "nothing*.png", "no file matches"),
    (lambda d: _write(d / "notes.txt", b"x"), "unsupported input '.txt'"),
    (lambda d: _save(d / "wrong.npy", np.zeros((3, 5), np.float32)), "the model expects [batch, 28, 28, 1]"),
    (lambda d: _write(d / "list.csv", b"file,other\na,b\n"), "needs a column named 'path'"),
    (lambda d: _write(d / "list.parquet", b"PAR1 broken"), "cannot read Parquet"),
    (lambda d: _write(d / "torn.npy", np.lib.format.magic(1, 0) + b"\x00"), "cannot read array"),
])
def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, make, message):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = make(inputs)
    out = tmp_path / "scores.parquet"
    result = invoke("score", path, "--model", CNN, "--out", out)
    assert result.exit_code == 2, result.output
    assert message in result.output.strip().splitlines()[-1]
    assert not out.exists() and not scoring.checkpoint_folder(out).exists()


def _write(path, data):
    path.write_bytes(data)
    return path


def _save(path, array):
    np.save(path, array)
    return path


def test_measures_and_samples_columns(flat_npy, digits, tmp_path):
    table = _score(flat_npy, tmp_path / "s.parquet", measures=("mutual_information",), keep_samples=True)
    assert [n for n in table.column_names if n in FLOATS] == ["confidence", "mutual_information"]
    samples = np.array(table.column("samples").to_pylist(), np.float32)  # [inputs, T, classes]
    expected = MCSession(MLP).predict(digits[1].reshape(len(digits[1]), -1), passes=PASSES, masks="shared",
                                      mask_seed=MASK_SEED)
    np.testing.assert_allclose(samples, np.moveaxis(expected.samples, 0, 1), atol=2e-6)


def test_a_job_killed_midway_resumes_to_the_same_file(digits, tmp_path):
    """SIGKILL (no clean-up at all) once the first part file is on disk; --resume finishes it."""
    x = np.tile(digits[1].reshape(len(digits[1]), -1), (100, 1))  # 30,000 MLP inputs
    np.save(tmp_path / "x.npy", x)
    base = [sys.executable, str(ROOT / "cli.py"), "score", str(tmp_path / "x.npy"), "--model", str(MLP),
            "--passes", "10", "--mask-seed", "5", "--batch-size", "512"]
    out = tmp_path / "resumed.parquet"
    parts = scoring.checkpoint_folder(out)
    job = subprocess.Popen(base + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while job.poll() is None and not list(parts.glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before it could be interrupted"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not out.exists()
    written = len(read_scores(parts))
    assert 0 < written < len(x)

    again = subprocess.run(base + ["--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # not started over by accident
    resumed = subprocess.run(base + ["--out", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{written} were done before" in resumed.stdout
    assert not parts.exists()
    whole = tmp_path / "whole.parquet"
    subprocess.run(base + ["--out", str(whole)], check=True, capture_output=True)
    a, b = pq.read_table(out), pq.read_table(whole)
    assert a.column("index").to_pylist() == list(range(len(x)))
    assert_same_rows(a, b)


def test_resume_refuses_another_job(flat_npy, tmp_path):
    out = tmp_path / "s.parquet"
    folder = scoring.checkpoint_folder(out)
    session = MCSession(MLP)
    plan = plan_inputs([flat_npy], session.info)
    scoring.Checkpoint(folder, scoring.job_identity(MLP, plan, ScoreOptions(PASSES, MASK_SEED), "local"), resume=False)
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES + 1, "--resume")
    assert result.exit_code == 2 and "differs in passes" in result.output
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--resume")
    assert result.exit_code == 0, result.output
    assert f"masks shared (seed {MASK_SEED})" in result.output  # the unfinished job's seed, not a fresh one


MEMORY_CHILD = """
import sys, numpy as np
from mcdrop.runtime.scoring import ScoreOptions, score_local
from mcdrop.runtime.session import MCSession
from mcdrop.runtime.sources import plan_inputs

def mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

session = MCSession({model!r}, threads=2, max_chunk_bytes={bound})
plan = plan_inputs([{inputs!r}], session.info)
session.predict(np.zeros((1, 784), np.float32), passes=1)
before = mib("VmRSS")
score_local(session, plan, {out!r}, ScoreOptions(passes=5, mask_seed=0), batch_size=1024)
print(mib("VmHWM") - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from /proc")
def test_100000_inputs_stay_within_max_chunk_bytes_plus_a_constant(tmp_path):
    count, bound = 100_000, 32 * 2**20
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(count, 784))
    x[:] = np.random.default_rng(0).random((1, 784), dtype=np.float32) * np.linspace(0, 1, count)[:, None]
    x.flush()
    del x
    out = tmp_path / "scores.parquet"
    code = MEMORY_CHILD.format(model=str(MLP), bound=bound, inputs=str(tmp_path / "x.npy"), out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    grown = float(done.stdout.split()[-1])
    assert grown <= (bound + scoring.MEMORY_OVERHEAD) / 2**20, f"grew {grown:.0f} MiB"
    assert pq.read_metadata(out).num_rows == count
