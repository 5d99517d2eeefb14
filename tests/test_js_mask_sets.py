"""Shared mask sets in JavaScript (examples/lib/mcdrop.mjs maskSet, feeds; examples/node/infer.js
--masks, --mask-seed) against the Python runtime (runtime/format/mask_sets.py, MCSession.predict).

The generator is fully specified (docs/FORMAT.md: Mask sets), so a set is compared byte for byte;
samples run through onnxruntime-node are compared within LIVE_ATOL (the same float kernels, only
summation order differs). Skipped without node or without `npm ci` in examples/ (failed instead
with MCDROP_REQUIRE_EXAMPLES=1; tests/js_support.py).
"""

import base64
import json

import numpy as np
import pytest

from mcdrop.runtime.format import mask_sets as masks
from mcdrop.runtime.input_files import load_inputs
from mcdrop.runtime.format.mask_sets import MaskLayout
from mcdrop.runtime.format.onnx_file import read_model
from mcdrop.runtime.session import MCSession
from js_support import EXAMPLES, INFER_JS, LIVE_ATOL, NODE_TIMEOUT, ROOT, golden, node, node_modules, run_node, \
    start_node

LIB = (EXAMPLES / "lib" / "mcdrop.mjs").as_uri()
CNN = "models/cnn.onnx"
SEEDS = [0, 1, 2**53 - 1, 2**64 - 1]
RANGES = [(0, 2), (5, 3)]  # (first, count)
SHARED_PASSES = 20

# Reads a JSON request on stdin: {models: {name: path}, metadata: {name: metadata object},
# draws: [{model, seed (a decimal string: a BigInt above 2**53 - 1, else a Number), first, count}]}
# and prints {layouts: {name: parsed.maskLayout}, draws: [{data: base64 float32 | error}]}.
MASK_SET_HOOK = f"""
import {{ readFileSync }} from "node:fs";
import {{ maskSet, readModelFile }} from "{LIB}";
let text = "";
for await (const chunk of process.stdin) text += chunk;
const request = JSON.parse(text);
const metadata = {{ ...request.metadata }}, layouts = {{}};
for (const [name, path] of Object.entries(request.models)) {{
  const parsed = readModelFile(new Uint8Array(readFileSync(path)));
  metadata[name] = parsed.metadata;
  layouts[name] = parsed.maskLayout;
}}
const seedOf = (text) => (BigInt(text) > BigInt(Number.MAX_SAFE_INTEGER) ? BigInt(text) : Number(text));
const draws = request.draws.map(({{ model, seed, first, count }}) => {{
  try {{
    const set = maskSet(metadata[model], typeof seed === "string" ? seedOf(seed) : seed, {{ first, count }});
    return {{ data: Buffer.from(set.buffer, set.byteOffset, set.byteLength).toString("base64") }};
  }} catch (err) {{
    return {{ error: err.message }};
  }}
}});
process.stdout.write(JSON.stringify({{ layouts, draws }}));
"""

