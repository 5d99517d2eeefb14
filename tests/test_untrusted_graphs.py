"""Untrusted graphs: what a hostile ONNX file's graph can ask of onnxruntime is bounded or stoppable.

Each file is the toy model (tests/toy_model.py) with a hostile part grafted on and sealed again,
so that only the checks behind the checksum stand between it and onnxruntime (as --no-verify).
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mcdrop
from conftest import ROOT
from mcdrop.runtime.integrity import seal
from toy_model import build_toy_model

X = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
# Children import the mcdrop these tests import (a PYTHONPATH entry, or the editable install).
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(mcdrop.__file__))), os.environ.get("PYTHONPATH", "")])}
# Click's progress bar prints its label on stderr before the runs start.
PROGRESS = "Monte Carlo runs"
# A generous bound for a stop on a loaded 2-core CI machine; the stop itself takes about STOP_GRACE_S.
STOP_WITHIN_S = 10


def toy_proto(tmp_path):
    return onnx.load(build_toy_model(tmp_path / "base.onnx", sealed=False))


def write_model(proto, path):
    path.write_bytes(seal(proto.SerializeToString()))
    return path


def graft(proto, nodes, initializers=(), into="samples"):
    """Add `nodes` whose last output is a float scalar (or [1]) added to `into`, so the hostile part
    runs on every run and nothing folds it away."""
    graph = proto.graph
    graph.initializer.extend(initializers)
    graph.node.extend(nodes)
    producer = next(n for n in graph.node if into in n.output)
    producer.output[list(producer.output).index(into)] = into + "_raw"
    graph.node.append(helper.make_node("Add", [into + "_raw", nodes[-1].output[0]], [into]))
    return proto


def endless_loop(proto):
    """A Loop of 10^12 iterations whose state starts from the passes input (nothing to fold)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["state_in", "loop_one"], ["state_out"])],
        "endless",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array([1.0], np.float32), "loop_one")])
    return graft(proto, [
        helper.make_node("Cast", ["passes_1d"], ["loop_start"], to=TensorProto.FLOAT),
        helper.make_node("Loop", ["loop_trips", "loop_true", "loop_start"], ["loop_state"], body=body),
        helper.make_node("Mul", ["loop_state", "loop_zero"], ["loop_nothing"]),
    ], [numpy_helper.from_array(np.array(10**12, np.int64), "loop_trips"),
        numpy_helper.from_array(np.array(True), "loop_true"),
        numpy_helper.from_array(np.array([0.0], np.float32), "loop_zero")])


# 2. A run can be stopped -------------------------------------------------------------------------

@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_ctrl_c_and_sigterm_end_an_endless_loop_at_once(tmp_path, stop, threads):
    """`cli.py infer` on a file whose graph never ends: the signal ends it within seconds, in one
    line, for a run in the main session (--threads 1) and one shared by the workers (2)."""
    model = write_model(endless_loop(toy_proto(tmp_path)), tmp_path / "endless.onnx")
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.repeat(X, 2000, axis=0))  # enough work for the workers (2 threads)
    # The child gets SIGINT's default handler: a parent (an xdist worker) may ignore SIGINT, and
    # its children would inherit that.
    script = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "sys.argv = ['cli.py', *sys.argv[1:]]; from mcdrop import cli; cli.main()")
    child = subprocess.Popen([sys.executable, "-c", script, "infer", str(inputs), "--model", str(model),
                              "--threads", threads, "--passes", "50", "--json"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=CHILD_ENV)
    seen = ""
    while PROGRESS not in seen:  # the runs are starting
        char = child.stderr.read(1)
        assert char, (seen, child.communicate())
        seen += char
    time.sleep(0.5)  # inside the loop
    assert child.poll() is None, child.communicate()
    sent = time.monotonic()
    child.send_signal(stop)
    try:
        _, stderr = child.communicate(timeout=STOP_WITHIN_S)
        stderr = seen + stderr
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail(f"still running {STOP_WITHIN_S} s after the signal")
    took = time.monotonic() - sent
    assert "Traceback" not in stderr
    assert child.returncode == (130 if stop == signal.SIGINT else 128 + signal.SIGTERM), stderr
    lines = [line for line in stderr.splitlines() if line.strip() and line.strip() != PROGRESS]
    assert len(lines) <= 1 and all(line.startswith("error: ") for line in lines), stderr
    print(f"stopped in {took:.2f} s")
