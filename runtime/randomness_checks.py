"""Checks that need only numpy and onnxruntime: is the file's randomness live, do two sets of
Monte Carlo samples agree?

The exporter runs them before it writes a file (export/validate.py adds the Keras parity checks);
the runtime runs them on a device with `MCSession.self_check()` / `cli.py info --check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from .errors import ValidationError

VARIABLE_SIZE = 8  # what a dimension the model leaves open (a sequence length, say) gets in checks


@dataclass
class Check:
    name: str
    detail: str


class Checklist:
    """Collects passed checks; the first failure raises ValidationError naming the check."""

    def __init__(self, progress: Callable[[str], None] = lambda message: None):
        self.passed: List[Check] = []
        self.progress = progress

    def check(self, name: str, ok: bool, detail: str, failure: str) -> None:
        if not ok:
            raise ValidationError(f"validation failed ({name}): {failure}")
        self.passed.append(Check(name, detail))
        self.progress(f"  ok  {name}: {detail}")


def sample_inputs(input_shape, preprocessing: Optional[dict], count=2, seed=0) -> np.ndarray:
    """Inputs in the range the model expects: scaled 0-255 pixels for image models, else N(0, 1)."""
    rng = np.random.default_rng(seed)
    shape = (count, *(d if isinstance(d, int) else VARIABLE_SIZE for d in input_shape[1:]))
    if preprocessing and preprocessing.get("scale"):
        pixels = rng.integers(0, 256, shape)
        x = pixels * preprocessing["scale"] + preprocessing.get("offset", 0.0)
        # Per-channel mean and std (torch, caffe modes) act on the last axis, the channels.
        x = (x - np.asarray(preprocessing.get("mean", [0.0]))) / np.asarray(preprocessing.get("std", [1.0]))
        return x.astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def side_by_side(outputs: dict, names) -> np.ndarray:
    """The named [T, B, ...] sample arrays of one run as one [T, B, features] array: every output
    of a model with several, for the checks that need no head."""
    return np.concatenate([outputs[name].reshape(*outputs[name].shape[:2], -1) for name in names], -1)


def check_live_randomness(checks: Checklist, samples: Callable, x: np.ndarray, passes: int = 8) -> None:
    """samples(x, passes, stochastic) -> [T, B, ...]. Masks must change between runs and passes,
    and the deterministic pass must not change at all."""
    first, second = samples(x, passes, True), samples(x, passes, True)
    constant = float(np.ptp(first)) == 0 and np.array_equal(first, second)
    checks.check("output varies", not constant, "outputs depend on the input and the masks",
                 "the model's output is the same for every input and every pass (a flat head, e.g. "
                 "untrained or saturated weights), so no randomness can show; check the model's weights")
    checks.check("runs differ", not np.array_equal(first, second), "two runs give different samples",
                 "two runs gave identical samples (a fixed seed or a folded mask?)")
    spread = float(np.max(first.max(0) - first.min(0)))
    checks.check("passes differ", spread > 0, "passes within a run differ",
                 "all passes of a run are identical (one mask shared by every pass?)")
    checks.check("deterministic pass repeats", np.array_equal(samples(x, 1, False), samples(x, 1, False)),
                 "dropout off gives the same output every time", "dropout off still varies between runs")


def z_scores(samples_a, samples_b):
    """Largest |difference| / standard error of the mean and of the variance, [T, ...] each.

    The standard error of a sample variance is sqrt((m4 - var^2) / T). Elements with no spread on
    either side must agree exactly (to float32 rounding) instead.
    """
    worst = {}
    for stat in ("mean", "variance"):
        est, se2 = [], []
        for s in (np.asarray(samples_a, np.float64), np.asarray(samples_b, np.float64)):
            t = s.shape[0]
            mean = s.mean(0)
            centred = s - mean
            var = (centred**2).mean(0)
            if stat == "mean":
                est.append(mean)
                se2.append(var / t)
            else:
                est.append(var)
                se2.append(np.maximum((centred**4).mean(0) - var**2, 0) / t)
        diff = np.abs(est[0] - est[1])
        se = np.sqrt(se2[0] + se2[1])
        z = np.where(se > 1e-12, diff / np.maximum(se, 1e-12), np.where(diff <= 1e-6, 0.0, np.inf))
        worst[stat] = float(z.max())
    return worst
