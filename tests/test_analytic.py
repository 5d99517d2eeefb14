"""The analytic mode (issue 26 item 4; docs/DESIGN.md: Analytic mode): `convert --analytic INPUTS`
adds a moment-propagation graph beside the stochastic one and records its agreement with MC;
`predict(method="analytic")` / `--method analytic` runs it in one pass, or refuses in one line.
The accuracy and speed targets are measured by bench/analytic.py, not here."""

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from mcdrop import cli  # noqa: E402
from mcdrop.convert import add_analytic_graph, convert_analytic  # noqa: E402
from mcdrop.convert.analytic import normal_draws  # noqa: E402
from mcdrop.convert.analytic_agreement import spearman  # noqa: E402
from mcdrop.runtime import analytic  # noqa: E402
from mcdrop.runtime.errors import InputError, ModelFileError  # noqa: E402
from mcdrop.runtime.format.mask_sets import control_feeds  # noqa: E402
from mcdrop.runtime.format.metadata_writer import metadata_of, write_metadata  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"
MLP = MODELS / "mlp.onnx"
VALIDATION_INPUTS = 16  # convert_analytic.MIN_VALIDATION_INPUTS
REFERENCE_PASSES = 200  # enough for the file to be written; bench/analytic.py measures at T=1000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{"converted": the MLP as convert --analytic writes it, "vouched": the same with a good
    recorded agreement, "poor": with a poor one, "inputs": validation .npy}."""
    folder = tmp_path_factory.mktemp("analytic")
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (VALIDATION_INPUTS, 784)) / 255.0).astype(np.float32)
    x[::2] *= rng.random((VALIDATION_INPUTS // 2, 1)).astype(np.float32)  # dimmer inputs: a spread of certainty
    np.save(folder / "inputs.npy", x)
    lines = convert_analytic(MLP, folder / "converted.onnx", folder / "inputs.npy", reference_passes=REFERENCE_PASSES)
    found = {"converted": folder / "converted.onnx", "inputs": folder / "inputs.npy", "lines": lines}
    for name, gap in (("vouched", 0.01), ("poor", 0.2)):
        proto = onnx.load(folder / "converted.onnx")
        meta = metadata_of(proto)
        meta["analytic"]["agreement"].update(max_abs_mean_gap=gap, spearman_mutual_information=0.95)
        write_metadata(proto, meta)
        onnx.save(proto, folder / f"{name}.onnx")
        found[name] = folder / f"{name}.onnx"
    return found


def test_convert_records_the_agreement_and_keeps_mc_as_it_was(files):
    meta = MCSession(files["converted"]).info.metadata["analytic"]
    agreement = meta["agreement"]
    assert agreement["inputs"] == VALIDATION_INPUTS // 2 and agreement["passes"] == REFERENCE_PASSES
    assert 0 <= agreement["max_abs_mean_gap"] <= 1 and -1 <= agreement["spearman_mutual_information"] <= 1
    assert meta["draws"] == 256 and meta["spread"] >= 1
    assert "agreement" in files["lines"][1]
    x = np.load(files["inputs"])
    before = MCSession(MLP).predict(x, passes=20, mask_seed=3)
    after = MCSession(files["converted"]).predict(x, passes=20, mask_seed=3)
    np.testing.assert_array_equal(before.mean, after.mean)
    assert MCSession(files["converted"]).predict(x, passes=1, masks="independent").mean.shape == (len(x), 10)


def test_analytic_predict_is_one_run_close_to_mc(files):
    session = MCSession(files["vouched"], verify=False)
    x = np.load(files["inputs"])
    runs = session.run_count
    got = session.predict(x, method="analytic")
    assert session.run_count == runs + 1 and got.passes == 1 and got.standard_errors == {}
    want = MCSession(MLP).predict(x, passes=1000, mask_seed=0)
    np.testing.assert_allclose(got.mean.sum(-1), 1, atol=1e-4)
    # The recorded agreement is what the bound is checked on (bench/analytic.py); here: the same answer.
    assert np.abs(got.mean - want.mean).max() < 0.1
    assert (got.measures["label"] == want.measures["label"]).mean() >= 0.9
    assert spearman(got.measures["mutual_information"], want.measures["mutual_information"]) > 0.7
    for name in ("predictive_entropy", "expected_entropy", "variation_ratio", "confidence"):
        assert got.measures[name].shape == (len(x),)
    assert (got.measures["mutual_information"] >= 0).all() and got.variance.shape == got.mean.shape


def test_the_analytic_run_is_the_files_moment_graph_alone(files):
    """The analytic run gives the file's own analytic outputs, from a session of the graph cut to
    them: on the whole file each analytic run would also run the Monte Carlo part once."""
    import onnxruntime as ort

    session = MCSession(files["vouched"], verify=False)
    x = np.load(files["inputs"])
    got = session.predict(x, method="analytic")
    whole = ort.InferenceSession(str(files["vouched"]), providers=["CPUExecutionProvider"])
    feeds = {session.input_names[0]: x, **control_feeds(1, True, None, session.info.mask_layout.floats_per_pass)}
    np.testing.assert_allclose(got.mean, whole.run([analytic.PREFIX + "samples"], feeds)[0].mean(0), atol=1e-5)
    assert [output.name for output in session._analytic_session.get_outputs()] == [analytic.PREFIX + "samples"]


def test_the_moment_graph_needs_no_random_node_and_mc_runs_skip_it(files):
    """The analytic outputs are computed from the moments alone: no random op among their
    ancestors. They come from an If taken only for the analytic run's feed, since onnxruntime runs
    every node of a graph whatever the outputs asked for."""
    graph = onnx.load(files["converted"]).graph
    branch = next(node for node in graph.node if node.op_type == "If" and analytic.PREFIX + "samples" in node.output)
    moments = next(a.g for a in branch.attribute if a.name == "then_branch")
    made = {out: node for node in [*graph.node, *moments.node] for out in node.output}
    assert len(moments.node) > 50
    todo, seen = [moments.output[0].name, *branch.input], set()
    while todo:
        node = made.get(todo.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            assert not node.op_type.startswith("Random"), node.name
            todo.extend(node.input)


@pytest.mark.parametrize("arguments, message", [
    (dict(passes=10), "passes is for method mc"),
    (dict(passes="auto"), "passes is for method mc"),
    (dict(masks="independent"), "masks is for method mc"),
    (dict(mask_seed=1), "mask_seed is for method mc"),
    (dict(dropout=False), "dropout off is for method mc"),
])
def test_monte_carlo_choices_are_refused_with_analytic(files, arguments, message):
    with pytest.raises(InputError, match=message):
        MCSession(files["vouched"], verify=False).predict(np.zeros((1, 784), np.float32), method="analytic", **arguments)


def test_files_without_the_graph_or_with_a_poor_agreement_are_refused(files):
    x = np.zeros((1, 784), np.float32)
    with pytest.raises(ModelFileError, match="has no analytic outputs; add them with"):
        MCSession(MLP).predict(x, method="analytic")
    with pytest.raises(ModelFileError, match="agrees poorly with MC .*0.200"):
        MCSession(files["poor"], verify=False).predict(x, method="analytic")
    with pytest.raises(InputError, match="expected mc or analytic"):
        MCSession(MLP).predict(x, method="moments")


def test_cli_infer_and_its_one_line_errors(files, tmp_path):
    runner = CliRunner()
    np.save(tmp_path / "x.npy", np.load(files["inputs"])[:2])
    ok = runner.invoke(cli.app, ["infer", str(tmp_path / "x.npy"), "--model", str(files["vouched"]), "--no-verify",
                                 "--method", "analytic", "--json"])
    assert ok.exit_code == 0, ok.output
    np.savez(tmp_path / "labelled.npz", x=np.load(files["inputs"]), y=np.arange(VALIDATION_INPUTS) % 10)
    report = runner.invoke(cli.app, ["evaluate", str(files["vouched"]), str(tmp_path / "labelled.npz"), "--no-verify",
                                     "--method", "analytic", "--json"])
    assert report.exit_code == 0, report.output
    for flags, message in ((["--model", str(files["poor"]), "--no-verify"], "agrees poorly with MC"),
                           (["--model", str(MLP)], "has no analytic outputs"),
                           (["--model", str(files["vouched"]), "--no-verify", "--passes", "auto"], "--passes is for --method mc")):
        result = runner.invoke(cli.app, ["infer", str(tmp_path / "x.npy"), "--method", "analytic", *flags])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_convert_refusals_are_one_line(files, tmp_path):
    runner = CliRunner()
    for flags, message in (([], "convert needs a profile"),
                           (["--portable", "--analytic", str(files["inputs"])], "convert needs one profile"),
                           (["--analytic", str(files["inputs"]), "--passes", "5"], "are for --portable")):
        result = runner.invoke(cli.app, ["convert", str(MLP), "-o", str(tmp_path / "out.onnx"), *flags])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(InputError, match="already has the analytic graph"):
        convert_analytic(files["converted"], tmp_path / "again.onnx", files["inputs"], reference_passes=10)
    np.save(tmp_path / "few.npy", np.load(files["inputs"])[:VALIDATION_INPUTS - 1])  # the fixture's 16 convert
    with pytest.raises(InputError, match="15 validation inputs; the agreement needs at least 16"):
        convert_analytic(MLP, tmp_path / "few.onnx", tmp_path / "few.npy", reference_passes=10)
    assert not (tmp_path / "few.onnx").exists()


def test_an_op_without_a_moment_rule_is_refused_at_convert():
    proto = onnx.load(MLP)
    relu = next(node for node in proto.graph.node if node.name == "dense_1_2/Relu")  # after the first dropout
    relu.op_type = "Tanh"
    with pytest.raises(InputError, match=r"no moment rule for Tanh \('dense_1_2/Relu'\)"):
        add_analytic_graph(proto, metadata_of(proto), "mlp.onnx")


def test_latin_hypercube_draws_are_standard_normal_per_unit():
    z = normal_draws(256, 64).astype(np.float64)
    assert z.shape == (256, 64)
    # One draw per stratum: the mean and variance are much closer to 0 and 1 than plain draws'.
    assert np.abs(z.mean(0)).max() < 0.01 and np.abs(z.var(0) - 1).max() < 0.1
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)


def test_moments_after_a_dropout_and_a_relu_match_mc():
    """The rules themselves: after dropout -> Dense the mean and variance are exact (independent
    keep masks), and the rectified Gaussian's follow MC's after the ReLU (the pre-activation sums
    512 terms: near Gaussian), and the second dropout (a product of two noisy factors) keeps them.
    MC here: 4000 passes of the same graph."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from mcdrop.convert.analytic import _Walk

    proto = onnx.load(MLP)
    walk = _Walk(proto.graph, metadata_of(proto), "mlp.onnx")
    walk.branch = lambda nodes: nodes  # the moment nodes in the main graph, where outputs can read them
    walk.run()
    for value in [value for value in proto.graph.output if value.name.startswith(analytic.PREFIX)]:
        proto.graph.output.remove(value)
    tensors = {"dense": "dense_1_2/BiasAdd:0", "relu": "dense_1_2/Relu:0", "second dropout": "mul_8:0"}
    names = {key: walk.moments[name] for key, name in tensors.items()}
    for name in [*tensors.values(), *(n for pair in names.values() for n in pair)]:
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(1).integers(0, 256, (2, 784)) / 255.0).astype(np.float32)
    masks = np.zeros((0, 1024), np.float32)

    def run(passes, wanted):
        feed = {"input": x, "passes": np.array(passes, np.int64), "stochastic": np.array(True), "masks": masks}
        return dict(zip(wanted, session.run(wanted, feed)))

    passes = 4000
    samples = run(passes, list(tensors.values()))
    for key, tensor in tensors.items():
        mean, var = (value.reshape(2, -1) for value in run(1, list(names[key])).values())
        drawn = samples[tensor].reshape(passes, 2, -1).astype(np.float64)
        spread = np.sqrt(drawn.var(0))
        # Within 5 standard errors of MC's mean; the variance within 10% (where there is some).
        assert (np.abs(mean - drawn.mean(0)) <= 5 * spread / np.sqrt(passes) + 1e-4).mean() > 0.99, key
        some = drawn.var(0) > 1e-3
        assert np.median(np.abs(var[some] / drawn.var(0)[some] - 1)) < 0.1, key


