"""The portable profile (issue 25; docs/FORMAT.md: Portable profile): `cli.py convert --portable`
rewrites the shipped files so that no random op is left, masks come in as uint8 keep masks built
from a mask seed (or baked), shapes are fixed, and the samples equal the standard file's shared
mode; NNAPI and Core ML MLProgram take the whole fixed-shape graph per onnxruntime's checker."""

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from mcdrop import cli  # noqa: E402
from mcdrop.convert import convert_file  # noqa: E402
from mcdrop.convert.accelerators import mobile_coverage  # noqa: E402
from mcdrop.convert.portable import RANDOM_OPS  # noqa: E402
from mcdrop.runtime.errors import InputError, ModelFileError  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"
CNN, MLP = MODELS / "cnn.onnx", MODELS / "mlp.onnx"
CNN_FLOATS_PER_PASS = 87_616
TOLERANCE = 1e-5  # issue 25's acceptance; the graphs make the same float32 operations (measured: 0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path}: the shipped CNN and MLP at B=1, T=32; the CNN at T=50, any batch; the MLP baked."""
    folder = tmp_path_factory.mktemp("portable")
    made = {"cnn": (CNN, dict(batch_size=1, passes=32)), "mlp": (MLP, dict(batch_size=1, passes=32)),
            "cnn_any": (CNN, dict(passes=50)), "mlp_baked": (MLP, dict(passes=20, bake_masks=7))}
    for name, (source, options) in made.items():
        convert_file(source, folder / f"{name}.onnx", validate=False, **options)
    return {name: folder / f"{name}.onnx" for name in made}


def inputs(path, count, seed=0):
    shape = MCSession(path).info.input_shape[1:]
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


def graph_io(path):
    graph = onnx.load(path).graph
    dims = lambda value: [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]  # noqa: E731
    return ({v.name: (v.type.tensor_type.elem_type, dims(v)) for v in graph.input},
            {v.name: dims(v) for v in graph.output}, graph)


def test_no_random_op_left(files):
    assert {node.op_type for node in onnx.load(CNN).graph.node} & set(RANDOM_OPS)  # the standard file draws
    for path in files.values():
        ops = {node.op_type for node in onnx.load(path).graph.node}
        assert not ops & {*RANDOM_OPS, "ConstantOfShape", "GreaterOrEqual", "ReduceSum", "Log", "Neg"}, (path, ops)


@pytest.mark.parametrize("name, standard", [("cnn", CNN), ("mlp", MLP), ("cnn_any", CNN)])
def test_samples_equal_the_standard_shared_mode(files, name, standard):
    x = inputs(standard, 3)
    reference, portable = MCSession(standard, seed=1), MCSession(files[name], seed=1)
    for passes in (5, 70):  # within and past the file's T: runs of T passes (the last cut), batch padded
        want = reference.predict(x, passes=passes, masks="shared", mask_seed=11)
        got = portable.predict(x, passes=passes, mask_seed=11)
        assert got.samples.shape == want.samples.shape == (passes, 3, 10)
        assert np.max(np.abs(got.samples - want.samples)) <= TOLERANCE
        assert np.max(np.abs(got.measures["mutual_information"] - want.measures["mutual_information"])) <= TOLERANCE
    plain = reference.predict(x, dropout=False).samples
    assert np.max(np.abs(portable.predict(x, dropout=False).samples - plain)) <= TOLERANCE


def test_fixed_shapes(files):
    inputs_, outputs, _ = graph_io(files["cnn"])
    assert inputs_ == {"input": (onnx.TensorProto.FLOAT, [1, 28, 28, 1]), "stochastic": (onnx.TensorProto.BOOL, []),
                       "masks": (onnx.TensorProto.UINT8, [32, CNN_FLOATS_PER_PASS])}
    assert outputs == {"samples": [32, 1, 10]}
    assert MCSession(files["cnn"]).info.portable == {"batch": 1, "passes": 32, "masks": "keep-uint8", "baked": None}