# What feeds puts in `masks` for a fake ort: {name: [type, dims, length] of each feed | error}.
FEEDS_HOOK = f"""
import {{ readFileSync }} from "node:fs";
import {{ feeds, maskSet, readModelFile }} from "{LIB}";
class Tensor {{ constructor(type, data, dims) {{ Object.assign(this, {{ type, data, dims }}); }} }}
const ort = {{ Tensor }};
const {{ metadata }} = readModelFile(new Uint8Array(readFileSync("{CNN}")));
const x = {{ data: new Float32Array(784), dims: [1, 28, 28, 1] }};
const cases = {{
  empty: () => feeds(ort, x, {{ passes: 4 }}, metadata),
  shared: () => feeds(ort, [x, x], {{ passes: 4, masks: maskSet(metadata, 3, {{ count: 4 }}) }}, metadata),
  wrong_length: () => feeds(ort, x, {{ passes: 5, masks: maskSet(metadata, 3, {{ count: 4 }}) }}, metadata),
  no_layout: () => feeds(ort, x, {{ passes: 4 }}, {{ ...metadata, masks: null }}),
  no_layout_set: () => feeds(ort, x, {{ passes: 1, masks: new Float32Array(0) }}, {{ ...metadata, masks: null }}),
  format_2: () => feeds(ort, x, {{ passes: 4 }}, {{ ...metadata, format: 2 }}),
}};
const out = {{}};
for (const [name, make] of Object.entries(cases)) {{
  try {{
    out[name] = Object.fromEntries(Object.entries(make()).map(([k, t]) => [k, [t.type, t.dims.map(Number), t.data.length]]));
  }} catch (err) {{
    out[name] = {{ error: err.message }};
  }}
}}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module", autouse=True)
def _node_ready():
    node()


def run_module(script: str, request=None):
    done = run_node(["--input-type=module", "-e", script], input=None if request is None else json.dumps(request))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def metadata_of(path: str) -> dict:
    return json.loads(read_model((ROOT / path).read_bytes()).metadata["mcdrop"])


def layout_of(meta: dict) -> MaskLayout:
    return masks.layout_from_metadata(meta, meta["stochastic_layers"])


def sample_paths():
    return [entry["path"] for entry in golden()["samples"]]


def infer(*args):
    done = run_node([INFER_JS, *args])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def samples_of(document) -> np.ndarray:
    """[T, B, classes] from infer.js --json --samples."""
    return np.array([r["samples"] for r in document["results"]]).transpose(1, 0, 2)


# The generator: JS = Python, byte for byte ------------------------------------------------------

# A layout with a normal layer between uniform ones (the shipped models' layers are all dropout).
MIXED = {"format": 3, "masks": {"generator": "philox4x64-10", "floats_per_pass": 23},
         "stochastic_layers": [{"name": "a", "distribution": "uniform", "mask_offset": 0, "mask_shape": [2, 3]},
                               {"name": "g", "distribution": "normal", "mask_offset": 6, "mask_shape": [13]},
                               {"name": "b", "distribution": "uniform", "mask_offset": 19, "mask_shape": [4]}]}


def test_mask_sets_equal_python_byte_for_byte():
    models = {"cnn": CNN, "mlp": "models/mlp.onnx"}
    metas = {name: metadata_of(path) for name, path in models.items()}
    metas["mixed"] = MIXED
    draws = [{"model": name, "seed": str(seed), "first": first, "count": count}
             for name in metas for seed in SEEDS for first, count in RANGES]
    draws.append({"model": "mixed", "seed": "12345", "first": 0, "count": 300})  # 3,900 normal values
    draws.append({"model": "mlp", "seed": 1, "first": 5, "count": 3})  # a Number seed = the BigInt one
    answer = run_module(MASK_SET_HOOK, {"models": {name: str(ROOT / path) for name, path in models.items()},
                                        "metadata": {"mixed": MIXED}, "draws": draws})
    for name in models:
        layout, js = layout_of(metas[name]), answer["layouts"][name]
        assert js["floatsPerPass"] == layout.floats_per_pass
        assert [(e["offset"], tuple(e["shape"]), e["size"], e["distribution"]) for e in js["entries"]] == \
               [(e.offset, e.shape, e.size, e.distribution) for e in layout.entries]
    for request, result in zip(draws, answer["draws"]):
        assert "error" not in result, (request, result)
        layout = layout_of(metas[request["model"]])
        want = masks.draw(layout, int(request["seed"]), request["first"], request["count"])
        got = np.frombuffer(base64.b64decode(result["data"]), np.float32).reshape(want.shape)
        assert got.tobytes() == want.tobytes(), f"{request}: {np.count_nonzero(got != want)} values differ"
    mixed = masks.draw(layout_of(MIXED), 12345, 0, 300)
    assert mixed[:, 6:19].min() < -2 and mixed[:, 6:19].max() > 2  # the normal columns are normal draws


def test_mask_set_refuses_bad_seeds_and_ranges():
    bad = [{"seed": "18446744073709551616"}, {"seed": -1}, {"seed": 1.5}, {"seed": 2**53},
           {"seed": 0, "first": -1}, {"seed": 0, "count": None}]
    draws = [{"model": "cnn", "first": 0, "count": 1, **case} for case in bad]
    answer = run_module(MASK_SET_HOOK, {"models": {"cnn": str(ROOT / CNN)}, "metadata": {}, "draws": draws})
    errors = [result.get("error") for result in answer["draws"]]
    assert all(errors), errors
    assert "2**64 - 1" in errors[0] and "first" in errors[4] and "count" in errors[5]


def test_feeds_adds_the_masks_input():
    out = run_module(FEEDS_HOOK)
    floats = layout_of(metadata_of(CNN)).floats_per_pass
    assert out["empty"]["masks"] == ["float32", [0, floats], 0]
    assert out["empty"]["passes"][:2] == ["int64", []] and out["empty"]["stochastic"][:2] == ["bool", []]
    assert out["shared"]["masks"] == ["float32", [4, floats], 4 * floats]
    assert out["shared"]["input"] == ["float32", [2, 28, 28, 1], 2 * 784]
    assert out["wrong_length"]["error"].startswith(f"a mask set for 5 passes holds {5 * floats} values")
    assert out["no_layout"]["masks"] == ["float32", [0, 0], 0]
    assert "no mask set" in out["no_layout_set"]["error"]
    assert "masks" not in out["format_2"] and set(out["format_2"]) == {"input", "passes", "stochastic"}


# infer.js: shared mode = the Python runtime's shared mode ----------------------------------------

@pytest.fixture(scope="module")
def shared_runs():
    """infer.js --masks shared --mask-seed 7 over the golden samples, twice side by side, and the
    Python runtime's samples meanwhile."""
    args = [INFER_JS, CNN, *sample_paths(), "--masks", "shared", "--mask-seed", "7", "--passes", str(SHARED_PASSES),
            "--json", "--samples"]
    running = [start_node(args), start_node(args)]
    session = MCSession(ROOT / CNN)
    _, x = load_inputs([str(ROOT / path) for path in sample_paths()], session.info)
    python = session.predict(x, passes=SHARED_PASSES, masks="shared", mask_seed=7)
    outs = []
    for process in running:
        out, err = process.communicate(timeout=NODE_TIMEOUT)
        assert process.returncode == 0 and err == "", err
        outs.append(out)
    return outs, python


