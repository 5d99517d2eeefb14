"""A bounded, seeded fuzz of the shipped CNN: every mutant is refused with a McdropError or runs.

The mutants are loaded with verify=False, so that they reach the protobuf reader, the metadata
checks and onnxruntime rather than stopping at the integrity checksum; a second pass checks that
the checksum alone refuses every mutant whose bytes changed. The mutants run in a child process,
so a crash of onnxruntime fails the test with the mutant's number instead of killing pytest.
"""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

MUTANTS = 200
SEED = 20261123
MODEL = ROOT / "models" / "cnn.onnx"
# The file's structure (graph nodes, names, shapes, metadata) sits in its first kilobytes and in
# its tail; most of the middle is weights. Half the mutations aim at the structure.
HEAD_BYTES, TAIL_BYTES = 16_384, 4_096

CHILD = """
import json, os, sys, traceback
import numpy as np
from mcdrop.runtime.errors import McdropError
from mcdrop.runtime.session import MCSession

path, seed, count, head, tail, verify = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
original = open(path, "rb").read()
rng = np.random.default_rng(seed)
x = rng.random((1, 28, 28, 1), dtype=np.float32)


def mutate(data):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.5:
            where = int(rng.integers(0, head)) if rng.random() < 0.7 else len(data) - 1 - int(rng.integers(0, tail))
        else:
            where = int(rng.integers(0, len(data)))
        kind = rng.integers(0, 5)
        if kind == 0:
            data[where] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            data[where:where + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif kind == 2:
            data[where:where + 1] = rng.choice([b"\\x00", b"\\xff", b"\\x7f", b"\\x80"])
        elif kind == 3:
            del data[where:where + int(rng.integers(1, 16))]
        else:
            data = data[:where]
    return bytes(data)


report = {"refused": 0, "ran": 0, "unchanged": 0, "bugs": []}
mutant = f"/tmp/mcdrop-fuzz-{seed}-{os.getpid()}.onnx"  # the two fuzz tests may run side by side
for i in range(count):
    data = mutate(original)
    if data == original:
        report["unchanged"] += 1
        continue
    open(mutant, "wb").write(data)
    print(i, flush=True)  # the last number printed names the mutant if the process dies
    try:
        session = MCSession(mutant, seed=0, threads=1, verify=verify)
        prediction = session.predict(x, passes=2)
        assert prediction.mean.shape[0] == 1
        json.loads(prediction.to_json())  # what --json and --out print must serialise
        report["ran"] += 1
    except McdropError as err:
        assert "\\n" not in str(err), f"mutant {i}: a multi-line message"
        report["refused"] += 1
    except Exception:
        report["bugs"].append(f"mutant {i}: " + traceback.format_exc().splitlines()[-1])
print(json.dumps(report))
"""


def fuzz(verify: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(MODEL), str(SEED), str(MUTANTS), str(HEAD_BYTES),
                           str(TAIL_BYTES), "1" if verify else "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, f"the process died at mutant {lines[-1] if lines else '?'}: {done.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.mark.slow
def test_every_mutant_is_refused_in_one_line_or_runs():
    report = fuzz(verify=False)
    assert report["bugs"] == []
    assert report["refused"] + report["ran"] + report["unchanged"] == MUTANTS
    assert report["refused"] >= MUTANTS // 4  # the structure mutations really reach the checks


@pytest.mark.slow
def test_the_checksum_refuses_every_changed_mutant():
    report = fuzz(verify=True)
    assert report["bugs"] == [] and report["ran"] == 0
    assert report["refused"] == MUTANTS - report["unchanged"]
