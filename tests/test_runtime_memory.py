"""The memory bound holds in a real process: resident memory grows by at most max_chunk_bytes."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What both child processes share: the runtime on the path and a reader of /proc/self/status.
PREAMBLE = """
import sys
import numpy as np
from mcdrop.runtime import MCSession

def mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
"""

CHILD = PREAMBLE + """
session = MCSession({model!r}, seed=0, max_chunk_bytes={bound}, threads={threads})
x = np.random.default_rng(0).random(({batch}, 28, 28, 1), dtype=np.float32)
session.predict(x[:1], passes=1)  # kernels and thread pool set up before measuring
before, runs = mib("VmRSS"), session.run_count
session.predict(x, passes={passes})
print(mib("VmHWM") - before, session.run_count - runs)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc")
@pytest.mark.parametrize(
    "bound_mib, batch, passes",
    [
        (64, 16, 60),  # the passes are split (unchunked: about 540 MiB of activations)
        (128, 16, 60),
        (64, 64, 4),  # the batch is split too, into unequal parts unless the plan evens them out
        (256, 32, 50),
    ],
)
@pytest.mark.parametrize("threads", [1, 2])  # 2: two sessions' runs in flight at once
def test_peak_memory_stays_within_max_chunk_bytes(bound_mib, batch, passes, threads):
    code = CHILD.format(root=str(ROOT), model=str(ROOT / "models" / "cnn.onnx"), bound=bound_mib * 2**20,
                        batch=batch, passes=passes, threads=threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    grown, runs = done.stdout.split()
    assert int(runs) > 1
    assert float(grown) <= bound_mib * 1.1, f"grew {grown} MiB for a {bound_mib} MiB bound"


SEQUENCE = PREAMBLE + """
session = MCSession({model!r}, seed=0, threads=2)
x = np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)
session.predict(x[:1], passes=1)
before = mib("VmRSS")
session.predict(x[:8], passes=15)  # big enough for workers, but a first one: the main session
session.predict(x, passes=50)  # the workers, given the whole bound
print(mib("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc")
def test_a_large_predict_on_the_main_session_leaves_room_for_the_workers():
    code = SEQUENCE.format(root=str(ROOT), model=str(ROOT / "models" / "cnn.onnx"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) <= 256 * 1.1, f"grew {done.stdout.strip()} MiB for a 256 MiB bound"
