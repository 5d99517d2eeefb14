"""The Ray engine of `cli.py score`, on a local Ray instance with 2 CPUs: the same rows as the local
engine for any batch size, every input once, also when an actor dies midway or a job is resumed.
Ray's driver runs in a process of its own (ray_process.py), never in the test worker."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mcdrop.score import checkpoint as checkpoints
from mcdrop.score.job import ScoreOptions
from mcdrop.score.local import score_local
from mcdrop.score.output import read_scores
from mcdrop.runtime.session import MCSession
from mcdrop.score.input_plan import plan_inputs
from conftest import ROOT
from ray_process import RayProcess, call_with_environment
from test_score import assert_same_rows

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
from mcdrop.score.ray_engine import FAULT_ENV, score_dataset, score_with_ray  # noqa: E402

# One Ray instance for the whole module, on one xdist worker (pyproject: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")
CNN = ROOT / "models" / "cnn.onnx"
OPTIONS = ScoreOptions(passes=10, mask_seed=21)


@pytest.fixture(scope="module")
def local_ray():
    process = RayProcess(num_cpus=2)
    yield process
    process.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """120 real digits as an .npy, 6 of them again as PNG images, and one broken image."""
    sys.path.insert(0, str(ROOT / "models"))
    import build_models

    images, _ = build_models.digits_28x28()
    folder = tmp_path_factory.mktemp("inputs")
    np.save(folder / "digits.npy", build_models.to_input(images[:120], flat=False).astype(np.float32))
    (folder / "images").mkdir()
    for i in range(6):
        Image.fromarray(images[i]).save(folder / "images" / f"{i}.png")
    (folder / "images" / "broken.png").write_bytes(b"not a png")
    return [str(folder / "digits.npy"), str(folder / "images")]


@pytest.fixture(scope="module")
def local_rows(inputs, tmp_path_factory):
    session = MCSession(CNN)
    out = tmp_path_factory.mktemp("local") / "local.parquet"
    score_local(session, plan_inputs(inputs, session.info), out, OPTIONS, batch_size=64)
    return read_scores(out)


def _ray(local_ray, inputs, out, batch_size=16, environment=None, **kwargs):
    plan = plan_inputs(inputs, MCSession(CNN).info)
    summary = local_ray.call(call_with_environment, environment or {}, score_with_ray, plan, out, CNN, OPTIONS,
                             batch_size=batch_size, workers=2, **kwargs)
    table = read_scores(out)
    assert table.column("index").to_pylist() == list(range(plan.total))  # every input exactly once
    return summary, table


@pytest.mark.parametrize("batch_size", [16, 48])
def test_ray_rows_equal_the_local_engines(local_ray, inputs, local_rows, tmp_path, batch_size):
    summary, table = _ray(local_ray, inputs, tmp_path / "scores.parquet", batch_size)
    assert summary.failed == 1 and summary.rows == local_rows.num_rows == 127
    assert (tmp_path / "scores.parquet").is_dir() and not checkpoints.checkpoint_folder(tmp_path / "scores.parquet").exists()
    assert_same_rows(table, local_rows)


def test_an_actor_that_dies_midway_is_replaced_and_its_batch_redone(local_ray, inputs, local_rows, tmp_path):
    marker = tmp_path / "an-actor-exited"
    summary, table = _ray(local_ray, inputs, tmp_path / "scores.parquet", batch_size=8,
                          environment={FAULT_ENV: str(marker)})
    assert marker.exists()  # the hook did kill an actor
    assert summary.rows == local_rows.num_rows
    assert_same_rows(table, local_rows)


def test_resume_writes_only_the_missing_inputs(local_ray, inputs, local_rows, tmp_path):
    whole = tmp_path / "whole.parquet"
    _ray(local_ray, inputs, whole, batch_size=16)
    out = tmp_path / "resumed.parquet"
    plan = plan_inputs(inputs, MCSession(CNN).info)
    checkpoint = checkpoints.Checkpoint(checkpoints.checkpoint_folder(out),
                                    checkpoints.job_identity(CNN, plan, OPTIONS, "ray"), resume=False)
    files = sorted(whole.iterdir())
    assert all(checkpoints.PART_NAMES.fullmatch(path.name) for path in files)  # Ray's parts carry score's names
    for path in files[: len(files) // 2]:  # what a job stopped halfway had written
        shutil.copy(path, checkpoint.folder / path.name)
    (checkpoint.folder / "ray-torn_000009-0.parquet").write_bytes(b"PAR1 a file the crash cut short")
    kept = int(checkpoint.done().sum())
    checkpoint.release()
    assert 0 < kept < plan.total
    summary, table = _ray(local_ray, inputs, out, batch_size=16, resume=True)
    assert summary.scored == plan.total - kept
    assert_same_rows(table, local_rows)


def _cli(*args):
    """cli.py in a process (and session) of its own: it becomes a Ray driver."""
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          start_new_session=True, timeout=600)


def test_the_cli_runs_the_ray_engine(inputs, local_rows, tmp_path):
    out = tmp_path / "scores.parquet"
    result = _cli("score", *inputs, "--model", CNN, "--out", out, "--engine", "ray", "--passes", 10,
                  "--mask-seed", 21, "--batch-size", 32, "--workers", 2)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "engine ray" in output and "masks shared (seed 21)" in output
    assert_same_rows(read_scores(out), local_rows)
    stop = _cli("score", *inputs, "--model", CNN, "--out", tmp_path / "stop.parquet", "--engine", "ray",
                "--on-error", "stop", "--passes", 2)
    assert stop.returncode == 2, stop.stdout + stop.stderr
    assert stop.stderr.strip().splitlines()[-1].startswith("error: ") and "broken.png" in stop.stderr


def _dataset_rows(x):
    """score_dataset over a Ray Dataset of the rows of x (row 3 all NaN), as one table in index order."""
    import pyarrow as pa

    items = [{"index": i, "id": f"row {i}", "x": x[i]} for i in range(len(x))]
    items[3]["x"] = np.full_like(x[3], np.nan)
    scored = score_dataset(ray.data.from_items(items), CNN, passes=OPTIONS.passes, mask_seed=OPTIONS.mask_seed,
                           array_column="x", batch_size=25, workers=2)
    table = pa.concat_tables(list(scored.iter_batches(batch_format="pyarrow", batch_size=None)))
    return table.take(np.argsort(table.column("index").to_numpy()))


def test_score_dataset_maps_a_dataset_of_arrays(local_ray, local_rows):
    x = np.load(local_rows.column("id")[0].as_py().split("[")[0])
    table = local_ray.call(_dataset_rows, x)
    assert table.column("index").to_pylist() == list(range(len(x)))
    assert "NaN" in table.column("error")[3].as_py()
    expected = local_rows.slice(0, len(x))
    keep = [i for i in range(len(x)) if i != 3]
    np.testing.assert_allclose(np.stack(table.column("mean").to_numpy(zero_copy_only=False)[keep]),
                               np.stack(expected.column("mean").to_numpy(zero_copy_only=False)[keep]), atol=2e-6)


def test_a_missing_ray_extra_is_one_line():
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['cli.py', 'score', 'x.npy', '--out', 'o.parquet', "
            "'--engine', 'ray']; from mcdrop import cli; cli.main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip() == 'error: --engine ray needs Ray: pip install -e ".[ray]"'


def test_a_finished_ray_output_is_replaced_only_with_overwrite(local_ray, inputs, local_rows, tmp_path):
    from mcdrop.runtime.errors import InputError

    out = tmp_path / "scores"  # a folder name with no suffix
    _ray(local_ray, inputs, out)
    first = sorted(path.name for path in out.iterdir())
    assert first and all(name.startswith("ray-") and name.endswith(".parquet") for name in first)
    with pytest.raises(InputError, match="exists; --overwrite replaces it"):
        _ray(local_ray, inputs, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holding other files"):
        _ray(local_ray, inputs, out, overwrite=True)
    (out / "notes.txt").unlink()
    summary, table = _ray(local_ray, inputs, out, overwrite=True)
    assert summary.scored == summary.rows == local_rows.num_rows
    assert_same_rows(table, local_rows)
    names = sorted(path.name for path in out.iterdir())
    assert names != first and all(name.startswith("ray-") for name in names)  # the new job's files only
    assert not checkpoints.checkpoint_folder(out).exists()