def test_the_relu_rule_is_the_rectified_gaussians_moments_without_subnormal_values():
    """The ReLU rule against the closed form in float64, from units far below zero to far above and
    without variance (deterministic units), and no value of the rule subnormal anywhere: subnormal
    arithmetic made the CNN's analytic run ~10x slower in these nodes on x86 (DESIGN.md: Analytic mode)."""
    import math

    import onnxruntime as ort
    from onnx import TensorProto, helper

    from mcdrop.convert.analytic import TINY_VARIANCE, _Walk

    walk = _Walk.__new__(_Walk)
    walk.graph, walk.constants, walk.alias, walk.added, walk.count = helper.make_graph([], "g", [], []), {}, {}, [], 0
    walk.moments, walk.chains = {"x": ("m", "v")}, {}
    walk.rule_Relu(helper.make_node("Relu", ["x"], ["y"]), ["x"])
    names = [out for node in walk.added for out in node.output]
    graph = helper.make_graph(walk.added, "relu_rule", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None])
                                                         for n in ("m", "v")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                              initializer=walk.graph.initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    m, v = (grid.ravel().astype(np.float32) for grid in np.meshgrid(
        np.linspace(-50, 50, 401), [0.0, 1e-14, 1e-6, 0.01, 0.3, 1.0, 7.0, 100.0]))
    values = dict(zip(names, session.run(names, {"m": m, "v": v})))
    mean, var = (values[name] for name in walk.moments["y"])

    m64, s = m.astype(np.float64), np.sqrt(np.maximum(v.astype(np.float64), TINY_VARIANCE))
    a = m64 / s
    cdf = 0.5 * (1 + np.array([math.erf(value / math.sqrt(2)) for value in a]))
    pdf = np.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    exact_mean = m64 * cdf + s * pdf
    exact_var = np.maximum((m64 * m64 + s * s) * cdf + m64 * s * pdf - exact_mean ** 2, 0)
    assert np.all(np.abs(mean - exact_mean) <= 1e-6 * (s + np.abs(m64)))
    assert np.all(np.abs(var - exact_var) <= 1e-5 * (s * s + m64 * m64))
    tiny = np.finfo(np.float32).tiny
    for name, value in values.items():
        assert not np.any((value != 0) & (np.abs(value) < tiny)), f"subnormal values in {name}"


