"""The runtime's own reading of ONNX files (runtime/format/onnx_file.py, runtime/format/integrity.py), the limits
and the terminal escaping, each against a reference: the onnx package, hashlib, hand-made cases."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mcdrop import cli
from conftest import ROOT
from mcdrop.runtime.errors import InputError, ModelFileError
from mcdrop.runtime.format.integrity import CHECKSUM_KEY, seal, verify
from mcdrop.runtime.limits import Limits
from mcdrop.runtime.format.onnx_file import RANDOM_OPS, read_model
from mcdrop.runtime.session import MCSession
from toy_model import build_toy_model

SHIPPED = sorted((ROOT / "models").glob("*.onnx"))


def onnx_random_nodes(proto):
    """(name, seed) of the random nodes, as the onnx package reads them, subgraphs included."""
    found = []

    def walk(graph):
        for node in graph.node:
            if node.op_type in RANDOM_OPS:
                found.append((node.name, next(a.f for a in node.attribute if a.name == "seed")))
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    walk(sub)

    walk(proto.graph)
    return found


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_random_nodes_and_metadata_match_the_onnx_package(path):
    data = path.read_bytes()
    parsed, proto = read_model(data), onnx.load_from_string(data)
    assert [(n.name, n.seed) for n in parsed.random_nodes] == [(n, np.float32(s)) for n, s in onnx_random_nodes(proto)]
    for node in parsed.random_nodes:
        assert np.frombuffer(data, "<f4", 1, node.seed_offset)[0] == np.float32(node.seed)
    assert {k: v.decode() for k, v in parsed.metadata.items()} == {p.key: p.value for p in proto.metadata_props}
    assert parsed.external_data == []


def test_random_nodes_inside_subgraphs_are_found(tmp_path):
    inner = helper.make_graph([helper.make_node("RandomUniformLike", ["x"], ["u"], name="inner_random", seed=5.0)],
                              "branch", [], [helper.make_tensor_value_info("u", TensorProto.FLOAT, [2])])
    outer = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    proto = helper.make_model(outer)
    parsed = read_model(proto.SerializeToString())
    assert [(n.name, n.seed) for n in parsed.random_nodes] == onnx_random_nodes(proto) == [("inner_random", 5.0)] * 2


def test_a_graph_cut_to_some_outputs_keeps_what_they_need_and_gives_the_same_values():
    """runtime/format/graph_outputs.py against the onnx package and onnxruntime: the cut graph declares
    the kept output alone and holds only the nodes and initializers it needs (an If's branch reading a
    value from outside included); an initializer listed as a graph input stays, so the feeds do not change."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from mcdrop.runtime.format.graph_outputs import keep_outputs

    def branch(op):
        return helper.make_graph([helper.make_node(op, ["h"], ["y"])], op, [],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])

    values = {"w": [1.0, 2.0], "v": [3.0, 4.0], "u": [5.0, 6.0]}
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["h"], name="add"),
         helper.make_node("If", ["c"], ["a"], name="if", then_branch=branch("Identity"), else_branch=branch("Neg")),
         helper.make_node("RandomUniformLike", ["x"], ["r"], name="random", seed=1.0),
         helper.make_node("Mul", ["r", "v"], ["b"], name="mul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("u", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in ("a", "b")],
        [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in values.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    proto.metadata_props.add(key="kept", value="as it was")
    cut = onnx.load_from_string(keep_outputs(proto.SerializeToString(), ["a"]))
    onnx.checker.check_model(cut)
    assert [o.name for o in cut.graph.output] == ["a"] and [n.name for n in cut.graph.node] == ["add", "if"]
    assert sorted(t.name for t in cut.graph.initializer) == ["u", "w"]
    assert [i.name for i in cut.graph.input] == ["x", "c", "u"] and cut.metadata_props[0].value == "as it was"
    feeds = {"x": np.array([0.5, -1.0], np.float32), "c": np.array(False)}
    whole, alone = (ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]) for p in (proto, cut))
    np.testing.assert_array_equal(alone.run(["a"], feeds)[0], whole.run(["a"], feeds)[0])


def test_a_graph_cut_keeps_a_producer_listed_after_its_consumer():
    """onnxruntime loads a graph whose nodes are not sorted; the cut keeps what the output needs anyway."""
    import onnxruntime as ort

    from mcdrop.runtime.format.graph_outputs import keep_outputs

    graph = helper.make_graph(
        [helper.make_node("Neg", ["t"], ["h"], name="neg"), helper.make_node("Mul", ["x", "x"], ["t"], name="mul"),
         helper.make_node("Abs", ["x"], ["other"], name="abs")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in ("h", "other")])
    cut = keep_outputs(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
                       .SerializeToString(), ["h"])
    assert [n.name for n in onnx.load_from_string(cut).graph.node] == ["neg", "mul"]
    found = ort.InferenceSession(cut, providers=["CPUExecutionProvider"]).run(["h"], {"x": np.array([2, 3], np.float32)})
    np.testing.assert_array_equal(found[0], [-4, -9])


def test_bytes_that_look_like_a_seed_outside_the_graph_nodes_are_not_seeds(tmp_path):
    proto = onnx.load(build_toy_model(tmp_path / "toy.onnx", sealed=False))
    marker = b"\x0a\x04seed\x15" + np.float32(42.0).tobytes()
    proto.graph.initializer.append(helper.make_tensor("noise", TensorProto.UINT8, [len(marker) * 3], marker * 3,
                                                      raw=True))
    assert len(read_model(proto.SerializeToString()).random_nodes) == 2


