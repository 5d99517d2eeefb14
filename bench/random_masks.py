"""What a random dropout mask costs in onnxruntime's CPU provider, per masked element, for each way
of drawing one with standard ONNX ops.

    python bench/random_masks.py [--elements 20000000]

Small graphs, median of 5 runs after a warm-up. mcdrop draws a mask as ConstantOfShape(bool) ->
RandomUniformLike -> GreaterOrEqual -> Cast, one uniform per masked element. The other rows are
what was tried to make that cheaper (see BENCHMARKS.md, "Random masks: what was tried"):
  - where the cost goes: the draw alone, one elementwise pass of each op a scheme would add;
  - threads: one session run from two threads at once (the node's generator is locked), and
    two single-threaded sessions side by side (what MCSession's workers do);
  - several masks per draw: Multinomial over the 2**k joint patterns of k masks (exact), and a
    Gather of k masks from a table indexed by 16 bits of one uniform (rate quantized to 2**-16
    per pattern, so inexact);
  - other generators: float64 draws, RandomNormalLike, Bernoulli, and the integer ops a counter
    hash would chain (6-10 passes).
"""

import argparse
import itertools
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RATE = 0.2


def _session(nodes, inputs, output, dtype, initializers=(), threads=0, opset=18):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, dtype, None)],
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _fill():
    return helper.make_node("ConstantOfShape", ["shape"], ["like"], value=helper.make_tensor("v", TensorProto.BOOL, [1], [False]))


def _mask_session(seed=123456.0, threads=0):
    nodes = [_fill(), helper.make_node("RandomUniformLike", ["like"], ["u"], dtype=TensorProto.FLOAT, seed=seed),
             helper.make_node("GreaterOrEqual", ["u", "rate"], ["kept"]),
             helper.make_node("Cast", ["kept"], ["mask"], to=TensorProto.FLOAT)]
    return _session(nodes, [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])], "mask", TensorProto.FLOAT,
                    [numpy_helper.from_array(np.array(RATE, np.float32), "rate")], threads)


def _patterns(k):
    """The 2**k joint patterns of k masks (1 = kept, scaled by 1/(1-rate)) and their log-probabilities."""
    kept = np.array(list(itertools.product([0, 1], repeat=k)), np.float32)
    log_p = np.log(np.prod(np.where(kept == 1, 1 - RATE, RATE), axis=1)).astype(np.float32)
    return kept / (1 - RATE), log_p


def timed(call, repeats=5):
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=20_000_000)
    n = parser.parse_args().elements
    shape_in = [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])]
    rng = np.random.default_rng(0)
    rows = []

    def row(name, call, elements=n):
        rows.append((name, timed(call) / elements * 1e9))

    def one_op(op, dtype, values, **attrs):
        x_in = [helper.make_tensor_value_info("x", dtype, ["n"]), helper.make_tensor_value_info("c", dtype, [1])]
        out_type = TensorProto.BOOL if op == "GreaterOrEqual" else dtype
        session = _session([helper.make_node(op, ["x", "c"], ["y"], **attrs)], x_in, "y", out_type)
        feeds = {"x": values, "c": values[:1].copy()}
        return lambda: session.run(None, feeds)

    mask = _mask_session()
    half = {"shape": np.array([n // 2], np.int64)}
    full = {"shape": np.array([n], np.int64)}
    row("mcdrop's mask: RandomUniformLike -> GreaterOrEqual -> Cast, one session", lambda: mask.run(None, full))
    draw = _session([_fill(), helper.make_node("RandomUniformLike", ["like"], ["u"], dtype=TensorProto.FLOAT, seed=1.0)],
                    shape_in, "u", TensorProto.FLOAT)
    row("  the RandomUniformLike draw alone", lambda: draw.run(None, full))

    with ThreadPoolExecutor(2) as pool:
        row("  one session, run from 2 threads at once (half each)",
            lambda: list(pool.map(lambda _: mask.run(None, half), range(2))))
        workers = [_mask_session(seed, threads=1) for seed in (1234567.0, 7654321.0)]
        row("  2 single-threaded sessions side by side (half each; MCSession's workers)",
            lambda: list(pool.map(lambda w: w.run(None, half), workers)))

    for k in (8, 10):
        table, log_p = _patterns(k)
        per_row = 8192
        nodes = [helper.make_node("Expand", ["log_p", "rows"], ["logits"]),
                 helper.make_node("Multinomial", ["logits"], ["pattern"], sample_size=per_row, seed=3.0,
                                  dtype=TensorProto.INT32),
                 helper.make_node("Gather", ["table", "pattern"], ["mask"], axis=0)]
        session = _session(nodes, [helper.make_tensor_value_info("rows", TensorProto.INT64, [2])], "mask",
                           TensorProto.FLOAT, [numpy_helper.from_array(log_p[None], "log_p"),
                                               numpy_helper.from_array(table, "table")])
        feeds = {"rows": np.array([max(1, n // k // per_row), 2**k], np.int64)}
        row(f"Multinomial over the {2**k} patterns of {k} masks + Gather (exact)",
            lambda: session.run(None, feeds), feeds["rows"][0] * per_row * k)

    table = (rng.random((2**16, 8)) >= RATE).astype(np.float32) / (1 - RATE)
    nodes = [_fill(), helper.make_node("RandomUniformLike", ["like"], ["u"], dtype=TensorProto.FLOAT, seed=1.0,
                                       high=float(2**16)),
             helper.make_node("Cast", ["u"], ["index"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "index"], ["mask"], axis=0)]
    gather = _session(nodes, shape_in, "mask", TensorProto.FLOAT, [numpy_helper.from_array(table, "table")])
    row("Gather 8 masks from a 2**16-row table by one uniform (inexact)",
        lambda: gather.run(None, {"shape": np.array([n // 8], np.int64)}))

    for name, dtype, attrs in (("RandomUniformLike float64", TensorProto.DOUBLE, {}),
                               ("RandomNormalLike float32", TensorProto.FLOAT, {})):
        op = name.split()[0]
        session = _session([_fill(), helper.make_node(op, ["like"], ["y"], dtype=dtype, seed=1.0, **attrs)],
                           shape_in, "y", dtype)
        row(name, lambda: session.run(None, full))
    probabilities = np.full(n, 1 - RATE, np.float32)
    bernoulli = _session([helper.make_node("Bernoulli", ["p"], ["y"], seed=1.0)],
                         [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n"])], "y", TensorProto.FLOAT)
    row("Bernoulli float32", lambda: bernoulli.run(None, {"p": probabilities}))

    floats = rng.random(n, dtype=np.float32)
    words = rng.integers(0, 2**32, n, dtype=np.uint32)
    row("one elementwise pass: GreaterOrEqual float32", one_op("GreaterOrEqual", TensorProto.FLOAT, floats))
    row("one elementwise pass: Mul float32", one_op("Mul", TensorProto.FLOAT, floats))
    row("one elementwise pass: Mul uint32", one_op("Mul", TensorProto.UINT32, words))
    row("one elementwise pass: BitwiseXor uint32", one_op("BitwiseXor", TensorProto.UINT32, words))
    row("one elementwise pass: BitShift uint32", one_op("BitShift", TensorProto.UINT32, words, direction="RIGHT"))
    row("one elementwise pass: Mod float32 (fmod)", one_op("Mod", TensorProto.FLOAT, floats, fmod=1))

    print(f"onnxruntime {ort.__version__}, CPU provider, {n:,} masked elements, median of 5")
    print("| way | ns per masked element |")
    print("|---|---|")
    for name, ns in rows:
        print(f"| {name} | {ns:.2f} |")


if __name__ == "__main__":
    main()