def _moments_session(proto, path):
    """A session of `proto` with its moment graph at spread 1 and a good agreement recorded (convert
    writes both after measuring; these tests measure themselves), saved at `path`. Adds the graph to
    `proto` in place."""
    from mcdrop.convert.analytic import DRAWS

    meta = metadata_of(proto)
    add_analytic_graph(proto, meta, path.name)
    meta["analytic"] = {"draws": DRAWS, "spread": 1.0, "agreement": {
        "inputs": 1, "max_abs_mean_gap": 0.0, "spearman_mutual_information": 1.0, "passes": 1, "mask_seed": 0}}
    write_metadata(proto, meta)
    onnx.save(proto, path)
    return MCSession(path, seed=0, verify=False)


def _moment_outputs(proto) -> list:
    """The names the moment graph (the If's then-branch) computes."""
    branch = next(a.g for node in proto.graph.node if node.op_type == "If" for a in node.attribute
                  if a.name == "then_branch")
    return [name for node in branch.node for name in node.output]


def _spread_against(got, mc):
    """(median of the top class's variance / MC's, median of the mutual information / MC's)."""
    top = mc.mean.argmax(axis=-1)[:, None]
    variance = np.median(np.take_along_axis(got.variance, top, -1) / np.take_along_axis(mc.variance, top, -1))
    return variance, np.median(got.measures["mutual_information"] / mc.measures["mutual_information"])


