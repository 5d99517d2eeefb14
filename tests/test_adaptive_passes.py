"""Adaptive passes (issue 26 item 2): passes="auto" keeps fixed T's label and verdict with fewer
passes, per input, whatever the batch; bad values fail with one line."""

import sys
from pathlib import Path

import numpy as np
import pytest

from mcdrop.runtime import MCSession
from mcdrop.runtime import adaptive_passes
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.prediction import Prediction
from mcdrop.runtime.uncertain_rule import Rule, default_rule
from cli_runs import run_cli  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"
MAX_PASSES = 100


def inputs(count: int):
    """Held-out digits, then a few noise images and blends of two digits, [0, 1], 28x28."""
    sys.path.insert(0, str(MODELS))
    try:
        import build_models

        images, labels = build_models.digits_28x28()
        _, test, _, _ = build_models.split(images, labels)
    finally:
        sys.path.remove(str(MODELS))
    digits = (test[:count] / 255.0).astype(np.float32)
    rng = np.random.default_rng(0)
    blends = 0.5 * digits[:4] + 0.5 * digits[4:8]
    return np.concatenate([digits, rng.random((4, 28, 28), dtype=np.float32), blends]).astype(np.float32)


@pytest.fixture(scope="module")
def mlp():
    return MCSession(str(MODELS / "mlp.onnx"), seed=0, threads=1)


@pytest.fixture(scope="module")
def mlp_inputs():
    return inputs(40).reshape(-1, 784)


def agreement(fixed, auto):
    return np.mean((fixed.measures["label"] == auto.measures["label"]) & (fixed.uncertain == auto.uncertain))


def test_auto_keeps_fixed_label_and_verdict_with_fewer_passes(mlp, mlp_inputs):
    fixed = mlp.predict(mlp_inputs, passes=MAX_PASSES, mask_seed=3)
    auto = mlp.predict(mlp_inputs, passes="auto", max_passes=MAX_PASSES, mask_seed=3)
    assert agreement(fixed, auto) >= 0.99
    assert auto.input_passes.mean() < 0.5 * MAX_PASSES
    assert set(auto.input_passes) <= set(adaptive_passes.schedule(adaptive_passes.DEFAULT_MIN_PASSES, MAX_PASSES))
    assert auto.input_passes.min() < MAX_PASSES  # clear digits leave early ...
    assert (fixed.input_passes == MAX_PASSES).all()


def test_cnn_auto_agrees_with_fixed():
    session = MCSession(str(MODELS / "cnn.onnx"), seed=0, threads=1)
    x = inputs(12)[..., None]
    fixed = session.predict(x, passes=60, mask_seed=1)
    auto = session.predict(x, passes="auto", max_passes=60, min_passes=10, mask_seed=1)
    assert agreement(fixed, auto) >= 0.99
    assert auto.input_passes.mean() < 60


def test_an_inputs_passes_do_not_depend_on_its_batch_or_chunking(mlp_inputs):
    whole = MCSession(str(MODELS / "mlp.onnx"), seed=0, threads=1).predict(
        mlp_inputs, passes="auto", max_passes=MAX_PASSES, mask_seed=5)
    chunked = MCSession(str(MODELS / "mlp.onnx"), seed=0, threads=2, max_chunk_bytes=200_000)
    order = np.random.default_rng(1).permutation(len(mlp_inputs))
    parts = [chunked.predict(mlp_inputs[order[i:i + 7]], passes="auto", max_passes=MAX_PASSES, mask_seed=5)
             for i in range(0, len(order), 7)]
    passes = np.empty(len(order), np.int32)
    label = np.empty(len(order), np.int64)
    for i, part in zip(range(0, len(order), 7), parts):
        passes[order[i:i + 7]] = part.input_passes
        label[order[i:i + 7]] = part.measures["label"]
    assert (passes == whole.input_passes).all()
    assert (label == whole.measures["label"]).all()
    assert len(set(whole.input_passes)) > 1  # the inputs did not all stop together


