"""What a random draw costs in onnxruntime's CPU provider, per element, for each standard op.

    python bench/random_masks.py [--elements 20000000]

One-node graphs (plus the ConstantOfShape that gives the *Like ops their shape), median of 5
runs, default threads. A dropout mask in mcdrop costs one RandomUniformLike draw per masked
element plus GreaterOrEqual, Cast and Mul; the elementwise rows show what each extra pass over
the tensor costs, which is what any scheme that squeezes several masks out of one draw pays.
"""

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def _session(nodes, inputs, output, dtype):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, dtype, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _like(op, dtype, **attrs):
    fill = helper.make_node("ConstantOfShape", ["shape"], ["like"], value=helper.make_tensor("v", TensorProto.BOOL, [1], [False]))
    return [fill, helper.make_node(op, ["like"], ["y"], dtype=dtype, seed=123456.0, **attrs)]


def ns_per_element(session, feeds, elements, repeats=5):
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / elements * 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=20_000_000)
    n = parser.parse_args().elements
    shape_in = [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])]
    x_in = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])]
    shape_feed = {"shape": np.array([n], np.int64)}
    x_feed = {"x": np.random.default_rng(0).random(n, dtype=np.float32)}
    rows = [
        ("RandomUniformLike float32 (mcdrop's draw)", _session(_like("RandomUniformLike", TensorProto.FLOAT), shape_in, "y", TensorProto.FLOAT), shape_feed),
        ("RandomUniformLike float64 (2 generator calls, 53 bits)", _session(_like("RandomUniformLike", TensorProto.DOUBLE), shape_in, "y", TensorProto.DOUBLE), shape_feed),
        ("RandomNormalLike float32", _session(_like("RandomNormalLike", TensorProto.FLOAT), shape_in, "y", TensorProto.FLOAT), shape_feed),
        ("Bernoulli float32", _session([helper.make_node("Bernoulli", ["x"], ["y"], seed=123456.0)], x_in, "y", TensorProto.FLOAT), x_feed),
        ("GreaterOrEqual (one elementwise pass)", _session([helper.make_node("GreaterOrEqual", ["x", "x"], ["y"])], x_in, "y", TensorProto.BOOL), x_feed),
        ("Mul (one elementwise pass)", _session([helper.make_node("Mul", ["x", "x"], ["y"])], x_in, "y", TensorProto.FLOAT), x_feed),
    ]
    print(f"onnxruntime {ort.__version__}, CPU provider, {n:,} elements, median of 5")
    print("| op | ns per element |")
    print("|---|---|")
    for name, session, feeds in rows:
        print(f"| {name} | {ns_per_element(session, feeds, n):.2f} |")


if __name__ == "__main__":
    main()
