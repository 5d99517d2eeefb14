"""Skipping dropped units (issue 26 item 3; docs/DESIGN.md: Skipping dropped units): `cli.py convert
--skip-dropped` rewrites a Dropout whose input runs once per input and feeds a MatMul so that shared
runs of MIN_BATCH+ rows compute the product once and subtract, per pass, the dropped rows' part;
the samples equal the source file's to float rounding in every mode."""

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from mcdrop import cli  # noqa: E402
from mcdrop.convert.dropped_units import MIN_BATCH, PREFIX, skip_dropped_file  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"
CNN, MLP = MODELS / "cnn.onnx", MODELS / "mlp.onnx"
# The same float32 products summed in another order, less the dropped rows' part (measured: 1e-6);
# the probabilities are in [0, 1].
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def skipping(tmp_path_factory):
    path = tmp_path_factory.mktemp("skipping") / "mlp_skip.onnx"
    skip_dropped_file(MLP, path)
    return path


def inputs(count, seed=0):
    return np.random.default_rng(seed).random((count, 784), dtype=np.float32)


@pytest.mark.parametrize("batch", [MIN_BATCH, 1, MIN_BATCH + 5])
def test_samples_equal_the_source_in_shared_mode(skipping, batch):
    x = inputs(batch)
    want = MCSession(MLP, seed=0, threads=1).predict(x, passes=20, mask_seed=5)
    got = MCSession(skipping, seed=0, threads=1).predict(x, passes=20, mask_seed=5)
    assert np.max(np.abs(want.samples - got.samples)) <= TOLERANCE
    assert np.max(np.abs(want.mean - got.mean)) <= TOLERANCE


def test_the_skipping_branch_computes_the_kept_units_alone(skipping):
    """A run of MIN_BATCH rows takes the new branch (it sums in another order: not bit-equal), and
    what it gives is the product with every dropped row of W left out: the weights of units no
    pass keeps do not matter, where the source's product uses them."""
    x = inputs(MIN_BATCH)
    standard, rewritten = MCSession(MLP, seed=0, threads=1), MCSession(skipping, seed=0, threads=1)
    want = standard.predict(x, passes=8, mask_seed=1).samples
    got = rewritten.predict(x, passes=8, mask_seed=1).samples
    assert not np.array_equal(want, got) and np.max(np.abs(want - got)) <= TOLERANCE
    small = rewritten.predict(x[:MIN_BATCH - 1], passes=8, mask_seed=1).samples  # the original nodes, bit-equal
    assert np.array_equal(small, standard.predict(x[:MIN_BATCH - 1], passes=8, mask_seed=1).samples)


def test_independent_masks_and_dropout_off_run_the_original_nodes(skipping):
    x = inputs(MIN_BATCH)
    standard, rewritten = MCSession(MLP, seed=3, threads=1), MCSession(skipping, seed=3, threads=1)
    assert np.array_equal(standard.predict(x, dropout=False).samples, rewritten.predict(x, dropout=False).samples)
    independent = rewritten.predict(x, passes=10, masks="independent").samples
    assert independent.shape == (10, MIN_BATCH, 10) and np.allclose(independent.sum(-1), 1, atol=1e-5)
    assert np.max(independent.max(0) - independent.min(0)) > 0.01  # the passes still differ


def test_runs_keep_their_rows_together(skipping):
    """Two workers share a shared-mode predict by passes, so each run holds all MIN_BATCH rows and
    skips; the source file splits its rows (the layers before the first dropout then run once)."""
    rewritten = MCSession(skipping, seed=0, threads=2)
    plan = rewritten._planner.plan(MIN_BATCH, 100, shared=True, warm=True)
    assert plan[1] == 2 and all(rows == slice(0, MIN_BATCH) for rows, _ in plan[0]), plan
    assert MCSession(skipping, seed=0).info.metadata["dropped_units"]["layers"] == ["dropout"]
    graph = onnx.load(skipping).graph
    assert [node.name for node in graph.node if node.op_type == "If"] == [PREFIX + "dropout/if"]


def invoke(*args):
    result = CliRunner().invoke(cli.app, [*map(str, args)])
    return result.exit_code, result.output


def test_cli_convert_skip_dropped_writes_and_reports(tmp_path):
    out = tmp_path / "mlp_skip.onnx"
    code, output = invoke("convert", MLP, "-o", out, "--skip-dropped")
    assert code == 0, output
    assert "skips            dropped units of dropout" in output and "samples equal to the source's" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp_skip.onnx"]


@pytest.mark.parametrize("args, fragment", [
    (["CNN", "--skip-dropped"], "there is nothing to skip"),
    (["MLP", "--skip-dropped", "--portable"], "needs one profile: --portable, --skip-dropped or --analytic INPUTS, not --portable and --skip-dropped"),
    (["MLP", "--skip-dropped", "--passes", "8"], "are for --portable"),
    (["SKIPPING", "--skip-dropped"], "skips dropped units already"),
], ids=["cnn", "two profiles", "portable option", "twice"])
def test_cli_convert_skip_dropped_errors_are_one_line(skipping, tmp_path, args, fragment):
    named = {"CNN": CNN, "MLP": MLP, "SKIPPING": skipping}
    out = tmp_path / "out.onnx"
    code, output = invoke("convert", *[named.get(arg, arg) for arg in args], "-o", out)
    assert code == 2 and output.count("\n") == 1 and output.startswith("error: ") and fragment in output, output
    assert not out.exists()


@pytest.mark.parametrize("entry", [5, {"floats_per_pass": "many"}, {"floats_per_pass": -1}, {}])
def test_a_broken_dropped_units_entry_is_refused_on_load(skipping, tmp_path, entry):
    from mcdrop.runtime.errors import ModelFileError
    from mcdrop.runtime.format.integrity import seal
    from mcdrop.runtime.format.metadata_writer import metadata_of, write_metadata

    proto = onnx.load(skipping)
    write_metadata(proto, {**metadata_of(proto), "dropped_units": entry})
    (tmp_path / "bad.onnx").write_bytes(seal(proto.SerializeToString()))
    with pytest.raises(ModelFileError, match="dropped_units.floats_per_pass must be an integer"):
        MCSession(tmp_path / "bad.onnx")
