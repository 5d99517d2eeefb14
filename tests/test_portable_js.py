"""Portable files in JavaScript (examples/lib/mcdrop.mjs keepMasks, feeds; docs/FORMAT.md: Portable
profile): the keep masks equal Python's byte for byte, onnxruntime-node fed them gives the Python
runtime's samples, and every bad feed is one clear error. Skipped without node or `npm ci` in
examples/ (tests/js_support.py)."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")

from mcdrop.convert import convert_file  # noqa: E402
from mcdrop.runtime.portable_masks import keep_masks  # noqa: E402
from mcdrop.runtime.session import MCSession  # noqa: E402
from js_support import EXAMPLES, ROOT, node, run_node  # noqa: E402

LIB = (EXAMPLES / "lib" / "mcdrop.mjs").as_uri()
PASSES = 4

HOOK = f"""
import {{ readFileSync }} from "node:fs";
import {{ createRequire }} from "node:module";
import {{ feeds, keepMasks, readModelFile }} from "{LIB}";
const ort = createRequire("{EXAMPLES / 'package.json'}")("onnxruntime-node");
const [path, bakedPath] = process.argv.slice(1);
const bytes = readFileSync(path);
const {{ metadata }} = readModelFile(new Uint8Array(bytes));
const baked = readModelFile(new Uint8Array(readFileSync(bakedPath))).metadata;
const P = metadata.masks.floats_per_pass;
const x = {{ data: new Float32Array(784).fill(0.5), dims: [1, 28, 28, 1] }};
const kept = keepMasks(metadata, 5, {{ first: 0, count: {PASSES} }});
const session = await ort.InferenceSession.create(bytes);
const samples = (await session.run(feeds(ort, x, {{ masks: kept }}, metadata))).samples;
const cases = {{
  no_masks: () => feeds(ort, x, {{}}, metadata),
  float_masks: () => feeds(ort, x, {{ masks: new Float32Array({PASSES} * P) }}, metadata),
  short_masks: () => feeds(ort, x, {{ masks: kept.subarray(1) }}, metadata),
  masks_of_2: () => feeds(ort, x, {{ masks: new Uint8Array({PASSES} * P).fill(2) }}, metadata),
  other_passes: () => feeds(ort, x, {{ passes: 9, masks: kept }}, metadata),
  other_batch: () => feeds(ort, [x, x], {{ masks: kept }}, metadata),
  baked_with_masks: () => feeds(ort, x, {{ masks: kept }}, baked),
}};
const errors = {{}};
for (const [name, make] of Object.entries(cases)) {{
  try {{ make(); errors[name] = null; }} catch (err) {{ errors[name] = err.message; }}
}}
const middle = keepMasks(metadata, 5, {{ first: 3, count: 2 }});
process.stdout.write(JSON.stringify({{ samples: Array.from(samples.data), dims: samples.dims,
  middle: Buffer.from(middle).toString("base64"), errors }}));
"""


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    node()
    folder = tmp_path_factory.mktemp("portable_js")
    convert_file(ROOT / "models" / "cnn.onnx", folder / "cnn.onnx", batch_size=1, passes=PASSES, validate=False)
    convert_file(ROOT / "models" / "cnn.onnx", folder / "baked.onnx", passes=PASSES, bake_masks=5, validate=False)
    done = run_node(["--input-type=module", "-e", HOOK, folder / "cnn.onnx", folder / "baked.onnx"])
    assert done.returncode == 0, done.stderr
    return folder / "cnn.onnx", json.loads(done.stdout)


def test_keep_masks_equal_python_byte_for_byte(portable):
    path, answer = portable
    info = MCSession(path).info
    python = keep_masks(info.mask_layout, [layer.rate for layer in info.stochastic_layers], 5, 3, 2)
    import base64

    assert base64.b64decode(answer["middle"]) == python.tobytes()


def test_onnxruntime_node_gives_the_python_samples(portable):
    path, answer = portable
    x = np.full((1, 28, 28, 1), 0.5, np.float32)
    want = MCSession(path).predict(x, mask_seed=5).samples
    got = np.array(answer["samples"], np.float32).reshape(answer["dims"])
    assert np.max(np.abs(got - want)) <= 1e-5


@pytest.mark.parametrize("case, fragment", [
    ("no_masks", "needs its keep masks"), ("float_masks", "uint8 keep masks"), ("short_masks", "got 350463"),
    ("masks_of_2", "0 (drop) or 1 (keep)"), ("other_passes", "asked for 9"), ("other_batch", "batch of 2"),
    ("baked_with_masks", "takes none")])
def test_bad_feeds_are_one_line(portable, case, fragment):
    message = portable[1]["errors"][case]
    assert message is not None and fragment in message and "\n" not in message


GOLDEN_HOOK = f"""
import {{ readFileSync }} from "node:fs";
import {{ createRequire }} from "node:module";
import {{ feeds, keepMasks, readModelFile }} from "{LIB}";
const ort = createRequire("{EXAMPLES / 'package.json'}")("onnxruntime-node");
const [path, inputs] = process.argv.slice(1);
const bytes = readFileSync(path);
const {{ metadata }} = readModelFile(new Uint8Array(bytes));
const {{ data, dims, seed }} = JSON.parse(readFileSync(inputs, "utf8"));
const x = {{ data: Float32Array.from(data), dims }};
const session = await ort.InferenceSession.create(bytes);
const kept = keepMasks(metadata, seed, {{ first: 0, count: metadata.portable.passes }});
const mc = (await session.run(feeds(ort, x, {{ masks: kept }}, metadata))).samples;
const det = (await session.run(feeds(ort, x, {{ masks: kept, stochastic: false }}, metadata))).samples;
process.stdout.write(JSON.stringify({{ mc: Array.from(mc.data), det: Array.from(det.data), dims: mc.dims }}));
"""


def test_golden_vectors_onnxruntime_node(tmp_path):
    """tests/golden/portable_cnn.json on onnxruntime-node with mcdrop.mjs's keep masks (each
    runtime's test checks the same file)."""
    from portable_golden import check, golden, golden_inputs

    node()
    path = tmp_path / "cnn_portable.onnx"
    convert_file(ROOT / "models" / "cnn.onnx", path, passes=golden()["passes"], validate=False)
    x = golden_inputs()
    feed = tmp_path / "inputs.json"
    feed.write_text(json.dumps({"data": x.ravel().tolist(), "dims": list(x.shape), "seed": golden()["mask_seed"]}))
    done = run_node(["--input-type=module", "-e", GOLDEN_HOOK, path, feed])
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    check(np.array(answer["mc"], np.float32).reshape(answer["dims"]),
          np.array(answer["det"], np.float32).reshape(answer["dims"]))
