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
from mcdrop.score import checkpoint as checkpoints, local as local_engine, output as score_output
from mcdrop.runtime.errors import InputError
from mcdrop.score.job import ScoreOptions
from mcdrop.score.local import score_local
from mcdrop.score.output import read_scores
from mcdrop.runtime.session import MCSession
from mcdrop.score.input_plan import plan_inputs
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
    kept = read_scores(checkpoints.checkpoint_folder(stopped))  # the 4 inputs before the bad batch, for --resume
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
    assert not out.exists() and not checkpoints.checkpoint_folder(out).exists()


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
    parts = checkpoints.checkpoint_folder(out)
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
    folder = checkpoints.checkpoint_folder(out)
    session = MCSession(MLP)
    plan = plan_inputs([flat_npy], session.info)
    checkpoints.Checkpoint(folder, checkpoints.job_identity(MLP, plan, ScoreOptions(PASSES, MASK_SEED), "local"),
                       resume=False).release()
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES + 1, "--resume")
    assert result.exit_code == 2 and "differs in passes" in result.output
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--resume")
    assert result.exit_code == 0, result.output
    assert f"masks shared (seed {MASK_SEED})" in result.output  # the unfinished job's seed, not a fresh one


MEMORY_CHILD = """
import sys, numpy as np
from mcdrop.score.job import ScoreOptions
from mcdrop.score.local import score_local
from mcdrop.runtime.session import MCSession
from mcdrop.score.input_plan import plan_inputs

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
    assert grown <= (bound + local_engine.MEMORY_OVERHEAD) / 2**20, f"grew {grown:.0f} MiB"
    assert pq.read_metadata(out).num_rows == count


# What score may touch: its own names in OUT.parts, OUT itself when asked ----------------------

ENGINES = ["local", pytest.param("ray", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("ray") is None, reason="the ray extra is not installed"))]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("resume", [[], ["--resume"], ["--overwrite"]])
def test_a_linked_checkpoint_folder_is_refused_and_nothing_behind_it_deleted(flat_npy, tmp_path, engine, resume):
    """The refusals come before a model is loaded or Ray started."""
    precious = tmp_path / "precious"
    precious.mkdir()
    for name in ("notes.txt", ".hidden", "draft.tmp", "part-000000.parquet"):
        (precious / name).write_text("keep me")
    out = tmp_path / "out" / "scores.parquet"
    out.parent.mkdir()
    checkpoints.checkpoint_folder(out).symlink_to(precious)
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--engine", engine, *resume)
    assert result.exit_code == 2, result.output
    assert "is a symbolic link" in result.output.strip().splitlines()[-1] and "Traceback" not in result.output
    assert sorted(p.name for p in precious.iterdir()) == [".hidden", "draft.tmp", "notes.txt", "part-000000.parquet"]
    assert all(p.read_text() == "keep me" for p in precious.iterdir())
    assert not out.exists()


def _checkpoint(flat_npy, out, passes=PASSES):
    """An unfinished job's checkpoint (no process holds it), as a job stopped early leaves it."""
    session = MCSession(MLP)
    plan = plan_inputs([flat_npy], session.info)
    checkpoint = checkpoints.Checkpoint(checkpoints.checkpoint_folder(out),
                                    checkpoints.job_identity(MLP, plan, ScoreOptions(passes, MASK_SEED), "local"), False)
    checkpoint.release()
    return checkpoint.folder


