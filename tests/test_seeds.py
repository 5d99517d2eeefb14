"""Seeds: float32-exact minstd states, spread around the generator's cycle, never simple multiples
of each other, and onnxruntime's streams really are shifts of that one cycle."""

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mcdrop.runtime.format import seeds

M, G = seeds.MINSTD_MODULUS, seeds.MINSTD_MULTIPLIER


def positions(states):
    """Discrete logs base 16807 mod 2**31 - 1 (baby-step giant-step): where each state lies on the cycle."""
    step = math.isqrt(M) + 1
    baby, value = {}, 1
    for j in range(step):
        baby.setdefault(value, j)
        value = value * G % M
    giant = pow(G, -step, M)
    found = []
    for state in states:
        y = int(state)
        for i in range(step):
            if y in baby:
                found.append((i * step + baby[y]) % (M - 1))
                break
            y = y * giant % M
    return found


def shortest_relation(c):
    """Length of the shortest (a, b) != 0 with a = c b mod M (Gauss lattice reduction): streams x and
    c x satisfy b u' ~ a u, so a short vector means visibly related uniforms."""
    u, v = (M, 0), (c % M, 1)
    norm = lambda w: w[0] ** 2 + w[1] ** 2  # noqa: E731
    if norm(u) < norm(v):
        u, v = v, u
    while True:
        q = round((u[0] * v[0] + u[1] * v[1]) / norm(v))
        u = (u[0] - q * v[0], u[1] - q * v[1])
        if norm(u) >= norm(v):
            return math.sqrt(norm(v))
        u, v = v, u


def draws(seed, count):
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["like"],
                              value=helper.make_tensor("v", TensorProto.BOOL, [1], [False])),
             helper.make_node("RandomUniformLike", ["like"], ["u"], dtype=TensorProto.FLOAT, seed=float(seed))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"shape": np.array([count], np.int64)})[0]


def test_seeds_are_distinct_float32_exact_states_and_reproducible():
    drawn = seeds.fresh_seeds(200, seed=5)
    assert len(set(drawn)) == 200
    for value in drawn:
        assert 1 <= value <= M - 1
        assert float(np.float32(value)) == value == int(value)
    assert seeds.fresh_seeds(200, seed=5) == drawn
    assert seeds.fresh_seeds(10) != seeds.fresh_seeds(10)


def test_onnxruntime_streams_are_shifts_of_one_cycle():
    # The premise of the spreading: a seed d steps on the cycle replays the stream d draws later.
    first = 123_456_792.0  # float32-exact
    later = int(first) * pow(G, 1000, M) % M
    shift = 1000
    while float(np.float32(later)) != later:
        later, shift = later * G % M, shift + 1
    np.testing.assert_array_equal(draws(first, shift + 50)[shift:], draws(later, 50))


@pytest.mark.parametrize("count", [2, 3, 6, 20])
def test_each_stream_starts_in_the_first_half_of_its_own_arc(count):
    arc = (M - 1) // count
    for seed in range(3):
        found = sorted(positions(seeds.fresh_seeds(count, seed)))
        gaps = [(b - a) % (M - 1) for a, b in zip(found, found[1:] + found[:1])]
        # Each stream may draw half an arc (less the few steps to a float32-exact state) before
        # it reaches the next stream's start.
        assert min(gaps) >= arc // 2 - 10_000


@pytest.mark.parametrize("count", [2, 3, 4, 6, 12, 40])
def test_no_two_streams_are_simple_multiples_of_each_other(count):
    # Exactly even spacing fails this: seeds half the cycle apart are x and -x (relation (1, 1)).
    for seed in range(10):
        states = [int(v) for v in seeds.fresh_seeds(count, seed)]
        for i, a in enumerate(states):
            for b in states[i + 1:]:
                assert shortest_relation(b * pow(a, -1, M)) >= 64


def test_sessions_sharing_a_seed_take_disjoint_shares_of_one_spread():
    together = seeds.fresh_seeds(3 * 4, seed=9)
    shares = [seeds.stream_seeds(3, 9, stream, 4) for stream in range(4)]
    assert sum(shares, []) == together
    assert seeds.stream_seeds(3, 9, 0, 1) == seeds.fresh_seeds(3, seed=9)