@pytest.mark.parametrize("carried", [True, False])
def test_the_covariance_before_the_last_dropout_is_carried_where_its_source_is_narrow(tmp_path, monkeypatch, carried):
    """The MLP's last dropout's units share the first dropout's noise. Carried (convert/
    analytic_covariance.py), the analytic spread of the top class's probability and the mutual
    information match MC's with no spread fitted (1); drawn per unit, as for a source wider than
    MAX_SOURCE_UNITS (the CNN's), they come out several times too small, which convert's fitted
    spread then makes up on average only (docs/DESIGN.md: Analytic mode)."""
    from sklearn.datasets import load_digits

    from mcdrop.convert import analytic_covariance

    if not carried:
        monkeypatch.setattr(analytic_covariance, "MAX_SOURCE_UNITS", 100)
    session = _moments_session(onnx.load(MLP), tmp_path / "moments.onnx")
    images = load_digits().images[:24]  # 8 x 8 digits, blown up to the MLP's 28 x 28
    x = (np.pad(np.kron(images, np.ones((3, 3))), ((0, 0), (2, 2), (2, 2))) / 16.0).reshape(24, 784).astype(np.float32)

    mc = session.predict(x, passes=2000, mask_seed=0, keep_samples=False)
    got = session.predict(x, method="analytic")
    variance, information = _spread_against(got, mc)
    if carried:  # measured 0.94 and 0.99, the mean within 0.013; the slope without Phi gave 1.21 and 1.25
        assert 0.85 < variance < 1.12 and 0.85 < information < 1.12
        assert np.abs(got.mean - mc.mean).max() < 0.025
    else:  # measured 0.13 and 0.21
        assert variance < 0.5 and information < 0.5