@pytest.mark.parametrize("ratio", [0.0, 30.0, float("inf")])
def test_looking_ahead_changes_no_inputs_passes_or_result(mlp_inputs, ratio):
    """However the session's measured cost makes its runs look ahead (none, a few rounds, straight
    to max_passes), each input stops where the rounds alone would stop it, with the same samples."""
    plain = MCSession(str(MODELS / "mlp.onnx"), seed=0, threads=1)
    plain._round_cost.ratio = 0.0  # one run per round
    ahead = MCSession(str(MODELS / "mlp.onnx"), seed=0, threads=1)
    ahead._round_cost.ratio = ratio
    runs = []
    ahead_run = ahead._run_plan
    ahead._run_plan = lambda x, plan, *args, **kwargs: (runs.append(plan), ahead_run(x, plan, *args, **kwargs))[1]
    want = plain.predict(mlp_inputs, passes="auto", max_passes=MAX_PASSES, mask_seed=4)
    got = ahead.predict(mlp_inputs, passes="auto", max_passes=MAX_PASSES, mask_seed=4)
    np.testing.assert_array_equal(got.input_passes, want.input_passes)
    np.testing.assert_array_equal(got.mean, want.mean)
    np.testing.assert_array_equal(got.uncertain, want.uncertain)
    schedule = adaptive_passes.schedule(adaptive_passes.DEFAULT_MIN_PASSES, MAX_PASSES)
    first = sum(count for _, count in runs[0]) // len({(r.start, r.stop) for r, _ in runs[0]})
    assert first == {0.0: schedule[0], 30.0: next(c for c in schedule if c >= 30)}.get(ratio, MAX_PASSES)
    assert len(set(want.input_passes)) > 1


@pytest.mark.parametrize("max_passes", [1, 2, 5])
def test_a_fresh_sessions_probe_stays_within_max_passes(mlp_inputs, max_passes):
    """The first auto predict of a session measures the round cost with at most max_passes passes
    (the mask rows it is given stop there), and gives what a session that does not look ahead gives."""
    fresh = MCSession(str(MODELS / "mlp.onnx"), seed=0, threads=1)
    plain = MCSession(str(MODELS / "mlp.onnx"), seed=0, threads=1)
    plain._round_cost.ratio = 0.0
    got, want = (session.predict(mlp_inputs, passes="auto", max_passes=max_passes, min_passes=1, mask_seed=2)
                 for session in (fresh, plain))
    np.testing.assert_array_equal(got.input_passes, want.input_passes)
    np.testing.assert_array_equal(got.mean, want.mean)
    assert (fresh._round_cost.ratio is None) == (max_passes == 1)


def test_round_cost_measures_the_fixed_part_in_passes():
    import time

    cost = adaptive_passes.RoundCost()
    assert cost.target([10, 12, 15, 200], 0, 0) == 10  # nothing measured: one run per round
    cost.measure(lambda passes: 1 / 0, 1)  # nothing to look ahead to: no probe
    assert cost.ratio is None
    cost.measure(lambda passes: time.sleep(0.02 + 0.002 * passes), 200)  # fixed part 10 passes
    assert 5 < cost.ratio < 20
    cost.ratio = 50.0
    assert cost.target([10, 12, 15, 60, 75, 200], 1, 10) == 60  # the first point 50 passes on
    assert cost.target([10, 12, 15, 200], 1, 10) == 200
    cost.measure(lambda passes: 1 / 0, 200)  # measured once per session
    assert cost.ratio == 50.0


def test_passes_in_outputs(mlp, mlp_inputs):
    auto = mlp.predict(mlp_inputs[:3], passes="auto", max_passes=40, mask_seed=0)
    assert auto.to_dict()["input_passes"] == auto.input_passes.tolist()
    assert auto.to_dict(1)["input_passes"] == int(auto.input_passes[1])
    assert (auto.arrays()["input_passes"] == auto.input_passes).all()
    assert auto.passes == auto.input_passes.max()