def test_shared_mode_samples_equal_python(shared_runs):
    (out, _), python = shared_runs
    document = json.loads(out)
    assert (document["masks"], document["mask_seed"], document["passes"]) == ("shared", 7, SHARED_PASSES)
    node_samples = samples_of(document)
    assert node_samples.shape == python.samples.shape == (SHARED_PASSES, len(sample_paths()), 10)
    difference = np.abs(node_samples - python.samples).max()
    print(f"\nshared masks, seed 7, T={SHARED_PASSES}: max |node - python| = {difference:.2e}")
    assert difference <= LIVE_ATOL
    assert node_samples.std(axis=0).max() > 0.01  # the passes differ: dropout is on


def test_shared_mode_repeats_exactly(shared_runs):
    (first, second), _ = shared_runs
    assert first == second


def test_seed_is_the_mask_seed_and_a_big_mask_seed_works():
    """--seed S without --mask-seed is mask seed S (as `python cli.py infer`); a seed above 2**53 - 1
    reaches the set and the JSON whole."""
    paths = ["models/samples/ambiguous.png", "models/samples/digit_8.png"]
    big = 2**64 - 1
    runs = {"seed": start_node([INFER_JS, CNN, *paths, "--seed", "7", "--passes", "5", "--json", "--samples"]),
            "big": start_node([INFER_JS, CNN, *paths, "--mask-seed", str(big), "--passes", "5", "--json", "--samples"])}
    session = MCSession(ROOT / CNN)
    _, x = load_inputs([str(ROOT / path) for path in paths], session.info)
    want = {"seed": session.predict(x, passes=5, masks="shared", mask_seed=7).samples,
            "big": session.predict(x, passes=5, masks="shared", mask_seed=big).samples}
    for name, process in runs.items():
        out, err = process.communicate(timeout=NODE_TIMEOUT)
        assert process.returncode == 0 and err == "", err
        document = json.loads(out)
        assert document["masks"] == "shared" and document["mask_seed"] == (7 if name == "seed" else big)
        assert np.abs(samples_of(document) - want[name]).max() <= LIVE_ATOL, name


