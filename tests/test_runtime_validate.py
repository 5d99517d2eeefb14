"""runtime.randomness_checks: the live-randomness checks shared by export validation and MCSession.self_check."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcdrop.runtime import MCSession
from mcdrop.runtime.errors import ValidationError
from mcdrop.runtime.randomness_checks import Checklist, check_live_randomness, sample_inputs

ROOT = Path(__file__).resolve().parent.parent


def fake_samples(vary_runs, vary_passes, vary_deterministic=False, vary_inputs=False):
    rng = np.random.default_rng(0)

    def samples(x, passes, stochastic):
        if not stochastic:
            return rng.random((1, len(x), 2)) if vary_deterministic else np.zeros((1, len(x), 2))
        fixed = np.arange(len(x) * 2.0).reshape(1, len(x), 2) if vary_inputs else np.full((1, len(x), 2), 0.5)
        base = rng.random((1, len(x), 2)) if vary_runs else fixed
        per_pass = rng.random((passes, len(x), 2)) if vary_passes else np.zeros((passes, len(x), 2))
        return base + per_pass

    return samples


@pytest.mark.parametrize(
    "samples, failed",
    [
        (fake_samples(vary_runs=False, vary_passes=False), "output varies"),
        (fake_samples(vary_runs=False, vary_passes=False, vary_inputs=True), "runs differ"),
        (fake_samples(vary_runs=True, vary_passes=False), "passes differ"),
        (fake_samples(vary_runs=True, vary_passes=True, vary_deterministic=True), "deterministic pass repeats"),
    ],
)
def test_frozen_or_unstable_randomness_is_caught(samples, failed):
    with pytest.raises(ValidationError, match=f"validation failed \\({failed}\\)"):
        check_live_randomness(Checklist(), samples, np.zeros((2, 3), np.float32))


def test_live_randomness_passes_every_check():
    checks = Checklist()
    check_live_randomness(checks, fake_samples(True, True), np.zeros((2, 3), np.float32))
    assert [c.name for c in checks.passed] == ["output varies", "runs differ", "passes differ",
                                               "deterministic pass repeats"]


def test_a_constant_output_is_named_as_such():
    with pytest.raises(ValidationError, match="same for every input and every pass"):
        check_live_randomness(Checklist(), fake_samples(False, False), np.zeros((2, 3), np.float32))


def test_sample_inputs_follow_the_preprocessing():
    pixels = sample_inputs([None, 4, 4, 1], {"scale": 1 / 255, "offset": 0.0}, count=3)
    assert pixels.shape == (3, 4, 4, 1) and pixels.min() >= 0 and pixels.max() <= 1
    assert sample_inputs([None, 5], None).shape == (2, 5)


def test_session_self_check_and_cli(toy_model_path):
    names = [c.name for c in MCSession(toy_model_path).self_check()]
    assert names == ["random nodes", "output varies", "runs differ", "passes differ", "deterministic pass repeats"]
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "info", str(toy_model_path), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ok  runs differ" in done.stdout