def test_auto_standard_errors_are_the_same_read_late_or_computed_at_once(mlp, mlp_inputs):
    """Parts that keep their samples compute their errors on first read, and the joined Prediction
    joins them then (runtime/prediction.py StandardErrors): the same values as computed at once."""
    late = mlp.predict(mlp_inputs, passes="auto", max_passes=40, mask_seed=0)
    now = mlp.predict(mlp_inputs, passes="auto", max_passes=40, mask_seed=0, keep_samples=False)
    assert len(set(late.input_passes)) > 1 and set(late.standard_errors) == set(now.standard_errors)
    for name in now.standard_errors:
        np.testing.assert_array_equal(late.standard_errors[name], now.standard_errors[name], err_msg=name)


@pytest.mark.parametrize("arguments, message", [
    (dict(passes="auto", max_passes=0), "max_passes must be >= 1"),
    (dict(passes="auto", max_passes=10, min_passes=20), "min_passes 20 is more than max_passes 10"),
    (dict(passes=10, max_passes=20), "max_passes is for passes auto"),
    (dict(passes=10, min_passes=2), "min_passes is for passes auto"),
    (dict(passes="auto", masks="independent"), "masks independent cannot take it"),
    (dict(passes="often"), "passes must be an integer"),
])
def test_bad_values_fail_with_one_line(mlp, mlp_inputs, arguments, message):
    with pytest.raises(InputError, match=message) as caught:
        mlp.predict(mlp_inputs[:2], **arguments)
    assert "\n" not in str(caught.value)


def test_schedule_grows_by_at_least_one_pass_a_round():
    for low, high in ((1, 4), (3, 3), (10, 200)):
        counts = adaptive_passes.schedule(low, high)
        assert counts[0] == low and counts[-1] == high and all(b > a for a, b in zip(counts, counts[1:]))
    assert adaptive_passes.schedule(1, 4) == [1, 2, 3, 4]  # int(GROWTH * 1) is 1: it used to loop forever


def categorical(passes: int, top: float = 0.999):
    """A softmax Prediction whose `passes` passes all give class 0 probability `top`."""
    pass_ = np.full(10, (1 - top) / 9)
    pass_[0] = top
    return Prediction.from_samples(np.tile(pass_, (passes, 1, 1)), "softmax", rule=default_rule("softmax"))


def test_agreeing_first_passes_do_not_settle_an_input_alone():
    """Ten passes that all agree have mutual information and standard errors of 0; one unseen
    dissenting pass would lift it over the default rule's 0.1, so the input runs on (fixed T=200
    flagged such inputs where a few of its later passes dissented); sixty agreeing passes settle it."""
    assert not adaptive_passes.settled(categorical(10), default_rule("softmax"), 200)[0]
    assert adaptive_passes.settled(categorical(60), default_rule("softmax"), 200)[0]


def test_passes_that_waver_now_and_then_keep_the_verdict_open():
    """Twenty passes on class 0, four of them putting 0.05 on class 1: mutual information 0.016, far
    under the 0.1 bound, yet such inputs are the ones fixed T=200 flagged after a few whole dissenting
    passes; the dissent seen so far (0.2 passes) is added to the unseen one, so they run on where
    twenty passes that all agree settle."""
    samples = np.tile(categorical(20).samples, 1)
    samples[:4, 0, 0], samples[:4, 0, 1] = 0.949, 0.05 + (1 - 0.999) / 9
    wavering = Prediction.from_samples(samples, "softmax", rule=default_rule("softmax"))
    assert wavering.measures["mutual_information"][0] < 0.02
    assert not adaptive_passes.settled(wavering, wavering.rule, 200)[0]
    assert adaptive_passes.settled(categorical(20), default_rule("softmax"), 200)[0]
    z = adaptive_passes.VERDICT_Z * np.sqrt(1 - 20 / 200)  # the unseen dissent alone would settle it
    assert adaptive_passes.verdict_settled(wavering, wavering.rule, z, adaptive_passes.Dissent(wavering, 0.25))[0]