def test_mask_bytes_per_call_are_a_quarter_of_the_standard_set(files):
    inputs_, _, _ = graph_io(files["cnn_any"])
    standard_bytes = 50 * CNN_FLOATS_PER_PASS * 4  # float32 [T, floats_per_pass]: 17.5 MB
    elem_type, dims = inputs_["masks"]
    portable_bytes = np.prod(dims) * onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    assert dims == [50, CNN_FLOATS_PER_PASS] and portable_bytes <= standard_bytes / 4


def test_baked_file_holds_its_set(files):
    inputs_, _, graph = graph_io(files["mlp_baked"])
    assert set(inputs_) == {"input", "stochastic"}  # no mask bytes per call
    assert any(init.name == "masks" and init.data_type == onnx.TensorProto.UINT8 for init in graph.initializer)
    x = inputs(MLP, 4)
    want = MCSession(MLP).predict(x, passes=15, masks="shared", mask_seed=7).samples
    got = MCSession(files["mlp_baked"]).predict(x, passes=15)
    assert np.max(np.abs(got.samples - want)) <= TOLERANCE and got.mask_seed == 7


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_nnapi_and_core_ml_take_every_node(files, name):
    for provider, coverage in mobile_coverage(files[name]).items():
        assert coverage.whole, (provider, str(coverage))
    assert not mobile_coverage(CNN)["NNAPI"].whole  # the standard file: 31 of 102 nodes, 3 partitions


def raw_masks(dtype=np.uint8, rows=32, value=1):
    return np.full((rows, CNN_FLOATS_PER_PASS), value, dtype=dtype)