# infer.js: independent mode and the defaults ------------------------------------------------------

def test_independent_mode_draws_new_masks_per_launch_and_default_is_shared_with_a_fresh_seed():
    args = [INFER_JS, CNN, "models/samples/ambiguous.png", "--passes", "20", "--json", "--samples"]
    running = [start_node([*args, "--masks", "independent"]) for _ in range(2)] + [start_node(args) for _ in range(2)]
    documents = []
    for process in running:
        out, err = process.communicate(timeout=NODE_TIMEOUT)
        assert process.returncode == 0 and err == "", err
        documents.append(json.loads(out))
    independent, default = documents[:2], documents[2:]
    assert [(d["masks"], d["mask_seed"]) for d in independent] == [("independent", None)] * 2
    a, b = (samples_of(d) for d in independent)
    assert not np.array_equal(a, b), "two independent launches drew the same masks"
    assert a.std(axis=0).max() > 0.01
    assert [d["masks"] for d in default] == ["shared"] * 2
    seeds = [d["mask_seed"] for d in default]
    assert all(isinstance(s, int) and 0 <= s < 2**53 for s in seeds) and seeds[0] != seeds[1]
    assert not np.array_equal(*(samples_of(d) for d in default))


def test_deterministic_pass_reports_no_masks():
    document = json.loads(infer(CNN, "models/samples/digit_3.png", "--deterministic", "--json"))
    assert (document["masks"], document["mask_seed"], document["passes"]) == (None, None, 1)


@pytest.mark.parametrize("args, message", [
    (["--masks", "sometimes"], "--masks must be one of shared, independent"),
    (["--masks", "independent", "--mask-seed", "3"], "--mask-seed is for --masks shared"),
    (["--mask-seed"], "--mask-seed needs a value"),
])
def test_mask_usage_errors_exit_2(args, message):
    done = run_node([INFER_JS, CNN, "models/samples/digit_3.png", *args])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[0].startswith(f"error: {message}")
    assert "--masks shared|independent" in done.stderr and "--mask-seed S" in done.stderr


def test_bad_mask_seed_value_is_bad_input():
    done = run_node([INFER_JS, CNN, "models/samples/digit_3.png", "--mask-seed", str(2**64)])
    assert done.returncode == 1 and done.stderr.startswith("error: --mask-seed must be an integer from 0 to 2**64 - 1")


# onnxruntime-web (its wasm build, run in Node) takes both kinds of `masks` feed ----------------------

