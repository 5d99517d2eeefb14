"""A model with attention dropout (tests/zoo.py's text Transformer encoder: int tokens, mask_zero,
MultiHeadAttention dropout) runs through every command like any other file: infer, score,
evaluate, calibrate and acquire from token arrays (.npy / .npz), and the Node example, in shared
and independent mask modes, with the attention masks in the mask set (JavaScript's maskSet byte
for byte Python's). Exported once per module."""

import base64
import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("tf2onnx")

from mcdrop import cli  # noqa: E402
from mcdrop.runtime import MCSession  # noqa: E402
from mcdrop.runtime.format.mask_sets import draw  # noqa: E402
from js_support import EXAMPLES, INFER_JS, LIVE_ATOL, node, run_node  # noqa: E402

pytestmark = pytest.mark.slow

PASSES, MASK_SEED = 20, 7
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The exported encoder, 24 padded token sequences (.npy) and the same with labels (.npz)."""
    from zoo import text_transformer_encoder

    from mcdrop.export import export_model

    folder = tmp_path_factory.mktemp("attention")
    model, _ = text_transformer_encoder()
    model.save(folder / "encoder.keras")
    export_model(folder / "encoder.keras", folder / "encoder.onnx", seed=0, validate=False)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, (24, 8))
    tokens[np.arange(8)[None] >= rng.integers(2, 9, (24, 1))] = 0  # padded tails: the attention's key mask
    np.save(folder / "tokens.npy", tokens.astype(np.float32))
    np.savez(folder / "labelled.npz", x=tokens.astype(np.float32), y=rng.integers(0, 3, 24))
    return {"model": folder / "encoder.onnx", "tokens": folder / "tokens.npy", "labelled": folder / "labelled.npz",
            "x": tokens.astype(np.float32), "folder": folder}


def test_the_file_keeps_the_attention_dropout_in_its_mask_set(files):
    session = MCSession(files["model"], seed=0)
    layers = session.info.metadata["stochastic_layers"]
    attention = [layer for layer in layers if layer["kind"] == "MultiHeadAttention dropout"]
    assert len(attention) == 1 and attention[0]["mask_shape"] == [2, 8, 8]  # [heads, query, key] per pass
    assert session.info.mask_layout.floats_per_pass >= 2 * 8 * 8


def test_infer_in_shared_and_independent_modes(files):
    out = files["folder"] / "infer.json"
    invoke("infer", files["tokens"], "--model", files["model"], "--passes", PASSES, "--masks", "shared",
           "--mask-seed", MASK_SEED, "--json", "--out", out)
    python = MCSession(files["model"], seed=0).predict(files["x"], passes=PASSES, masks="shared", mask_seed=MASK_SEED)
    document = json.loads(invoke("infer", files["tokens"], "--model", files["model"], "--passes", PASSES, "--masks",
                                 "shared", "--mask-seed", MASK_SEED, "--json").stdout)
    assert len(document["predictions"]) == 24 and out.exists()
    means = np.array([prediction["mean"] for prediction in document["predictions"]])
    np.testing.assert_allclose(means, python.mean, atol=1e-6)
    independent = MCSession(files["model"], seed=0).predict(files["x"], passes=PASSES, masks="independent")
    assert independent.samples.std(axis=0).max() > 0.01  # the passes differ


def test_score_evaluate_calibrate_acquire(files):
    import pyarrow.parquet as pq

    folder = files["folder"]
    invoke("score", files["tokens"], "--model", files["model"], "--out", folder / "scores.parquet", "--passes", PASSES,
           "--mask-seed", MASK_SEED)
    table = pq.read_table(folder / "scores.parquet")
    python = MCSession(files["model"], seed=0).predict(files["x"], passes=PASSES, masks="shared", mask_seed=MASK_SEED)
    assert table.num_rows == 24
    np.testing.assert_allclose(np.array(table.column("mean").to_pylist()), python.mean, atol=1e-6)

    report = json.loads(invoke("evaluate", files["model"], files["labelled"], "--passes", PASSES, "--seed", 0,
                               "--json").stdout)
    assert report["count"] == 24 and 0 <= report["mc"]["accuracy"] <= 1
    invoke("calibrate", files["model"], files["labelled"], "-o", folder / "calibrated.onnx", "--passes", PASSES,
           "--target-coverage", 0.8)
    assert MCSession(folder / "calibrated.onnx").info.stochastic_layers == MCSession(files["model"]).info.stochastic_layers
    invoke("acquire", files["tokens"], "--model", folder / "calibrated.onnx", "--k", 3, "--strategy", "bald",
           "--passes", PASSES, "--mask-seed", MASK_SEED, "--out", folder / "picked.json")
    assert len(json.loads((folder / "picked.json").read_text())["rows"]) == 3


MASK_SET_SCRIPT = """
import { readFileSync } from "node:fs";
import { maskSet, readModelFile } from "%s";
const { metadata } = readModelFile(new Uint8Array(readFileSync(process.argv[1])));
const set = maskSet(metadata, %d, { first: 0, count: %d });
process.stdout.write(Buffer.from(set.buffer, set.byteOffset, set.byteLength).toString("base64"));
"""


def test_node_example_runs_it_in_both_mask_modes(files):
    node()  # skips (or fails with MCDROP_REQUIRE_EXAMPLES=1) without node and `npm ci`
    session = MCSession(files["model"], seed=0)
    x = files["x"][:4]
    np.save(files["folder"] / "four.npy", x)
    shared = run_node([INFER_JS, files["model"], files["folder"] / "four.npy", "--masks", "shared", "--mask-seed",
                       MASK_SEED, "--passes", PASSES, "--samples", "--json"])
    assert shared.returncode == 0, shared.stderr
    node_samples = np.array([r["samples"] for r in json.loads(shared.stdout)["results"]]).transpose(1, 0, 2)
    python = session.predict(x, passes=PASSES, masks="shared", mask_seed=MASK_SEED)
    assert np.abs(node_samples - python.samples).max() <= LIVE_ATOL
    assert node_samples.std(axis=0).max() > 0.01

    independent = run_node([INFER_JS, files["model"], files["folder"] / "four.npy", "--masks", "independent",
                            "--passes", PASSES, "--samples", "--json"])
    assert independent.returncode == 0, independent.stderr
    samples = np.array([r["samples"] for r in json.loads(independent.stdout)["results"]]).transpose(1, 0, 2)
    assert samples.std(axis=0).max() > 0.01 and not np.allclose(samples, node_samples)

    # The attention masks are in the set JavaScript builds, byte for byte Python's.
    script = MASK_SET_SCRIPT % ((EXAMPLES / "lib" / "mcdrop.mjs").as_uri(), MASK_SEED, PASSES)
    done = run_node(["--input-type=module", "-e", script, files["model"]])
    assert done.returncode == 0, done.stderr
    want = draw(_layout(session), MASK_SEED, 0, PASSES)
    got = np.frombuffer(base64.b64decode(done.stdout), np.float32).reshape(want.shape)
    assert got.tobytes() == want.tobytes()


def _layout(session):
    return session.info.mask_layout
