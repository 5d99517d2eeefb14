"""Deep ensembles in one file (export/ensemble.py, runtime/format/members.py): the ensemble against
its members exported alone and run one by one."""

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("tf2onnx")

import keras  # noqa: E402
from keras import layers  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mcdrop import cli  # noqa: E402
from mcdrop.export import export_model  # noqa: E402
from mcdrop.runtime import MCSession  # noqa: E402
from mcdrop.runtime.format.members import member_seed  # noqa: E402

pytestmark = pytest.mark.slow
PASSES = 6


def cnn(seed, width=8, extra_dropout=False):
    """Small CNNs that share no layer; the third has another shape and one more dropout layer, so its
    mask columns differ in size and place from the others'."""
    keras.utils.set_random_seed(seed)
    stack = [keras.Input((8, 8, 1)), layers.Conv2D(width, 3, activation="relu"), layers.Dropout(0.3),
             layers.Flatten(), layers.Dense(16, activation="relu")]
    if extra_dropout:
        stack += [layers.GaussianDropout(0.2), layers.Dense(12, activation="relu")]
    return keras.Sequential(stack + [layers.Dropout(0.3), layers.Dense(4, activation="softmax")])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three members saved, each exported alone, and the ensemble exported with validation on: each
    member's validation is the single export's own (export/validate.py, recorded here, not rerun:
    tests/test_export_parity.py covers it), the ensemble's own check runs for real."""
    from mcdrop.export import validate

    tmp = tmp_path_factory.mktemp("ensemble")
    members = []
    for k, model in enumerate((cnn(1), cnn(2), cnn(3, width=6, extra_dropout=True))):
        path = tmp / f"m{k}.keras"
        model.save(path)
        export_model(path, tmp / f"m{k}.onnx", passes=PASSES, seed=0, validate=False)
        members.append(path)
    validated = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate, "validate_export", lambda proto, model, metadata, progress: validated.append(model) or [])
        report = export_model(members, tmp / "ens.onnx", passes=PASSES, seed=0)
    return tmp, report, validated


def x_batch(count=5):
    return np.random.default_rng(0).random((count, 8, 8, 1), dtype=np.float32)


def test_export_validates_every_member_and_the_ensemble(files):
    tmp, report, validated = files
    assert len(validated) == 3 and [check.name for check in report.checks] == ["ensemble = members"]
    assert report.lines()[1].startswith("  ensemble of 3:")
    metadata = json.loads(onnx.load(tmp / "ens.onnx").metadata_props[0].value)
    assert [m["stochastic_layers"] for m in metadata["members"]] == [2, 2, 3]
    assert metadata["masks"]["floats_per_pass"] == sum(m["mask_floats"] for m in metadata["members"])
    alone = [json.loads(onnx.load(tmp / f"m{k}.onnx").metadata_props[0].value) for k in range(3)]
    assert metadata["activation_floats_per_sample"] == sum(m["activation_floats_per_sample"] for m in alone)


def test_the_export_check_catches_members_out_of_place(files):
    """The check export runs before writing (each member's samples against its own graph) fails for
    an ensemble whose members are not where its metadata says."""
    from mcdrop.export.ensemble import check_against_members
    from mcdrop.runtime.errors import ValidationError
    from mcdrop.runtime.randomness_checks import Checklist

    tmp = files[0]
    proto = onnx.load(tmp / "ens.onnx")
    metadata = json.loads(proto.metadata_props[0].value)
    members = [onnx.load(tmp / f"m{k}.onnx") for k in range(3)]
    check_against_members(proto.SerializeToString(), members, x_batch(2), metadata, Checklist())
    with pytest.raises(ValidationError, match="ensemble = members"):
        check_against_members(proto.SerializeToString(), [members[1], members[0], members[2]], x_batch(2), metadata,
                              Checklist())


def test_each_member_gives_its_samples_alone(files):
    tmp = files[0]
    x, seed = x_batch(), 12345
    together = MCSession(tmp / "ens.onnx", seed=0).predict(x, passes=PASSES, mask_seed=seed)
    assert together.samples.shape == (3 * PASSES, len(x), 4)
    for k in range(3):
        alone = MCSession(tmp / f"m{k}.onnx", seed=0).predict(x, passes=PASSES, mask_seed=member_seed(seed, k))
        np.testing.assert_allclose(together.samples[k::3], alone.samples, atol=1e-5)
        off = MCSession(tmp / f"m{k}.onnx", seed=0).predict(x, dropout=False)
        np.testing.assert_allclose(MCSession(tmp / "ens.onnx").predict(x, dropout=False).samples[k::3], off.samples,
                                   atol=1e-5)
    # The measures are over all members x passes: the ensemble's mutual information.
    samples = together.samples.astype(np.float64)
    mean = samples.mean(0)
    entropy = -(mean * np.log(mean)).sum(-1)
    expected = entropy - (-(samples * np.log(samples)).sum(-1)).mean(0)
    np.testing.assert_allclose(together.measures["mutual_information"], expected, atol=1e-5)