def test_a_sigmoid_heads_wavering_passes_keep_its_verdict_open_too():
    """The seen dissent of a binary head: the passes' probability across the threshold. Twenty passes
    at 0.999, four of them at 0.949: mutual information far under 0.1, but no longer settled."""
    samples = np.full((20, 1, 1), 0.999, np.float32)
    samples[:4] = 0.949
    rule = Rule.parse("mutual_information > 0.1", "binary")
    wavering = Prediction.from_samples(samples, "binary", rule=rule)
    assert adaptive_passes.seen_dissent(wavering)[0] == pytest.approx(20 * (1 - 0.989), rel=1e-3)
    assert not adaptive_passes.settled(wavering, rule, 200)[0]
    steady = Prediction.from_samples(np.full((20, 1, 1), 0.999, np.float32), "binary", rule=rule)
    assert adaptive_passes.settled(steady, rule, 200)[0]
    z = adaptive_passes.VERDICT_Z * np.sqrt(1 - 20 / 200)  # the unseen dissent alone would settle it
    assert adaptive_passes.verdict_settled(wavering, rule, z, adaptive_passes.Dissent(wavering, 0.25))[0]


def binary(passes: int):
    """A binary Prediction of mean 0.53 (0.03 over its threshold) with a standard error of 0.0201."""
    samples = np.where(np.arange(passes) % 2, 0.285, 0.775).reshape(passes, 1, 1)
    return Prediction.from_samples(samples, "binary", rule=Rule(()))


def test_the_aim_is_max_passes_result():
    """After 150 of 200 passes, the 200-pass mean moves by sqrt(1 - 150/200) = half the standard
    error at most as likely: 1.5 SE from the threshold settles the label there (LABEL_Z = 2), not on
    the way to 10000."""
    prediction = binary(150)
    assert abs(float(prediction.standard_errors["mean"][0, 0]) - 0.0201) < 5e-4
    assert adaptive_passes.settled(prediction, prediction.rule, 200)[0]
    assert not adaptive_passes.settled(prediction, prediction.rule, 10_000)[0]


def test_a_single_pass_condition_does_not_unsettle_the_verdict():
    """feature_distance is one deterministic pass's (added after the rounds): more passes cannot change it."""
    rule = Rule.parse("feature_distance > 5 or mutual_information > 0.1", "softmax")
    assert adaptive_passes.settled(categorical(60), rule, 200)[0]


@pytest.mark.parametrize("head", ["softmax", "binary", "multilabel", "regression"])
def test_a_settle_check_computes_only_the_errors_it_reads_and_decides_the_same(head):
    """Each measure a rule may name, alone: a Prediction holding only errors_needed's standard
    errors settles labels and verdicts as the full one does (a missing error raises KeyError)."""
    from mcdrop.runtime.uncertain_rule import RULE_MEASURES, head_kind

    rng = np.random.default_rng(0)
    raw = rng.random((40, 64, 3 if head != "binary" else 1))
    samples = raw ** 4 / (raw ** 4).sum(-1, keepdims=True) if head == "softmax" else raw  # some inputs clear
    decided = []
    for measure in RULE_MEASURES[head_kind(head)]:
        rule = Rule.parse(f"{measure} > 0.05", head)
        needed = adaptive_passes.errors_needed(head, rule)
        full, light = (Prediction.from_samples(samples, head, rule=rule, errors=errors) for errors in (None, needed))
        assert set(light.standard_errors) == set(needed) < set(full.standard_errors)
        label, verdict = ([check(p, 1.0, adaptive_passes.Dissent(p, 0.25)) if check is adaptive_passes.label_settled
                           else check(p, rule, 1.0, adaptive_passes.Dissent(p, 0.25)) for p in (full, light)]
                          for check in (adaptive_passes.label_settled, adaptive_passes.verdict_settled))
        np.testing.assert_array_equal(label[1], label[0])
        np.testing.assert_array_equal(verdict[1], verdict[0])
        decided += [label[0], verdict[0]]
    assert 0 < np.concatenate(decided).mean() < 1  # the decisions compared are not all one way