def test_products_written_as_gemm_with_a_transposed_weight_give_the_same_moments(tmp_path):
    """Dense layers as Gemm(x, W^T, b, transB=1) instead of MatMul + Add: the moment rules and the
    covariance chain read the weight the same way (analytic_covariance.product_weight and
    output_weight); the analytic draws equal the MatMul file's."""
    from onnx import helper, numpy_helper

    proto = onnx.load(MLP)
    weights = {t.name: t for t in proto.graph.initializer}
    nodes = list(proto.graph.node)
    for product in [n for n in nodes if n.op_type == "MatMul" and n.input[1] in weights]:
        bias = next(n for n in proto.graph.node if n.op_type == "Add" and product.output[0] in n.input)
        transposed = numpy_helper.from_array(numpy_helper.to_array(weights[product.input[1]]).T.copy(),
                                             product.input[1] + "/transposed")
        proto.graph.initializer.append(transposed)
        gemm = helper.make_node("Gemm", [product.input[0], transposed.name, next(i for i in bias.input if i in weights)],
                                list(bias.output), name=product.name + "/gemm", transB=1)
        at = list(proto.graph.node).index(product)
        proto.graph.node.remove(bias)
        proto.graph.node.remove(product)
        proto.graph.node.insert(at, gemm)
    assert sum(n.op_type == "Gemm" for n in proto.graph.node) == 3
    x = (np.random.default_rng(2).integers(0, 256, (6, 784)) / 255.0).astype(np.float32)
    gemm = _moments_session(proto, tmp_path / "gemm.onnx").predict(x, method="analytic")
    matmul = _moments_session(onnx.load(MLP), tmp_path / "matmul.onnx").predict(x, method="analytic")
    np.testing.assert_allclose(gemm.mean, matmul.mean, atol=1e-5)
    np.testing.assert_allclose(gemm.measures["mutual_information"], matmul.measures["mutual_information"],
                               rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("model", ["cnn.onnx", "mlp.onnx"])
def test_draws_made_at_the_output_product_equal_the_per_unit_draws(tmp_path, monkeypatch, model):
    """Where the last dropout's units are drawn independently (the CNN: its source is too wide to
    carry; the MLP here made the same), the logits' draws z @ (sqrt(var D) * W_out) made at the
    product equal the draws of D itself run through W_out: the same z, without the [256, batch, n_L]
    draws (analytic_covariance.logit_draws)."""
    from mcdrop.convert import analytic_covariance

    monkeypatch.setattr(analytic_covariance, "MAX_SOURCE_UNITS", 100)
    x = (np.random.default_rng(3).integers(0, 256, (5, 784)) / 255.0).astype(np.float32)
    found = {}
    for at_product in (True, False):
        if not at_product:
            monkeypatch.setattr(analytic_covariance, "output_weight", lambda walk, start: None)
        proto = onnx.load(MODELS / model)
        session = _moments_session(proto, tmp_path / f"{at_product}.onnx")
        assert any("own_part" in name for name in _moment_outputs(proto)) == at_product
        found[at_product] = session.predict(x.reshape(5, *session.info.input_shape[1:]), method="analytic")
    np.testing.assert_allclose(found[True].mean, found[False].mean, atol=1e-5)
    np.testing.assert_allclose(found[True].variance, found[False].variance, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("last", ["dense_over_time", "spatial_dropout"])
def test_outputs_of_several_rows_or_shared_masks_keep_their_own_draws(tmp_path, last):
    """Draws at the output product take one row per input with one mask per unit
    (analytic_covariance.draws_at_product). A Dense over [B, T, F] after the last dropout (tf2onnx
    reshapes its product back by a Shape of D) and a SpatialDropout1D (one mask per channel over T)
    are neither: they keep D's own draws, which follow MC (found in review: at the product the
    first failed to run, and the second's spread came out 1.2x MC's on another model's weights)."""
    pytest.importorskip("tf2onnx")
    import keras

    from mcdrop.export import export_model

    steps, features = 6, 8
    keras.utils.set_random_seed(0)
    head = ([keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.5), keras.layers.Dense(4),
             keras.layers.GlobalAveragePooling1D(), keras.layers.Activation("softmax")]
            if last == "dense_over_time" else
            [keras.layers.SpatialDropout1D(0.5), keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")])
    model = keras.Sequential([keras.Input((steps, features)), keras.layers.Dense(16, activation="relu"),
                              *([keras.layers.Dropout(0.5)] if last == "dense_over_time" else []), *head])
    model.save(tmp_path / "model.keras")
    export_model(tmp_path / "model.keras", tmp_path / "model.onnx", seed=0, validate=False)
    proto = onnx.load(tmp_path / "model.onnx")
    session = _moments_session(proto, tmp_path / "moments.onnx")
    assert not any("own_part" in name for name in _moment_outputs(proto))  # D's own draws
    x = np.random.default_rng(0).normal(0, 1.5, (16, steps, features)).astype(np.float32)

    got = session.predict(x, method="analytic")
    mc = session.predict(x, passes=4000, mask_seed=0, keep_samples=False)
    variance, information = _spread_against(got, mc)
    assert 0.85 < variance < 1.12 and 0.85 < information < 1.12  # measured 0.94-0.97 and 0.97-0.98


def test_analytic_sets_follow_the_files_conformal_method(files, tmp_path):
    """A file calibrated with Mondrian sets gives them in the analytic mode too, made from the
    analytic mean exactly as the Monte Carlo path makes them (runtime/conformal_sets.py)."""
    import sys

    from mcdrop.calibrate.command import calibrate_model
    from mcdrop.runtime.conformal_sets import prediction_sets

    sys.path.insert(0, str(MODELS))
    import build_models

    images, labels = build_models.digits_28x28()
    np.savez(tmp_path / "data.npz", x=build_models.to_input(images[:300], flat=True).astype(np.float32), y=labels[:300])
    calibrate_model(files["vouched"], tmp_path / "calibrated.onnx", tmp_path / "data.npz", conformal=0.1,
                    conformal_method="mondrian", verify=False)
    session = MCSession(tmp_path / "calibrated.onnx", verify=False)
    conformal = session.info.model_outputs[0].calibration["conformal"]
    assert conformal["method"] == "mondrian"
    got = session.predict(np.load(files["inputs"]), method="analytic")
    np.testing.assert_array_equal(got.measures["prediction_set"],
                                  prediction_sets(conformal, got.mean)["prediction_set"])


def test_a_model_with_one_dropout_draws_its_output(tmp_path):
    """The commonest deployment, a base, one Dropout and a softmax head: the dropout's input is the
    same in every pass (no variance to carry), and its output is still drawn for the head."""
    pytest.importorskip("tf2onnx")
    import keras

    from mcdrop.export import export_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(4, activation="softmax")])
    model.save(tmp_path / "one.keras")
    export_model(tmp_path / "one.keras", tmp_path / "one.onnx", seed=0, validate=False)
    x = np.random.default_rng(2).normal(0, 2, (16, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    convert_analytic(tmp_path / "one.onnx", tmp_path / "analytic.onnx", tmp_path / "x.npy", reference_passes=4000)
    session = MCSession(tmp_path / "analytic.onnx", seed=0)
    got = session.predict(x, method="analytic")
    reference = session.predict(x, passes=4000, mask_seed=1, keep_samples=False)
    assert np.abs(got.mean - reference.mean).max() < analytic.MAX_MEAN_GAP
    assert spearman(got.measures["mutual_information"], reference.measures["mutual_information"]) > 0.9
