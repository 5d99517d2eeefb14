"""What the machine refuses (disk full, a read-only folder, no memory) and stops (Ctrl-C, SIGTERM)
is one `error:` line and a non-zero exit, with no partial or temporary file left behind; a bug
keeps its traceback. Tests run as root, which ignores permission bits, so a full disk or a
read-only folder is simulated where the file is written."""

import errno
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from mcdrop import cli
from mcdrop.runtime import safe_files as files
from mcdrop.runtime.session import MCSession
from conftest import ROOT

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32))
    return path


@pytest.fixture
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def assert_one_error(result, fragment, code=2):
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


class FullDisk:
    """A written file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


@pytest.fixture
def full_disk(monkeypatch):
    """Files opened for writing hold 100 bytes; reads are untouched."""
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        return FullDisk(f, 100) if "w" in mode else f

    monkeypatch.setattr(files.os, "fdopen", fdopen)


@pytest.mark.parametrize("suffix", [".csv", ".json", ".npz"])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(toy_model_path, npy, out_dir, full_disk, suffix):
    out = out_dir / f"r{suffix}"
    result = invoke("infer", npy, "--model", toy_model_path, "--passes", 3, "--out", out)
    assert_one_error(result, f"{out}: No space left on device")
    assert list(out_dir.iterdir()) == []  # neither the result nor its temporary


def test_a_read_only_folder_at_the_rename_is_one_line(toy_model_path, npy, out_dir, monkeypatch):
    def replace(source, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), source, None, target)

    monkeypatch.setattr(files.os, "replace", replace)
    out = out_dir / "r.json"
    result = invoke("infer", npy, "--model", toy_model_path, "--passes", 3, "--out", out)
    assert_one_error(result, f"{out}: Read-only file system")  # the user's name, not the temporary's
    assert list(out_dir.iterdir()) == []


def test_a_folder_that_refuses_new_files_is_one_line(toy_model_path, npy, out_dir, monkeypatch):
    def mkstemp(*args, **kwargs):  # what a read-only or not-writable folder answers (root ignores modes)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    result = invoke("infer", npy, "--model", toy_model_path, "--passes", 3, "--out", out_dir / "r.csv")
    assert_one_error(result, "r.csv: cannot write here (Permission denied)")
    assert list(out_dir.iterdir()) == []


def test_the_writer_removes_its_temporary_and_names_the_target(tmp_path):
    target = tmp_path / "r.bin"
    with pytest.raises(OSError) as caught:
        with files.atomic_writer(target) as f:
            f.write(b"half")
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert caught.value.errno == errno.EIO and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_an_out_folder_that_is_a_file_is_named_so(toy_model_path, npy, tmp_path):
    (tmp_path / "results").write_text("a file")
    result = invoke("infer", npy, "--model", toy_model_path, "--out", tmp_path / "results" / "r.csv")
    assert_one_error(result, f"folder {tmp_path / 'results'} is not a folder")


def test_an_os_error_anywhere_in_a_command_is_one_line(toy_model_path, npy, monkeypatch):
    def predict(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/some/cache")

    monkeypatch.setattr(MCSession, "predict", predict)
    assert_one_error(invoke("infer", npy, "--model", toy_model_path), "/some/cache: Permission denied")


def test_out_of_memory_is_one_line_with_the_knobs(toy_model_path, npy, out_dir, monkeypatch):
    def predict(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 3.73 GiB for an array with shape (1000000000,) and data type float32")

    monkeypatch.setattr(MCSession, "predict", predict)
    result = invoke("infer", npy, "--model", toy_model_path, "--out", out_dir / "r.csv", "--limit", "passes=99999")
    assert_one_error(result, "out of memory (Unable to allocate 3.73 GiB")
    assert "--max-chunk-mb" in result.stderr and "--passes" in result.stderr and "--limit" in result.stderr
    assert list(out_dir.iterdir()) == []


def test_a_bug_keeps_its_traceback(toy_model_path, npy, monkeypatch):
    def predict(self, *args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(MCSession, "predict", predict)
    result = invoke("infer", npy, "--model", toy_model_path)
    assert isinstance(result.exception, ZeroDivisionError)


def test_ctrl_c_during_the_run_is_one_line(toy_model_path, npy, out_dir, monkeypatch):
    def predict(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(MCSession, "predict", predict)
    result = invoke("infer", npy, "--model", toy_model_path, "--out", out_dir / "r.csv")
    assert_one_error(result, "error: interrupted", code=130)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("stop, message", [(signal.SIGINT, "error: interrupted"),
                                           (signal.SIGTERM, "error: terminated")])
def test_a_real_process_stopped_mid_run_says_so(toy_model_path, npy, out_dir, stop, message):
    # SIGINT's default handler, as a terminal gives it (a test runner's worker may ignore SIGINT,
    # and its children inherit that); the run is slowed down to be caught in it.
    script = f"""
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = ["cli.py", "infer", {str(npy)!r}, "--model", {toy_model_path!r}, "--out", {str(out_dir / 'r.csv')!r}]
from mcdrop import cli
from mcdrop.runtime.session import MCSession
def predict(self, *args, **kwargs):
    print("running", flush=True)
    time.sleep(60)
MCSession.predict = predict
cli.main()
"""
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "running"
    child.send_signal(stop)
    assert child.wait(timeout=120) == 128 + stop
    assert child.stderr.read().splitlines() == [message]
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("name, message", [
    ("model.keras", "the file to write must end in .onnx"),  # would replace the source
    ("model", "the file to write must end in .onnx"),
    ("a_file/model.onnx", "a_file is not a folder"),
    ("a_file/deeper/model.onnx", "a_file is not a folder"),
    ("a_folder.onnx", "is a folder"),
])
def test_export_refuses_a_bad_target_before_loading_anything(tmp_path, name, message):
    (tmp_path / "a_file").write_text("a file")
    (tmp_path / "a_folder.onnx").mkdir()
    source = tmp_path / "model.keras"
    source.write_bytes(b"not read")
    result = invoke("export", source, "-o", tmp_path / name)
    assert_one_error(result, message)
    assert source.read_bytes() == b"not read"


def test_the_writer_syncs_the_file_before_its_name_says_it_is_complete(tmp_path, monkeypatch):
    # A power cut after the rename must find the old file or the whole new one, never an empty one.
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with files.atomic_writer(tmp_path / "r.json") as f:
        f.write(b"{}")
    assert events[:2] == ["fsync", "replace"] and (tmp_path / "r.json").read_bytes() == b"{}"
    assert events.count("fsync") == 2  # the file, then its folder (the rename itself)
