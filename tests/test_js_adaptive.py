"""passes "auto" in JavaScript (examples/lib/mcdrop.mjs predict) against the Python runtime
(runtime/adaptive_passes.py, MCSession.predict): the same rounds of the same mask set and the same
stopping rule on the same float32 values, so each input stops after the same passes, with the same
label and verdict. Skipped without node or without `npm ci` in examples/ (failed instead with
MCDROP_REQUIRE_EXAMPLES=1; tests/js_support.py).
"""

import json

import numpy as np
import pytest

from mcdrop.runtime import adaptive_passes
from mcdrop.runtime.session import MCSession
from js_support import EXAMPLES, LIVE_ATOL, ROOT, node, run_node
from test_adaptive_passes import inputs

LIB = (EXAMPLES / "lib" / "mcdrop.mjs").as_uri()
CNN = ROOT / "models" / "cnn.onnx"
MAX_PASSES, MASK_SEED = 60, 1
LOOK_AHEAD = (0, 30, 10**9)  # fixedCost: what a run's fixed part costs, in passes
# A rule on each measure that changes with passes: a settle check computes only the standard errors
# its rule reads (errorsNeeded), so each needs its own.
RULES = ("predictive_entropy > 0.3", "expected_entropy > 0.2", "variation_ratio > 0.1",
         "top_class_variance > 0.01", "one_minus_confidence > 0.1", "margin < 0.5", "confidence < 0.9")

# Reads {x: flat float32 list, dims, options: [predict options...]} on stdin; prints per options
# entry the results' [label, uncertain, passes, mutual_information] or {error}.
PREDICT_HOOK = f"""
import {{ readFileSync }} from "node:fs";
import {{ createRequire }} from "node:module";
import {{ predict, readModelFile, schedule }} from "{LIB}";
const ort = createRequire("{(EXAMPLES / 'package.json').as_posix()}")("onnxruntime-node");
const request = JSON.parse(readFileSync(0, "utf8"));
const bytes = readFileSync("{CNN.as_posix()}");
const {{ metadata }} = readModelFile(bytes);
const session = await ort.InferenceSession.create(bytes);
let calls = 0;
const run = session.run.bind(session);
session.run = (...args) => {{ calls += 1; return run(...args); }};
const x = {{ data: Float32Array.from(request.x), dims: request.dims }};
const out = {{ schedule: schedule(10, 200), runs: [], calls: [] }};
for (const options of request.options) {{
  calls = 0;
  try {{
    const found = await predict(ort, session, x, metadata, options);
    out.runs.push(found.map((r) => [r.index, r.uncertain, r.passes, r.mutual_information]));
  }} catch (err) {{
    out.runs.push({{ error: err.message }});
  }}
  out.calls.push(calls);
}}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def found():
    node()
    x = inputs(10)[..., None]
    options = [dict(passes="auto", maxPasses=MAX_PASSES, maskSeed=MASK_SEED),
               dict(passes=12, maskSeed=MASK_SEED),
               dict(passes="auto", maxPasses=0), dict(passes="auto", maxPasses=10, minPasses=20),
               dict(passes=10, maxPasses=20), dict(passes="auto", maxPasses=MAX_PASSES, fixedCost=-1)]
    # The same auto run with its runs looking ahead: none, a few rounds, straight to maxPasses.
    options += [dict(passes="auto", maxPasses=MAX_PASSES, maskSeed=MASK_SEED, fixedCost=cost) for cost in LOOK_AHEAD]
    options += [dict(passes="auto", maxPasses=MAX_PASSES, maskSeed=MASK_SEED, rule=rule) for rule in RULES]
    done = run_node(["--input-type=module", "-e", PREDICT_HOOK],
                    input=json.dumps(dict(x=x.reshape(-1).tolist(), dims=list(x.shape), options=options)))
    assert done.returncode == 0, done.stderr
    return x, json.loads(done.stdout)


def test_js_auto_stops_each_input_where_python_does(found):
    x, out = found
    expected = MCSession(str(CNN), seed=0, threads=1).predict(x, passes="auto", max_passes=MAX_PASSES,
                                                              mask_seed=MASK_SEED)
    label, uncertain, passes, information = (np.array(column) for column in zip(*out["runs"][0]))
    assert passes.tolist() == expected.input_passes.tolist()
    assert len(set(passes)) > 1 and passes.min() < MAX_PASSES  # inputs stopped at different rounds
    assert label.tolist() == expected.measures["label"].tolist()
    assert uncertain.tolist() == expected.uncertain.tolist()
    np.testing.assert_allclose(information, expected.measures["mutual_information"], atol=LIVE_ATOL)


@pytest.mark.parametrize("rule", RULES)
def test_js_auto_stops_where_python_does_under_any_rule(found, rule):
    x, out = found
    expected = MCSession(str(CNN), seed=0, threads=1).predict(x, passes="auto", max_passes=MAX_PASSES,
                                                              mask_seed=MASK_SEED, uncertain_if=rule)
    label, uncertain, passes, _ = (np.array(column) for column in zip(*out["runs"][9 + RULES.index(rule)]))
    assert passes.tolist() == expected.input_passes.tolist()
    assert uncertain.tolist() == expected.uncertain.tolist()
    assert label.tolist() == expected.measures["label"].tolist()


def test_js_schedule_and_fixed_passes(found):
    x, out = found
    assert out["schedule"] == adaptive_passes.schedule(10, 200)
    assert [row[2] for row in out["runs"][1]] == [12] * len(x)
    fixed = MCSession(str(CNN), seed=0, threads=1).predict(x, passes=12, mask_seed=MASK_SEED)
    assert [row[0] for row in out["runs"][1]] == fixed.measures["label"].tolist()


def test_js_bad_values(found):
    _, out = found
    assert [run["error"] for run in out["runs"][2:6]] == [
        "maxPasses must be an integer >= 1, got 0", "minPasses 20 is more than maxPasses 10",
        'maxPasses, minPasses and fixedCost are for passes "auto"', "fixedCost must be a number >= 0, got -1"]


def test_js_runs_that_look_ahead_change_no_inputs_passes_or_result(found):
    """As in Python (test_adaptive_passes.py): however far a run looks ahead (none, a few rounds,
    straight to maxPasses), each input stops where the rounds alone stop it, with the same values;
    only the number of runs changes. The first auto predict of the session measured the cost first
    (PROBE_REPEATS runs at each of two pass counts)."""
    _, out = found
    plain, ahead, whole = out["runs"][6:9]
    assert plain == ahead == whole == out["runs"][0]
    rounds = adaptive_passes.schedule(10, MAX_PASSES).index(max(row[2] for row in plain)) + 1
    assert out["calls"][6] == rounds and out["calls"][8] == 1 and 1 < out["calls"][7] < rounds
    assert 2 * 3 + 1 <= out["calls"][0] <= 2 * 3 + rounds
