"""`cli.py score` stopped by SIGINT (Ctrl-C) and SIGTERM at random points of a 2,000-input job,
then continued with --resume until done: every input has exactly one row, the rows equal an
uninterrupted run's, the resumed job kept its mask seed, and each stop cost at most the batch
being scored (docs/DESIGN.md: Scoring)."""

import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq

from mcdrop.score import checkpoint as checkpoints
from conftest import ROOT
from test_score import assert_same_rows

MLP = ROOT / "models" / "mlp.onnx"
INPUTS, BATCH, PASSES = 2000, 64, 20
SEED = 20261203
# Runs the CLI as `python cli.py` would, with SIGINT's default handler (a test worker may ignore
# SIGINT, and children inherit that), logging the size of every batch as its scoring starts: the
# log counts the work done, whatever the CLI says about it.
RUNNER = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from mcdrop import cli
from mcdrop.score import checkpoint as checkpoints, job

log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
score_loaded = job.Scorer.score_loaded

def logged(self, x, index, ids, errors=None):
    os.write(log, b"%d\\n" % len(index))
    return score_loaded(self, x, index, ids, errors)

job.Scorer.score_loaded = logged
sys.argv = ["cli.py"] + sys.argv[2:]
cli.main()
"""


def _logged(log):
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_sigint_and_sigterm_at_random_points_then_resume(tmp_path):
    rng = np.random.default_rng(SEED)
    x = rng.random((INPUTS, 784), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "runner.py").write_text(RUNNER)
    log = tmp_path / "batches.log"
    out = tmp_path / "scores.parquet"
    parts = checkpoints.checkpoint_folder(out)

    def command(*extra, log=log, out=out):
        return [sys.executable, str(tmp_path / "runner.py"), str(log), "score", str(tmp_path / "x.npy"), "--model",
                str(MLP), "--out", str(out), "--passes", str(PASSES), "--batch-size", str(BATCH), *extra]

    batches = -(-INPUTS // BATCH)
    stops = 0
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        started = len(_logged(log))
        if started >= batches - 1:
            break
        child = subprocess.Popen(command(*(["--resume"] if parts.exists() else [])), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        # A random batch of what is left, then a random moment within it (between or inside batches).
        target = started + int(rng.integers(1, max(2, (batches - started) // 2)))
        deadline = time.monotonic() + 120
        while child.poll() is None and len(_logged(log)) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.08)))
        child.send_signal(stop)
        stdout, stderr = child.communicate(timeout=120)
        if child.returncode == 0:
            break  # it finished before the signal came
        stops += 1
        assert child.returncode == (130 if stop == signal.SIGINT else 128 + signal.SIGTERM), stderr
        assert "Traceback" not in stderr
        line = stderr.strip().splitlines()[-1]
        assert line.startswith("error: interrupted") and "--resume" in line, stderr
        assert parts.is_dir() and not out.exists()
        assert not [p for p in parts.iterdir() if p.name.endswith(".tmp")]  # each part complete or absent
    assert stops >= 2, "the job ended before it could be stopped"

    for _ in range(3):
        done = subprocess.run(command("--resume"), capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr
    assert not parts.exists()
    table = pq.read_table(out)
    assert table.column("index").to_pylist() == list(range(INPUTS))  # every input exactly once
    seeds = set(table.column("mask_seed").to_pylist())
    assert len(seeds) == 1  # --resume kept the job's seed (none was given)

    # At most the batch being scored is scored again per stop.
    rescored = sum(_logged(log)) - INPUTS
    assert 0 <= rescored <= stops * BATCH, (rescored, stops)

    whole = tmp_path / "whole.parquet"
    subprocess.run(command("--mask-seed", str(seeds.pop()), log=tmp_path / "whole.log", out=whole), check=True,
                   capture_output=True, timeout=300)
    assert_same_rows(table, pq.read_table(whole))
