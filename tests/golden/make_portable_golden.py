"""Writes tests/golden/portable_cnn.json: golden vectors of the portable CNN for every runtime's test.

The shipped CNN converted to the portable profile (`convert --portable --passes 8`, any batch), the
keep masks of mask seed 5 (their sha256: bytes are exact on every machine) and, for three of
tests/golden/digits.json's inputs, the deterministic pass's mean and the MC mean and variance over
the 8 passes, as onnxruntime CPU computes them here. Each runtime's test (onnxruntime CPU:
test_portable.py, OpenVINO: test_openvino.py, LiteRT: test_litert.py, onnxruntime-node:
test_portable_js.py, onnxruntime-web: test_web_example.py) feeds the same masks and checks its
numbers with tests/portable_golden.py. Run it again after models/cnn.onnx is exported again:

    .venv/bin/python tests/golden/make_portable_golden.py
"""

import hashlib
import json
import re
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mcdrop.convert import convert_file  # noqa: E402
from mcdrop.runtime.portable_masks import keep_masks  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

from golden.make_golden import machine, sha256, short  # noqa: E402

OUT = Path(__file__).resolve().parent / "portable_cnn.json"
SOURCE = "models/cnn.onnx"
PASSES, MASK_SEED = 8, 5
SAMPLES = ("models/samples/digit_3.png", "models/samples/ambiguous.png", "models/samples/not_a_digit.png")
# Other CPUs round float sums differently (digits.json's 1e-4 for means); the masks are bytes, the
# same everywhere, so the variance moves as little.
TOLERANCES = {"mean": 1e-4, "variance": 1e-4}
NOTE = ("Golden vectors of the portable CNN for each runtime's test (tests/golden/make_portable_golden.py). "
        "file: models/cnn.onnx (sha256 source_sha256) converted with `convert --portable --passes 8` (any batch). "
        "masks: keep masks of mask_seed for passes 0-7 (docs/FORMAT.md: Portable profile), uint8 [8, 87616], "
        "masks_sha256 their bytes. inputs: the digits.json inputs of `samples`. deterministic_mean: stochastic "
        "false; mc_mean and mc_variance (population) over the 8 passes with those masks, float64 of float32 "
        "samples, onnxruntime CPU on `machine`; readers on any runtime or CPU match them to `tolerances`.")


def main() -> None:
    digits = json.loads((ROOT / "tests" / "golden" / "digits.json").read_text())
    by_path = {entry["path"]: entry for entry in digits["samples"]}
    x = np.array([by_path[path]["input"] for path in SAMPLES], dtype=np.float32).reshape(len(SAMPLES), 28, 28, 1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cnn_portable.onnx"
        convert_file(ROOT / SOURCE, path, passes=PASSES, validate=False)
        session = MCSession(path, seed=0)
        info = session.info
        kept = keep_masks(info.mask_layout, [layer.rate for layer in info.stochastic_layers], MASK_SEED, 0, PASSES)
        mc = session.predict(x, passes=PASSES, mask_seed=MASK_SEED).samples.astype(np.float64)
        deterministic = session.predict(x, dropout=False).samples[0]
    document = {
        "note": NOTE, "machine": machine(), "written": date.today().isoformat(), "tolerances": TOLERANCES,
        "source": SOURCE, "source_sha256": sha256(ROOT / SOURCE), "passes": PASSES, "mask_seed": MASK_SEED,
        "masks_sha256": hashlib.sha256(kept.tobytes()).hexdigest(), "samples": list(SAMPLES),
        "deterministic_mean": [[short(v) for v in row] for row in deterministic],
        "mc_mean": [[short(v) for v in row] for row in mc.mean(0)],
        "mc_variance": [[short(v) for v in row] for row in mc.var(0)],
    }
    text = json.dumps(document, indent=1)
    text = re.sub(r"\[[-0-9.e,\s]+\]", lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]", text)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
