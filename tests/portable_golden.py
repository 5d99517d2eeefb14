"""The portable CNN's golden vectors (tests/golden/portable_cnn.json, written by
tests/golden/make_portable_golden.py), shared by every runtime's test: the inputs, the keep masks
to feed, and the check of a runtime's samples against the recorded measures."""

import hashlib
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "portable_cnn.json"


def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def golden_inputs() -> np.ndarray:
    """The recorded inputs, float32 [3, 28, 28, 1] (tests/golden/digits.json's)."""
    digits = json.loads((ROOT / "tests" / "golden" / "digits.json").read_text())
    by_path = {entry["path"]: entry for entry in digits["samples"]}
    return np.array([by_path[path]["input"] for path in golden()["samples"]], dtype=np.float32).reshape(-1, 28, 28, 1)


def golden_masks(info) -> np.ndarray:
    """The keep masks of the recorded seed for passes 0..T-1, checked against the recorded sha256."""
    from mcdrop.runtime.portable_masks import keep_masks

    document = golden()
    kept = keep_masks(info.mask_layout, [layer.rate for layer in info.stochastic_layers], document["mask_seed"], 0,
                      document["passes"])
    assert hashlib.sha256(kept.tobytes()).hexdigest() == document["masks_sha256"]
    return kept


def check(mc_samples, deterministic_samples) -> dict:
    """AssertionError unless a runtime's samples ([T, 3, 10] with the golden masks, and the
    deterministic run's [T or 1, 3, 10]) give the recorded measures; returns the gaps."""
    document = golden()
    tolerance = document["tolerances"]
    mc = np.asarray(mc_samples, dtype=np.float64)
    deterministic = np.asarray(deterministic_samples, dtype=np.float64)
    assert mc.shape == (document["passes"], len(document["samples"]), 10), mc.shape
    gaps = {"deterministic_mean": float(np.max(np.abs(deterministic - np.array(document["deterministic_mean"])))),
            "mc_mean": float(np.max(np.abs(mc.mean(0) - np.array(document["mc_mean"])))),
            "mc_variance": float(np.max(np.abs(mc.var(0) - np.array(document["mc_variance"]))))}
    for name, gap in gaps.items():
        assert gap <= tolerance[name.split("_", 1)[-1].replace("mc_", "")], (name, gap)
    return gaps