def test_resume_removes_only_its_own_torn_files_and_refuses_a_folder_with_others(flat_npy, tmp_path):
    out = tmp_path / "s.parquet"
    folder = _checkpoint(flat_npy, out)
    (folder / ".part-000000.parquet.tmp").write_bytes(b"PAR1 half a part")  # a part being written at a crash
    (folder / "part-000001.parquet").write_bytes(b"PAR1 torn")  # a part a power cut left unreadable
    (folder / "notes.txt").write_text("mine")
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--resume")
    assert result.exit_code == 2 and "holds 'notes.txt', which score did not write" in result.output
    assert len(list(folder.iterdir())) == 5 and (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--resume")
    assert result.exit_code == 0, result.output
    assert not folder.exists() and pq.read_metadata(out).num_rows == 300


LOCK_HOLDER = """
import sys
from mcdrop.runtime.safe_files import ExclusiveLock
lock = ExclusiveLock(sys.argv[1], "busy")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_writer_is_refused_in_one_line_and_a_dead_owners_lock_is_taken(flat_npy, tmp_path):
    out = tmp_path / "s.parquet"
    folder = _checkpoint(flat_npy, out)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder / checkpoints.LOCK_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--resume")
        assert result.exit_code == 2
        assert result.output.strip().splitlines()[-1] == (f"error: another score job is writing {out} "
                                                           f"(pid {holder.pid} on {os.uname().nodename})")
    finally:
        holder.communicate("")  # the holder exits; its lock file stays, naming a dead pid
    assert (folder / checkpoints.LOCK_FILE).exists()
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--resume")
    assert result.exit_code == 0, result.output


def test_without_flock_the_owners_pid_decides(tmp_path, monkeypatch):
    import fcntl

    from mcdrop.runtime.safe_files import ExclusiveLock

    def refused(fd, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    path = tmp_path / "lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(f"{dead.stdout.strip()} {os.uname().nodename}\n")
    ExclusiveLock(path, "busy").release()  # a dead pid's lock is taken over
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as live:
        path.write_text(f"{live.pid} {os.uname().nodename}\n")
        with pytest.raises(InputError, match=f"busy \\(pid {live.pid} on"):
            ExclusiveLock(path, "busy")
        live.communicate(b"")


def test_two_resumes_at_once_write_each_input_once(flat_npy, tmp_path):
    out = tmp_path / "s.parquet"
    _checkpoint(flat_npy, out)
    base = [sys.executable, str(ROOT / "cli.py"), "score", str(flat_npy), "--model", str(MLP), "--out", str(out),
            "--passes", str(PASSES), "--batch-size", "8", "--resume"]
    jobs = [subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(job.wait(timeout=300), *job.communicate()) for job in jobs]
    assert sorted(code for code, _, _ in results) == [0, 2]  # the second found the lock, or the job done
    for code, stdout, stderr in results:
        assert "Traceback" not in stderr
        if code:
            last = stderr.strip().splitlines()[-1]
            assert any(message in last for message in (f"another score job is writing {out}",
                                                       "is finished, nothing to resume", "no unfinished job")), last
    assert pq.read_table(out).column("index").to_pylist() == list(range(300))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_finished_output_is_replaced_only_with_overwrite(flat_npy, tmp_path, engine):
    out = tmp_path / "scores.parquet"
    out.mkdir() if engine == "ray" else None
    finished = (out / "part-0.parquet") if engine == "ray" else out
    finished.write_bytes(b"a finished job's rows")
    args = ["score", flat_npy, "--model", MLP, "--out", out, "--engine", engine]
    for extra, message in ([[], "exists; --overwrite replaces it"],
                           [["--resume"], "is finished, nothing to resume; --overwrite scores it again"],
                           [["--resume", "--overwrite"], "choose one"]):
        result = invoke(*args, *extra)
        assert result.exit_code == 2 and message in result.output.strip().splitlines()[-1], result.output
    assert finished.read_bytes() == b"a finished job's rows"
    if engine == "local":
        result = invoke(*args, "--passes", 3, "--overwrite")
        assert result.exit_code == 0, result.output
        assert pq.read_metadata(out).num_rows == 300


def test_resume_does_not_restart_a_job_that_finished_meanwhile(flat_npy, tmp_path):
    """What a second --resume finds when the first has just finished: OUT written, the
    checkpoint's files gone but its folder not yet; it must not score OUT again."""
    out = tmp_path / "s.parquet"
    out.write_bytes(b"a finished job's rows")
    checkpoints.checkpoint_folder(out).mkdir()
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--resume")
    assert result.exit_code == 2 and "is finished, nothing to resume" in result.output
    assert out.read_bytes() == b"a finished job's rows"


@pytest.mark.parametrize("engine, name", [("local", "x.csv"), ("local", "x"), ("ray", "x.csv")])
def test_the_output_name_says_parquet(flat_npy, tmp_path, engine, name):
    result = invoke("score", flat_npy, "--model", MLP, "--out", tmp_path / name, "--engine", engine)
    assert result.exit_code == 2 and "--out " + name in result.output and "parquet" in result.output
    assert os.listdir(tmp_path) == []


def test_resume_with_nothing_to_resume_says_so(flat_npy, tmp_path):
    result = invoke("score", flat_npy, "--model", MLP, "--out", tmp_path / "s.parquet", "--resume")
    assert result.exit_code == 2 and "no unfinished job" in result.output
    assert os.listdir(tmp_path) == []


def test_overwrite_starts_an_unfinished_job_again(flat_npy, tmp_path):
    out = tmp_path / "s.parquet"
    folder = _checkpoint(flat_npy, out, passes=PASSES + 1)
    pq.write_table(pa.table({"index": [0]}), folder / "part-000000.parquet")
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "scored 300 inputs" in result.output and not folder.exists()


def test_resume_refuses_a_rewritten_input_and_names_it(digits, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(digits[0][i]).save(images / f"{i}.png")
    x = digits[1][:100].reshape(100, 28, 28, 1)  # 314 KB: more than the first and last 64 KiB
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "s.parquet"
    inputs = [images, tmp_path / "x.npy"]
    session = MCSession(CNN)
    plan = plan_inputs([str(p) for p in inputs], session.info)
    checkpoints.Checkpoint(checkpoints.checkpoint_folder(out), checkpoints.job_identity(CNN, plan, ScoreOptions(5, 1), "local"),
                       False).release()
    args = ["score", *inputs, "--model", CNN, "--out", out, "--passes", 5, "--resume"]

    changed = x.copy()
    changed[50] = x[51]  # same name, shape, size, time and first and last 64 KiB: one row in the middle
    was = (tmp_path / "x.npy").stat()
    np.save(tmp_path / "x.npy", changed)
    os.utime(tmp_path / "x.npy", ns=(was.st_atime_ns, was.st_mtime_ns))
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: --resume: {tmp_path / 'x.npy'} has changed")
    np.save(tmp_path / "x.npy", x)

    Image.fromarray(digits[0][5]).save(images / "1.png")  # an image rewritten
    result = invoke(*args)
    assert result.exit_code == 2 and f"{images / '1.png'} has changed" in result.output
    Image.fromarray(digits[0][1]).save(images / "1.png")  # the same bytes again, a new time
    result = invoke(*args)
    assert result.exit_code == 2 and f"{images / '1.png'} has changed" in result.output


def test_write_failures_are_one_line_and_keep_the_checkpoint(flat_npy, tmp_path, monkeypatch):
    """Disk full while a part is written, then while the output is merged: one line each, the
    closed parts kept, no temporary file left; --resume then finishes the same job."""
    import errno

    monkeypatch.setattr(score_output, "PART_ROWS", 16)
    out = tmp_path / "s.parquet"
    args = ["score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--mask-seed", MASK_SEED,
            "--batch-size", 8]
    write_table = pq.ParquetWriter.write_table
    calls = []

    def full(self, table, *a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_table(self, table, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last and "--resume" in last
    folder = checkpoints.checkpoint_folder(out)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("_")) == ["part-000000.parquet",
                                                                                       "part-000001.parquet"]
    assert len(read_scores(folder)) == 32

    def full_when_merging(self, table, *a, **k):
        if "row_group_size" in k:  # merge_parts writes a row group per part
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_table(self, table, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full_when_merging)
    result = invoke(*args, "--resume")
    assert result.exit_code == 2 and "No space left on device" in result.output and "--resume" in result.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(read_scores(folder)) == 300

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert_same_rows(pq.read_table(out), _score(flat_npy, tmp_path / "whole.parquet"))


def test_an_unwritable_folder_is_one_line(flat_npy, tmp_path, monkeypatch):
    def denied(path, mode=0o777, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", denied)  # root ignores file modes, so the refusal is faked
    result = invoke("score", flat_npy, "--model", MLP, "--out", tmp_path / "s.parquet")
    assert result.exit_code == 2 and "cannot write here (Permission denied)" in result.output
    assert "Traceback" not in result.output and os.listdir(tmp_path) == []


def test_a_file_at_the_checkpoint_path_and_a_corrupt_job_file_are_one_line(flat_npy, tmp_path):
    out = tmp_path / "s.parquet"
    folder = checkpoints.checkpoint_folder(out)
    folder.write_text("not a folder")
    for extra in ([], ["--resume"], ["--overwrite"]):
        result = invoke("score", flat_npy, "--model", MLP, "--out", out, *extra)
        assert result.exit_code == 2 and "is a file, not a checkpoint folder" in result.output
    assert folder.read_text() == "not a folder"
    folder.unlink()

    _checkpoint(flat_npy, out)
    (folder / checkpoints.JOB_FILE).write_text('{"passes": 2')
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--passes", PASSES, "--resume")
    assert result.exit_code == 2 and "_job.json: corrupt" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output and (folder / checkpoints.JOB_FILE).exists()
    result = invoke("score", flat_npy, "--model", MLP, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output


def test_parts_close_by_time_as_well_as_rows(flat_npy, tmp_path, monkeypatch):
    """A slow job keeps its rows every PART_SECONDS, however few rows it scores."""
    def stop(checkpoint, out, schema):
        raise InputError("stopped before merging, to look at the parts")

    monkeypatch.setattr(score_output, "PART_SECONDS", 0)
    monkeypatch.setattr(score_output, "merge_parts", stop)
    result = invoke("score", flat_npy, "--model", MLP, "--out", tmp_path / "s.parquet", "--batch-size", 100)
    assert result.exit_code == 2
    names = sorted(p.name for p in checkpoints.checkpoint_folder(tmp_path / "s.parquet").glob("part-*"))
    assert names == [f"part-00000{i}.parquet" for i in range(3)]


DEFERRED_SIGNAL = """
import signal, time
from mcdrop.score import checkpoint
signal.signal(signal.SIGINT, signal.default_int_handler)
reached = []
try:
    with checkpoint.signals_deferred():
        signal.raise_signal(signal.SIGINT)  # to this thread: its handler runs inside the block
        time.sleep(0.05)
        reached.append(True)  # the interruption waited for the block
except KeyboardInterrupt:
    print("interrupted after the block" if reached else "interrupted inside the block")
print("handler restored" if signal.getsignal(signal.SIGINT) is signal.default_int_handler else "handler lost")
"""


def test_signals_wait_for_the_end_of_a_deferred_block():
    """In a process of its own: a test worker that signals itself can die of it (an xdist worker
    segfaulted on this SIGINT after in-process OpenVINO and score runs: docs/DESIGN.md, Scoring)."""
    done = subprocess.run([sys.executable, "-c", DEFERRED_SIGNAL], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["interrupted after the block", "handler restored"]


def test_the_score_extra_installs_what_the_readme_uses():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(name.startswith("pandas") for name in extras["score"])  # README: read_scores(...).to_pandas()
    assert ".to_pandas()" in (ROOT / "README.md").read_text()