def test_runs_split_by_passes_keep_the_order(files):
    tmp = files[0]
    x = x_batch(3)
    whole = MCSession(tmp / "ens.onnx", seed=0).predict(x, passes=PASSES, mask_seed=7)
    session = MCSession(tmp / "ens.onnx", seed=0, max_chunk_bytes=4000, threads=1)
    assert any(count < PASSES for _, count in session.chunk_plan(len(x), PASSES))
    np.testing.assert_allclose(session.predict(x, passes=PASSES, mask_seed=7).samples, whole.samples, atol=1e-6)


def test_graph_measures_are_over_all_samples(files):
    tmp = files[0]
    session = MCSession(tmp / "ens.onnx", seed=0)
    raw = session.run_raw(x_batch(), passes=PASSES, stochastic=True)
    assert raw["samples"].shape[0] == 3 * PASSES
    np.testing.assert_allclose(raw["mean"], raw["samples"].mean(0), atol=1e-6)
    np.testing.assert_allclose(raw["variance"], raw["samples"].var(0), atol=1e-6)


def test_members_that_differ_are_refused(tmp_path):
    keras.utils.set_random_seed(0)
    other = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(), layers.Dropout(0.3), layers.Dense(3, activation="softmax")])
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    cnn(1).save(a)
    other.save(b)
    result = CliRunner().invoke(cli.app, ["export", str(a), str(b), "-o", str(tmp_path / "e.onnx")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "same outputs" in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "e.onnx").exists()
    for flag in (["--portable"], ["--format", "tflite"], ["--quantize", "int8"]):
        out = tmp_path / ("e.tflite" if "tflite" in flag else "e.onnx")
        result = CliRunner().invoke(cli.app, ["export", str(a), str(a), "-o", str(out), *flag])
        assert result.exit_code == 2 and "error: an ensemble is written as a standard float ONNX file" in result.output


def test_the_js_library_runs_the_ensemble_with_the_same_member_sets(files):
    """examples/node/infer.js (examples/lib/mcdrop.mjs) feeds each member its own columns of the set,
    from member_seed: its samples are the Python runtime's for the same mask seed."""
    from js_support import INFER_JS, LIVE_ATOL, node, run_node

    node()
    tmp = files[0]
    x = x_batch(2)
    np.save(tmp / "x.npy", x)
    done = run_node([INFER_JS, tmp / "ens.onnx", tmp / "x.npy", "--passes", str(PASSES), "--mask-seed", "99",
                     "--json", "--samples"])
    assert done.returncode == 0, done.stderr
    js = np.array([r["samples"] for r in json.loads(done.stdout)["results"]]).transpose(1, 0, 2)
    python = MCSession(tmp / "ens.onnx", seed=0).predict(x, passes=PASSES, mask_seed=99).samples
    assert js.shape == python.shape == (3 * PASSES, 2, 4)
    np.testing.assert_allclose(js, python, atol=LIVE_ATOL)


def test_adaptive_passes_are_refused_for_an_ensemble(files):
    from mcdrop.runtime.errors import InputError

    with pytest.raises(InputError, match="is an ensemble"):
        MCSession(files[0] / "ens.onnx", seed=0).predict(x_batch(2), passes="auto")


def test_a_members_field_that_does_not_tile_the_file_is_refused():
    from mcdrop.runtime.format.mask_sets import MaskEntry, MaskLayout
    from mcdrop.runtime.format.members import read_members

    layout = MaskLayout(10, (MaskEntry(0, (4,), "uniform"), MaskEntry(4, (6,), "uniform")))
    meta = {"stochastic_layers": [{}, {}], "members": [{"stochastic_layers": 1, "mask_offset": 0, "mask_floats": 4},
                                                      {"stochastic_layers": 1, "mask_offset": 4, "mask_floats": 6}]}
    assert [m.mask_floats for m in read_members(meta, layout)] == [4, 6]
    for bad in ({"mask_offset": 5}, {"mask_floats": 5}, {"stochastic_layers": 2}, {"mask_floats": "6"}):
        members = [meta["members"][0], {**meta["members"][1], **bad}]
        with pytest.raises(ValueError):
            read_members({**meta, "members": members}, layout)
