"""Untrusted graphs: what a hostile ONNX file's graph can ask of onnxruntime is bounded or stoppable.

Each file is the toy model (tests/toy_model.py) with a hostile part grafted on and sealed again,
so that only the checks behind the checksum stand between it and onnxruntime (as --no-verify).
"""

import os
import re
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
from mcdrop.runtime.errors import McdropError
from mcdrop.runtime.format.integrity import seal
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
    # (the label does not end its line when the run is stopped)
    lines = [line for line in stderr.replace(PROGRESS, "").splitlines() if line.strip()]
    assert len(lines) <= 1 and all(line.startswith("error: ") for line in lines), stderr
    print(f"stopped in {took:.2f} s")


# 1. Tensors bounded before onnxruntime allocates them ------------------------------------------

# The child's address space: the CLI maps about 2.3 GB (VmPeak, 2 cores), so an allocation of
# gigabytes fails at once instead of taking the machine's memory when a check is missing.
ADDRESS_SPACE = 6 * 2**30
# `cli.py infer` on the toy model peaks at about 150 MiB resident; the hostile tensors are 13 GiB.
PEAK_BOUND_MIB = 512
BOUNDED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.argv = ["cli.py", *sys.argv[1:]]
from mcdrop import cli
try:
    cli.main()
finally:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(f"peak {{peak // 1024}}", file=sys.stderr)
""".format(limit=ADDRESS_SPACE)
HUGE = [60000, 60000]  # 13.4 GiB of float32


def run_bounded(*args):
    """(return code, stderr lines without the peak, peak MiB) of cli.py ARGS in a child whose
    address space is bounded."""
    done = subprocess.run([sys.executable, "-c", BOUNDED, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=CHILD_ENV)
    lines = done.stderr.splitlines()
    assert lines and lines[-1].startswith("peak "), done.stderr
    return done.returncode, lines[:-1], int(lines[-1].split()[1])


def summed(nodes, value_name):
    """nodes, then a ReduceSum of value_name to a scalar (what graft adds to the samples)."""
    return nodes + [helper.make_node("ReduceSum", [value_name], [value_name + "_sum"], keepdims=0)]


def ints(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def hostile_fixed(kind):
    """(nodes, initializers) asking for a HUGE float tensor from constants alone."""
    one = numpy_helper.from_array(np.ones((1, 1), np.float32), "h_one")
    if kind == "ConstantOfShape":
        return summed([helper.make_node("ConstantOfShape", ["h_shape"], ["h_big"],
                                        value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))],
                      "h_big"), [ints("h_shape", HUGE)]
    if kind == "Expand":
        return summed([helper.make_node("Constant", [], ["h_shape"], value_ints=HUGE),
                       helper.make_node("Expand", ["h_one", "h_shape"], ["h_big"])], "h_big"), [one]
    if kind == "Tile":
        return summed([helper.make_node("Tile", ["h_one", "h_reps"], ["h_big"])], "h_big"), [one, ints("h_reps", HUGE)]
    if kind == "Resize":
        return summed([helper.make_node("Resize", ["h_one", "", "", "h_sizes"], ["h_big"])], "h_big"), \
            [one, ints("h_sizes", HUGE)]
    if kind == "Pad":
        return summed([helper.make_node("Pad", ["h_one", "h_pads"], ["h_big"])], "h_big"), \
            [one, ints("h_pads", [0, 0, HUGE[0] - 1, HUGE[1] - 1])]
    if kind == "RandomNormal":
        return summed([helper.make_node("RandomNormal", [], ["h_big"], shape=HUGE, seed=1.0)], "h_big"), []
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["ConstantOfShape", "Expand", "Tile", "Resize", "Pad", "RandomNormal"])
def test_a_fixed_huge_tensor_is_refused_before_anything_is_allocated(tmp_path, kind):
    nodes, initializers = hostile_fixed(kind)
    model = write_model(graft(toy_proto(tmp_path), nodes, initializers), tmp_path / "huge.onnx")
    inputs = tmp_path / "x.npy"
    np.save(inputs, X)
    code, lines, peak = run_bounded("infer", inputs, "--model", model, "--no-verify", "--json")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "h_big" in lines[0] and "[60000, 60000]" in lines[0], lines
    assert "over the tensor_mb limit (1,024); raise it with --limit tensor_mb=N" in lines[0], lines
    assert peak < PEAK_BOUND_MIB


def test_a_huge_sparse_initializer_is_refused(tmp_path):
    """onnxruntime makes a sparse initializer dense when it loads the file: one value, 13 GiB."""
    proto = toy_proto(tmp_path)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(1, np.float32), "h_sparse"),
                                       ints("h_index", [[0, 0]]), HUGE)
    proto.graph.sparse_initializer.append(sparse)
    graft(proto, summed([], "h_sparse"))
    from mcdrop.runtime.session import MCSession
    with pytest.raises(McdropError, match=r"sparse initializer 'h_sparse' \[60000, 60000\].*tensor_mb"):
        MCSession(write_model(proto, tmp_path / "sparse.onnx"))


def test_a_huge_tensor_inside_a_loop_body_is_refused(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("ConstantOfShape", ["h_shape"], ["h_big"],
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
         helper.make_node("ReduceSum", ["h_big"], ["h_sum"], keepdims=1, axes=[0, 1]),
         helper.make_node("Reshape", ["h_sum", "h_one_shape"], ["h_flat"]),
         helper.make_node("Add", ["state_in", "h_flat"], ["state_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1])])
    proto = graft(toy_proto(tmp_path), [
        helper.make_node("Cast", ["passes_1d"], ["h_start"], to=TensorProto.FLOAT),
        helper.make_node("Loop", ["h_trips", "", "h_start"], ["h_state"], body=body),
        helper.make_node("Mul", ["h_state", "h_zero"], ["h_nothing"]),
    ], [ints("h_trips", 1), ints("h_shape", HUGE), ints("h_one_shape", [1]),
        numpy_helper.from_array(np.zeros(1, np.float32), "h_zero")])
    from mcdrop.runtime.session import MCSession
    with pytest.raises(McdropError, match=r"'h_big' \[60000, 60000\].*tensor_mb"):
        MCSession(write_model(proto, tmp_path / "loop.onnx"))


def expanded_from_input(proto, hidden=False):
    """A tensor of [passes x 2^30] floats, its shape computed from the passes input at run time;
    hidden: through CumSum, which tensor_bounds does not follow, so only onnxruntime's arena cap
    stands in its way."""
    shape = "h_shape"
    nodes = [helper.make_node("Mul", ["passes_1d", "h_huge"], ["h_shape"])]
    if hidden:
        nodes.append(helper.make_node("CumSum", ["h_shape", "h_axis"], ["h_hidden"]))
        shape = "h_hidden"
    nodes += [helper.make_node("ConstantOfShape", [shape], ["h_big"],
                               value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
              helper.make_node("ReduceSum", ["h_big"], ["h_sum"], keepdims=0)]
    return graft(proto, nodes, [ints("h_huge", [2**30]), ints("h_axis", 0)])


def test_a_tensor_expanded_from_the_input_is_refused_before_the_run(tmp_path):
    model = write_model(expanded_from_input(toy_proto(tmp_path)), tmp_path / "expand.onnx")
    from mcdrop.runtime.session import MCSession
    session = MCSession(model)  # nothing is known of its size until passes is
    with pytest.raises(McdropError, match=r"a ConstantOfShape node: output 'h_big' \[2147483648\] \(8,192 MiB\) is over "
                                          r"the tensor_mb limit"):
        session.predict(X, passes=2)
    inputs = tmp_path / "x.npy"
    np.save(inputs, X)
    code, lines, peak = run_bounded("infer", inputs, "--model", model, "--passes", "2", "--json")
    assert code == 2 and len(lines) == 1 and "h_big" in lines[0] and "tensor_mb" in lines[0], lines
    assert peak < PEAK_BOUND_MIB


def test_a_tensor_the_checks_cannot_see_is_refused_by_the_arena_cap(tmp_path):
    model = write_model(expanded_from_input(toy_proto(tmp_path), hidden=True), tmp_path / "hidden.onnx")
    inputs = tmp_path / "x.npy"
    np.save(inputs, X)
    code, lines, peak = run_bounded("infer", inputs, "--model", model, "--passes", "2", "--json")
    assert code == 2 and len(lines) == 1, lines
    assert "a run asked onnxruntime for 8,192 MiB in node" in lines[0] and "--limit tensor_mb=N" in lines[0], lines
    assert peak < PEAK_BOUND_MIB


def test_the_limit_can_be_raised_and_bounds_what_loading_folds(tmp_path):
    """Three constant tensors of 0.5 MiB: each within tensor_mb=1, together (what onnxruntime
    folds at load) over it; tensor_mb=2 takes them."""
    nodes, initializers = [], []
    for i in range(3):
        nodes += [helper.make_node("ConstantOfShape", [f"h_shape{i}"], [f"h_c{i}"],
                                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
                  helper.make_node("ReduceSum", [f"h_c{i}"], [f"h_s{i}"], keepdims=0)]
        initializers.append(ints(f"h_shape{i}", [256, 512]))
    nodes += [helper.make_node("Sum", ["h_s0", "h_s1", "h_s2"], ["h_total"])]
    model = write_model(graft(toy_proto(tmp_path), nodes, initializers), tmp_path / "folded.onnx")
    from mcdrop.runtime.limits import Limits
    from mcdrop.runtime.session import MCSession
    with pytest.raises(McdropError, match=r"the \d+ tensors onnxruntime computes from constants .*\(2 MiB in all\) is "
                                          r"over the tensor_mb limit \(1\)"):
        MCSession(model, limits=Limits(tensor_mb=1))
    assert MCSession(model, limits=Limits(tensor_mb=2)).predict(X, passes=2).mean.shape == (2, 3)


# 3. Token ids outside the vocabulary ------------------------------------------------------------

VOCABULARY = 10


def embedding_model(tmp_path, table_from="initializer", ids_from="cast"):
    """The toy model whose input also feeds an Embedding of VOCABULARY rows, tiled by the passes as
    the exporter tiles inputs. ids_from "cast": the ids cast to int64, as tf2onnx writes Keras 2's
    Embedding; "wrapped": then Where(ids < 0, ids + rows, ids), as it writes Keras 3's (negative
    ids count from the end, as numpy's take does). table_from "einsum": the table comes out of
    Einsum, which tensor_bounds does not follow, so its size is unknown before the run."""
    table = numpy_helper.from_array(np.linspace(0, 1, VOCABULARY, dtype=np.float32).reshape(VOCABULARY, 1), "h_table")
    nodes = [helper.make_node("Cast", ["tiled"], ["h_ids"], to=TensorProto.INT64)]
    if table_from == "einsum":
        nodes.append(helper.make_node("Einsum", ["h_table"], ["h_hidden"], equation="ij->ij"))
    if ids_from == "wrapped":
        nodes += [helper.make_node("Less", ["h_ids", "h_zero_id"], ["h_negative"]),
                  helper.make_node("Add", ["h_ids", "h_rows"], ["h_from_end"]),
                  helper.make_node("Where", ["h_negative", "h_from_end", "h_ids"], ["h_wrapped"])]
    nodes += [
        helper.make_node("Gather", ["h_hidden" if table_from == "einsum" else "h_table",
                                    "h_wrapped" if ids_from == "wrapped" else "h_ids"], ["h_embedded"],
                         name="embedding/Gather"),
        helper.make_node("ReduceSum", ["h_embedded"], ["h_sum"], keepdims=0),
        helper.make_node("Mul", ["h_sum", "h_zero"], ["h_nothing"]),
    ]
    proto = graft(toy_proto(tmp_path), nodes, [table, numpy_helper.from_array(np.array(0, np.float32), "h_zero"),
                                               ints("h_zero_id", 0), ints("h_rows", VOCABULARY)])
    return write_model(proto, tmp_path / "embedding.onnx")


@pytest.mark.parametrize("bad", [VOCABULARY, -1, 1e6])
def test_a_token_id_outside_the_vocabulary_is_one_line_naming_the_input(tmp_path, bad):
    from mcdrop.runtime.session import MCSession
    model = embedding_model(tmp_path)
    ids = np.tile(np.arange(4, dtype=np.float32), (2, 1))
    session = MCSession(model)
    assert session.predict(ids, passes=2).mean.shape == (2, 3)  # ids within the vocabulary run
    ids[1, 2] = bad
    with pytest.raises(McdropError, match=rf"input 'input' holds 1 token ids outside the model's vocabulary of "
                                          rf"{VOCABULARY} \(ids 0 to {VOCABULARY - 1}\), the first {re.escape(f'{bad:g}')} at \[1, 2\]"):
        session.predict(ids, passes=2)
    inputs = tmp_path / "ids.npy"
    np.save(inputs, ids)
    code, lines, _ = run_bounded("infer", inputs, "--model", model, "--json")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: input 'input' holds 1 token ids outside the model's vocabulary of 10"), lines


@pytest.mark.parametrize("table_from, ids_from", [("einsum", "cast"), ("initializer", "wrapped")])
def test_onnxruntime_refusing_a_token_id_is_one_line_naming_the_input(tmp_path, table_from, ids_from):
    """Where the table's size is known only to onnxruntime, or the ids reach it through arithmetic
    (Keras 3's wrap of negative ids), onnxruntime's refusal becomes one line naming the input."""
    from mcdrop.runtime.session import MCSession
    ids = np.tile(np.arange(4, dtype=np.float32), (2, 1))
    ids[1, 2] = 12
    with pytest.raises(McdropError, match=r"input 'input' holds a token id outside the model's vocabulary of 10 "
                                          r"\(ids 0 to 9\): onnxruntime got 12 in node 'embedding/Gather' \(Gather\)$"):
        MCSession(embedding_model(tmp_path, table_from, ids_from)).predict(ids, passes=2)


def test_small_float_inputs_do_not_make_every_call_a_new_bounds_check(toy_model_path):
    # The bounds walk reads small integer feeds only: float rows must share one checked shape, or a
    # long-lived session predicting one tabular row at a time would redo the walk and grow forever.
    from mcdrop.runtime.session import MCSession

    session = MCSession(toy_model_path, threads=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        session.predict(rng.normal(size=(1, 4)).astype(np.float32), passes=3)
    assert len(session._checked_feeds) == 1