def test_passes_text():
    assert adaptive_passes.parse_passes("auto") == "auto"
    assert adaptive_passes.parse_passes(" 12 ") == 12
    with pytest.raises(InputError, match="--passes must be a whole number or 'auto', got '1.5'"):
        adaptive_passes.parse_passes("1.5")


@pytest.mark.parametrize("flags, message", [
    (["--passes", "auto", "--max-passes", "0"], "error: --max-passes must be >= 1, got 0"),
    (["--passes", "auto", "--min-passes", "30", "--max-passes", "20"],
     "error: --min-passes 30 is more than --max-passes 20"),
    (["--max-passes", "20"], "error: --max-passes is for --passes auto"),
    (["--passes", "auto", "--masks", "independent"], "--masks independent cannot take it"),
    (["--passes", "1.5"], "error: --passes must be a whole number or 'auto', got '1.5'"),
])
def test_infer_bad_passes_flags_fail_with_one_line(flags, message):
    done = run_cli("infer", MODELS / "samples" / "digit_3.png", "--model", MODELS / "mlp.onnx", *flags)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and message in done.stderr


def test_the_help_gives_the_first_rounds_default():
    done = run_cli("infer", "--help")
    assert f"[default: {adaptive_passes.DEFAULT_MIN_PASSES}, or --max-passes if fewer]" in " ".join(done.stdout.split())


def test_infer_json_and_csv_carry_each_inputs_passes(tmp_path):
    import csv
    import json

    out = tmp_path / "out.csv"
    done = run_cli("infer", MODELS / "samples" / "digit_3.png", MODELS / "samples" / "ambiguous.png", "--model",
                   MODELS / "mlp.onnx", "--passes", "auto", "--max-passes", "60", "--mask-seed", "0", "--json",
                   "--out", out)
    assert done.returncode == 0, done.stderr
    found = [p["input_passes"] for p in json.loads(done.stdout)["predictions"]]
    assert found[0] < 60 and found[1] <= 60
    assert [int(row["input_passes"]) for row in csv.DictReader(out.open())] == found
    table = run_cli("infer", MODELS / "samples" / "digit_3.png", MODELS / "samples" / "ambiguous.png", "--model",
                    MODELS / "mlp.onnx", "--passes", "auto", "--max-passes", "60", "--mask-seed", "0")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert f"passes auto ({min(found)}-{max(found)} per input)" in lines[0]
    assert lines[1].split()[-1] == "passes"
    assert [int(line.split()[-1] if "UNCERTAIN" not in line else line.split()[-2]) for line in lines[2:4]] == found


def test_score_writes_each_inputs_passes(mlp_inputs, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from mcdrop.score.input_plan import plan_inputs
    from mcdrop.score.job import score_options
    from mcdrop.score.local import score_local

    batch = tmp_path / "x.npy"
    np.save(batch, mlp_inputs[:12])
    session = MCSession(str(MODELS / "mlp.onnx"), seed=0, threads=1)
    options = score_options(session, "auto", 0, max_passes=60)
    score_local(session, plan_inputs([str(batch)], session.info), tmp_path / "s.parquet", options, batch_size=5)
    passes = pq.read_table(tmp_path / "s.parquet").column("passes").to_numpy()
    expected = session.predict(mlp_inputs[:12], passes="auto", max_passes=60, mask_seed=0).input_passes
    assert (passes == expected).all() and passes.min() < 60
    with pytest.raises(InputError, match="--keep-samples is for a fixed --passes"):
        score_options(session, "auto", 0, keep_samples=True)


def test_evaluate_runs_auto(mlp_inputs, tmp_path):
    import json

    data = tmp_path / "data.npz"
    np.savez(data, x=mlp_inputs[:20], y=np.zeros(20, np.int64))
    done = run_cli("evaluate", MODELS / "mlp.onnx", data, "--passes", "auto", "--max-passes", "40", "--seed", "0",
                   "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["passes"] <= 40
    bad = run_cli("evaluate", MODELS / "mlp.onnx", data, "--passes", "auto", "--max-passes", "0")
    assert bad.returncode != 0 and bad.stderr.strip() == "error: --max-passes must be >= 1, got 0"
