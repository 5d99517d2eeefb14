"""The library faces of what the CLI does: SessionSettings (one settings object for every session
a command opens), MCSession.resolve (passes, masks and mask_seed checked and defaulted in one
place) and runtime/result_files.py (the files `infer --out` writes, for Python users too)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mcdrop import cli
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.limits import Limits
from mcdrop.runtime.result_files import results_document, table_lines, write_results
from mcdrop.runtime.session import MCSession
from mcdrop.runtime.settings import SessionSettings
from conftest import ROOT

CNN = ROOT / "models" / "cnn.onnx"


@pytest.fixture(scope="module")
def session():
    return MCSession(CNN, settings=SessionSettings(seed=5, threads=1))


def test_settings_are_checked_once_and_shared(session):
    assert session.settings.seed == 5 and session.threads == 1 and session.mask_seed == 5
    assert MCSession(CNN, seed=5, threads=1).settings == session.settings  # the keywords build the same object
    with pytest.raises(InputError, match="max_chunk_bytes must be >= 1"):
        SessionSettings(max_chunk_bytes=0)
    with pytest.raises(InputError, match="seed must be an integer from 0 to 2\\*\\*64 - 1"):
        SessionSettings(seed=-1)
    with pytest.raises(InputError, match="over the threads limit"):
        SessionSettings(threads=3, limits=Limits(threads=2))
    with pytest.raises(InputError, match="--max-chunk-mb must be > 0 and finite"):
        SessionSettings.from_flags(max_chunk_mb=float("nan"))
    assert SessionSettings.from_flags(max_chunk_mb=1, limit=["passes=7"], no_verify=True) == \
        SessionSettings(max_chunk_bytes=2**20, limits=Limits(passes=7), verify=False)
    with pytest.raises(TypeError):
        MCSession(CNN, settings=session.settings, seed=1)


def test_resolve_defaults_and_checks_in_one_place(session):
    plan = session.resolve()
    assert (plan.passes, plan.stochastic, plan.masks, plan.mask_seed) == (session.default_passes, True, "shared", 5)
    assert session.resolve(passes=3, masks="independent").mask_seed is None
    off = session.resolve(passes=7, dropout=False)
    assert (off.passes, off.stochastic, off.masks, off.mask_seed) == (1, False, None, None)
    for kwargs, message in [({"passes": 0}, "passes must be >= 1, got 0"),
                            ({"passes": True}, "passes must be an integer >= 1"),
                            ({"passes": 10**9}, "over the passes limit"),
                            ({"mask_seed": 2**64}, "mask_seed must be an integer from 0"),
                            ({"masks": "independent", "mask_seed": 1}, "mask_seed is for masks='shared'")]:
        with pytest.raises(InputError, match=message):
            session.resolve(**kwargs)
    with pytest.raises(InputError, match="--passes must be >= 1"):
        session.resolve(passes=0, flags=True)
    with pytest.raises(InputError, match="passes must be >= 1"):  # predict goes through resolve
        session.predict(np.zeros((1, 28, 28, 1), np.float32), passes=0)


def test_write_results_gives_the_files_infer_out_writes(session, tmp_path):
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    batch = tmp_path / "x.npy"
    np.save(batch, x)
    names = [f"{batch}[{i}]" for i in range(3)]
    predicted = session.predict(x, passes=4)
    for suffix in (".csv", ".npz", ".json"):
        cli_out, lib_out = tmp_path / f"cli{suffix}", tmp_path / f"lib{suffix}"
        result = CliRunner().invoke(cli.app, ["infer", str(batch), "--model", str(CNN), "--seed", "5", "--passes", "4",
                                              "--threads", "1", "--out", str(cli_out)])
        assert result.exit_code == 0, result.output
        write_results(lib_out, predicted, names)
        if suffix == ".csv":
            assert lib_out.read_text() == cli_out.read_text()
        elif suffix == ".npz":
            with np.load(cli_out) as a, np.load(lib_out) as b:
                assert sorted(a.files) == sorted(b.files)
                for key in a.files:
                    np.testing.assert_array_equal(a[key], b[key])
        else:
            ours, theirs = json.loads(lib_out.read_text()), json.loads(cli_out.read_text())
            assert ours["predictions"] == theirs["predictions"] and ours["mask_seed"] == theirs["mask_seed"] == 5
    document = results_document(predicted, names, model="cnn.onnx", seed=5)
    lines = table_lines(document, predicted, names)
    assert lines[0].startswith("model cnn.onnx") and "masks shared (seed 5)" in lines[0] and len(lines) == 1 + 1 + 3 + 1
    with pytest.raises(InputError, match="give a file name ending in .json, .npz, .csv"):
        write_results(tmp_path / "r.txt", predicted, names)