WEB_HOOK = f"""
import {{ readFileSync }} from "node:fs";
import * as ort from "{(EXAMPLES / 'node_modules' / 'onnxruntime-web' / 'dist' / 'ort.node.min.mjs').as_uri()}";
import {{ MINSTD, feeds, maskSet, readModelFile, withFreshSeeds }} from "{LIB}";
ort.env.wasm.numThreads = 1;
const bytes = new Uint8Array(readFileSync("{CNN}"));
const parsed = readModelFile(bytes);
const session = await ort.InferenceSession.create(withFreshSeeds(bytes, {{ parsed, multiplier: MINSTD.wasm }}),
  {{ executionProviders: ["wasm"] }});
const x = JSON.parse(readFileSync(0, "utf8"));
const input = {{ data: Float32Array.from(x.data), dims: x.dims }};
const independent = await session.run(feeds(ort, input, {{ passes: 6 }}, parsed.metadata));
const masks = maskSet(parsed.metadata, 7, {{ count: 6 }});
const shared = await session.run(feeds(ort, input, {{ passes: 6, masks }}, parsed.metadata));
process.stdout.write(JSON.stringify({{ independent: Array.from(independent.samples.data),
  shared: Array.from(shared.samples.data), dims: shared.samples.dims }}));
"""


def test_onnxruntime_web_takes_empty_and_shared_masks():
    node_modules("onnxruntime-web")
    paths = ["models/samples/ambiguous.png", "models/samples/digit_8.png"]
    session = MCSession(ROOT / CNN)
    _, x = load_inputs([str(ROOT / path) for path in paths], session.info)
    out = run_module(WEB_HOOK, {"data": x.ravel().tolist(), "dims": list(x.shape)})
    shared = np.array(out["shared"]).reshape(out["dims"])
    independent = np.array(out["independent"]).reshape(out["dims"])
    want = session.predict(x, passes=6, masks="shared", mask_seed=7).samples
    assert np.abs(shared - want).max() <= LIVE_ATOL
    assert np.isfinite(independent).all() and independent.std(axis=0).max() > 0.01


KEPT_HOOK = """
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { KEPT_MASK_BYTES, keptMaskPasses, maskLayout, predict, readModelFile } from "LIB";
const ort = createRequire("PACKAGE")("onnxruntime-node");
const request = JSON.parse(readFileSync(0, "utf8"));
const bytes = readFileSync("CNN");
const { metadata } = readModelFile(bytes);
const session = await ort.InferenceSession.create(bytes);
const x = { data: Float32Array.from(request.x), dims: request.dims };
const out = { keep: Math.floor(KEPT_MASK_BYTES / 4 / maskLayout(metadata).floatsPerPass), runs: [] };
for (const options of request.options) {
  const found = await predict(ort, session, x, metadata, options);
  const kept = keptMaskPasses(session);
  out.runs.push({ mean: found.map((r) => r.mean), kept: [Number(kept.seed), kept.passes] });
}
process.stdout.write(JSON.stringify(out));
"""


def test_predict_keeps_the_first_passes_of_its_set_and_gives_the_same_results():
    """The library's predict keeps a session's shared set's first passes between predicts (up to
    KEPT_MASK_BYTES, 191 of the shipped CNN's passes) and draws the rest: 30 passes, 200 (the kept
    30 carried over, 161 more kept, 9 drawn), 200 again (191 kept, 9 drawn) and another seed give
    Python's means."""
    x = np.random.default_rng(3).random((3, 28, 28, 1), dtype=np.float32)
    options = [dict(passes=30, maskSeed=4), dict(passes=200, maskSeed=4), dict(passes=200, maskSeed=4),
               dict(passes=30, maskSeed=5)]
    hook = KEPT_HOOK.replace("LIB", LIB).replace("PACKAGE", (EXAMPLES / "package.json").as_posix()).replace(
        "CNN", (ROOT / CNN).as_posix())
    done = run_node(["--input-type=module", "-e", hook],
                    input=json.dumps(dict(x=x.reshape(-1).tolist(), dims=list(x.shape), options=options)))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["keep"] == 191
    assert [run["kept"] for run in out["runs"]] == [[4, 30], [4, 191], [4, 191], [5, 30]]
    session = MCSession(ROOT / CNN, threads=1)
    for options, run in zip(options, out["runs"]):
        want = session.predict(x, passes=options["passes"], mask_seed=options["maskSeed"]).mean
        np.testing.assert_allclose(np.array(run["mean"]), want, atol=LIVE_ATOL)