BAD_CALLS = {
    "independent masks": ("cnn", lambda s, x: s.predict(x, masks="independent"), "shared masks only"),
    "more passes than baked": ("mlp_baked", lambda s, x: s.predict(x, passes=21), "holds 20 baked passes"),
    "another seed than baked": ("mlp_baked", lambda s, x: s.predict(x, mask_seed=8), "baked mask set of seed 7"),
    "masks of the wrong dtype": ("cnn", lambda s, x: s.run_raw(x[:1], 32, masks=raw_masks(np.float32)), "dtype float32"),
    "masks of the wrong shape": ("cnn", lambda s, x: s.run_raw(x[:1], 32, masks=raw_masks(rows=31)), r"got \[31, 87616\]"),
    "masks of the wrong values": ("cnn", lambda s, x: s.run_raw(x[:1], 32, masks=raw_masks(value=2)), "got 2"),
    "other passes in one run": ("cnn", lambda s, x: s.run_raw(x[:1], 3), "its 32 passes at once"),
    "another batch in one run": ("cnn", lambda s, x: s.run_raw(x[:2], 32), "batch of 2"),
    "masks for a baked file": ("mlp_baked", lambda s, x: s.run_raw(x[:1], 20, masks=raw_masks(rows=20)), "takes none"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_input_is_one_input_error(files, case):
    name, call, fragment = BAD_CALLS[case]
    session = MCSession(files[name])
    with pytest.raises(InputError, match=fragment) as caught:
        call(session, inputs(files[name], 2))
    assert "\n" not in str(caught.value)


def test_a_random_node_in_a_portable_file_is_refused(files, tmp_path):
    from mcdrop.runtime.format.integrity import seal

    proto = onnx.load(files["mlp"])
    proto.graph.node.append(onnx.helper.make_node("RandomUniformLike", ["input"], ["drawn"], name="stray", seed=1.0))
    del proto.metadata_props[1:]  # the checksum: seal writes it again
    (tmp_path / "bad.onnx").write_bytes(seal(proto.SerializeToString()))
    with pytest.raises(ModelFileError, match="holds random node 'stray'"):
        MCSession(tmp_path / "bad.onnx")


def invoke(*args):
    result = CliRunner().invoke(cli.app, [*map(str, args)])
    return result.exit_code, result.output


def test_cli_convert_writes_and_reports(tmp_path):
    out = tmp_path / "mlp_portable.onnx"
    out.write_bytes(b"an older file")  # replaced, as export and calibrate replace theirs
    code, output = invoke("convert", MLP, "-o", out, "--portable", "--batch-size", "1", "--passes", "8")
    assert code == 0, output
    assert "samples equal to the standard file's shared mode" in output
    assert "NNAPI: 31/31 nodes in 1 partition" in output
    assert MCSession(out).info.portable["passes"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp_portable.onnx"]  # no temporaries left


def test_cli_infer_refuses_independent_masks_on_a_portable_file(files):
    code, output = invoke("infer", MODELS / "samples" / "digit_3.png", "--model", files["cnn"], "--masks", "independent")
    assert code == 2 and output.count("\n") == 1 and output.startswith("error: ") and "shared masks only" in output


@pytest.mark.parametrize("args, fragment", [
    (["missing.onnx", "--portable"], "no such model file"),
    (["README", "--portable"], "not an ONNX file"),
    (["CNN"], "needs a profile: --portable"),
    (["CNN", "--portable", "--passes", "0"], "--passes must be >= 1"),
    (["CNN", "--portable", "--batch-size", "-2"], "--batch-size must be >= 1"),
    (["CNN", "--portable", "--bake-masks", "-1"], "--bake-masks must be an integer from 0 to 2**64 - 1"),
    (["PORTABLE", "--portable"], "already a portable file"),
], ids=["missing", "not onnx", "no profile", "passes", "batch", "bake seed", "portable"])
def test_cli_convert_errors_are_one_line_and_write_nothing(files, tmp_path, args, fragment):
    (tmp_path / "README").write_text("not a model")
    named = {"CNN": CNN, "PORTABLE": files["mlp"], "README": tmp_path / "README", "missing.onnx": tmp_path / "missing.onnx"}
    out = tmp_path / "out.onnx"
    code, output = invoke("convert", *[named.get(a, a) for a in args], "-o", out)
    assert code == 2 and output.count("\n") == 1 and output.startswith("error: ") and fragment in output, output
    assert not out.exists()


@pytest.mark.parametrize("target, fragment", [("same", "is the input file"), ("folder", "is a folder"),
                                              ("out.txt", "must end in .onnx")])
def test_cli_convert_refuses_bad_outputs(tmp_path, target, fragment):
    source = tmp_path / "mlp.onnx"
    source.write_bytes(MLP.read_bytes())
    (tmp_path / "folder").mkdir()
    out = source if target == "same" else tmp_path / target
    code, output = invoke("convert", source, "-o", out, "--portable")
    assert code == 2 and output.count("\n") == 1 and fragment in output, output
    assert source.read_bytes() == MLP.read_bytes()


@pytest.mark.slow
def test_cli_export_portable(tmp_path):
    pytest.importorskip("tf2onnx")
    out = tmp_path / "mlp_portable.onnx"
    code, output = invoke("export", MODELS / "mlp.keras", "-o", out, "--portable", "--passes", "16", "--no-validate")
    assert code == 0, output
    assert "samples equal to the standard file's shared mode" in output
    assert not {node.op_type for node in onnx.load(out).graph.node} & set(RANDOM_OPS)
    assert MCSession(out).info.portable["passes"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp_portable.onnx"]  # the standard file went


@pytest.mark.parametrize("name, wanted", [("mlp", {"no random node", "mask seeds differ", "passes differ",
                                                   "deterministic pass repeats"}),
                                          ("mlp_baked", {"no random node", "passes differ", "deterministic pass repeats"})])
def test_self_check_of_a_portable_file(files, name, wanted):
    assert {check.name for check in MCSession(files[name]).self_check()} == wanted


@pytest.mark.parametrize("portable, fragment", [
    ({"batch": 1, "passes": 32, "masks": "bits", "baked": None}, "portable masks 'bits'"),
    ({"batch": 1, "passes": 31, "masks": "keep-uint8", "baked": None}, "default_passes must be its passes"),
    ({"batch": 0, "passes": 32, "masks": "keep-uint8", "baked": None}, "batch must be an integer >= 1"),
    ({"batch": 1, "passes": 32, "masks": "keep-uint8", "baked": {"mask_seed": -1}}, "baked mask_seed"),
])
def test_broken_portable_metadata_is_refused(files, tmp_path, portable, fragment):
    import json

    from mcdrop.runtime.format.integrity import seal

    proto = onnx.load(files["mlp"])
    meta = json.loads(proto.metadata_props[0].value)
    meta["portable"] = portable
    proto.metadata_props[0].value = json.dumps(meta)
    del proto.metadata_props[1:]
    (tmp_path / "bad.onnx").write_bytes(seal(proto.SerializeToString()))
    with pytest.raises(ModelFileError, match=fragment):
        MCSession(tmp_path / "bad.onnx")


@pytest.mark.parametrize("change, error, fragment", [
    (lambda meta: meta["stochastic_layers"][0].update(distribution="normal"), InputError, "draws Gaussian noise"),
    (lambda meta: meta.update(masks=None), ModelFileError, "cannot take a mask set"),
    (lambda meta: meta.update(stochastic_layers=[]), InputError, "no stochastic layer"),
], ids=["gaussian", "no mask layout", "deterministic"])
def test_files_the_profile_cannot_take_are_refused(change, error, fragment):
    import json

    from mcdrop.convert import portable_model

    proto = onnx.load(MLP)
    meta = json.loads(proto.metadata_props[0].value)
    change(meta)
    with pytest.raises(error, match=fragment) as caught:
        portable_model(proto, meta, path="mlp.onnx")
    assert "\n" not in str(caught.value)


def test_a_file_of_any_batch_keeps_to_the_memory_bound(files):
    x = inputs(CNN, 3)
    calls = []
    bounded = MCSession(files["cnn_any"], max_chunk_bytes=64 * 2**20)  # one input's 50 passes a run
    got = bounded.predict(x, passes=50, mask_seed=4, progress=lambda done, total: calls.append(total))
    want = MCSession(CNN).predict(x, passes=50, masks="shared", mask_seed=4)
    assert calls == [3, 3, 3] and np.max(np.abs(got.samples - want.samples)) <= TOLERANCE


def test_an_unverified_source_gives_an_unsealed_file(tmp_path):
    proto = onnx.load(MLP)
    del proto.metadata_props[1:]  # no checksum
    onnx.save(proto, tmp_path / "unsealed.onnx")
    out = tmp_path / "out.onnx"
    code, output = invoke("convert", tmp_path / "unsealed.onnx", "-o", out, "--portable")
    assert code == 2 and "has no integrity checksum" in output and not out.exists()
    code, output = invoke("convert", tmp_path / "unsealed.onnx", "-o", out, "--portable", "--no-verify")
    assert code == 0 and "is written without one" in output
    with pytest.raises(ModelFileError, match="no integrity checksum"):
        MCSession(out)
    assert MCSession(out, verify=False).info.portable is not None


def test_golden_vectors_onnxruntime_cpu(tmp_path):
    """tests/golden/portable_cnn.json on onnxruntime CPU (each runtime's test checks the same file)."""
    from portable_golden import check, golden, golden_inputs, golden_masks

    path = tmp_path / "cnn_portable.onnx"
    convert_file(CNN, path, passes=golden()["passes"], validate=False)
    session = MCSession(path)
    x = golden_inputs()
    check(session.run_raw(x, masks=golden_masks(session.info))["samples"],
          session.predict(x, dropout=False).samples)