@pytest.mark.parametrize("data, message", [
    (b"\x0a\xff\xff\xff\xff\x0f", "runs past"),  # a field longer than the file
    (b"\x0b", "wire type 3"),  # a group: not in ONNX
    (b"\x08" + b"\xff" * 11, "bad varint"),
    (b"\x08\x07", "no graph"),
])
def test_malformed_protobuf_is_a_model_file_error(data, message):
    with pytest.raises(ModelFileError, match=message):
        read_model(data, "bad.onnx")


def test_graphs_nested_too_deep_are_refused():
    """Written field by field: the protobuf library itself refuses to build such a message."""
    from mcdrop.runtime.format import onnx_file as wire

    graph = b""
    for _ in range(wire.MAX_DEPTH + 1):
        attribute = wire._length_field(wire.ATTR_NAME, b"body") + wire._length_field(wire.ATTR_G, graph)
        graph = wire._length_field(wire.GRAPH_NODE, wire._length_field(wire.NODE_ATTRIBUTE, attribute))
    with pytest.raises(ModelFileError, match="nested more than"):
        read_model(wire._length_field(wire.MODEL_GRAPH, graph))


def test_seal_appends_the_sha256_of_the_rest_and_verify_checks_it(tmp_path):
    data = onnx.load(build_toy_model(tmp_path / "t.onnx", sealed=False)).SerializeToString()
    sealed = seal(data)
    assert sealed.startswith(data)
    parsed = read_model(sealed)
    assert parsed.metadata[CHECKSUM_KEY] == hashlib.sha256(data).hexdigest().encode()
    verify(sealed, parsed, "t.onnx")
    assert seal(sealed) == sealed  # sealing again replaces the entry with the same one
    assert onnx.load_from_string(sealed).graph == onnx.load_from_string(data).graph  # still plain ONNX
    tampered = bytearray(sealed)
    tampered[len(data) // 2] ^= 1
    with pytest.raises(ModelFileError, match="modified after export"):
        verify(bytes(tampered), read_model(bytes(tampered)), "t.onnx")
    with pytest.raises(ModelFileError, match="no integrity checksum"):
        verify(data, read_model(data), "t.onnx")


def test_limits_parse_and_refuse_with_the_way_to_raise_them():
    limits = Limits.parse(["passes=20000", "model-mb=10.5", "threads=64"])
    assert (limits.passes, limits.model_mb, limits.max_threads) == (20000, 10.5, 64)
    assert Limits().max_threads == len(os.sched_getaffinity(0))
    with pytest.raises(InputError, match="--limit passes=N"):
        limits.check("passes", 20001, "passes 20,001")
    limits.check("passes", 20000, "passes 20,000")
    for bad, message in ((["passes"], "NAME=VALUE"), (["speed=3"], "NAME=VALUE"), (["passes=inf"], "finite"),
                         (["passes=1.5"], "whole number"), (["passes=-3"], "positive")):
        with pytest.raises(InputError, match=message):
            Limits.parse(bad)


@pytest.mark.parametrize("text, shown", [
    ("plain label", "plain label"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("two\nlines\r", "two\\x0alines\\x0d"),
    ("right\u202eleft", "right\\u202eleft"),
    ("bad\udcffbyte", "bad\\xffbyte"),
    ("ünïcödé 数字", "ünïcödé 数字"),
])
def test_terminal_safe_escapes_every_control_character(text, shown):
    assert cli.terminal_safe(text) == shown


def test_valid_text_turns_undecodable_file_name_bytes_into_escapes():
    assert cli.valid_text(os.fsdecode(b"a\xffb.png")) == "a\\xffb.png"
    assert cli.valid_text("ok.png") == "ok.png"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_passes_and_stochastic_are_plain_inputs_and_a_plain_session_prints_nothing(path):
    """Format 2: onnxruntime-node and -web hide initializers listed as graph inputs, and every
    binding warns about them at session creation, so the controls have none (docs/FORMAT.md)."""
    proto = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in proto.graph.input] == ["input", "passes", "stochastic", "masks"]
    assert not {"passes", "stochastic", "masks"} & {t.name for t in proto.graph.initializer}
    script = ("import sys, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']);"
              "print([i.name for i in s.get_inputs()], [i.name for i in s.get_overridable_initializers()])")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    assert done.stderr == ""
    assert done.stdout.strip() == "['input', 'passes', 'stochastic', 'masks'] []"


def test_a_format_1_file_with_default_initializers_still_runs(tmp_path):
    """Files written before format 2 carry `passes` and `stochastic` initializers; the runtime
    always feeds both, so they run as before."""
    path = build_toy_model(tmp_path / "toy.onnx", sealed=False)
    proto = onnx.load(path)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(3, np.int64), "passes"),
                                    onnx.numpy_helper.from_array(np.array(True), "stochastic")])
    entry = next(p for p in proto.metadata_props if p.key == "mcdrop")
    entry.value = entry.value.replace('"format": 2', '"format": 1')
    assert '"format": 1' in entry.value
    (tmp_path / "old.onnx").write_bytes(seal(proto.SerializeToString()))
    prediction = MCSession(tmp_path / "old.onnx", seed=0).predict(np.ones((2, 4), np.float32), passes=5)
    assert prediction.samples.shape[:2] == (5, 2)
