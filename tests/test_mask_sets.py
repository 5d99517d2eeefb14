"""Shared mask sets (runtime/format/mask_sets.py): the generator as docs/FORMAT.md describes it, what a set
holds once the graph has turned it into masks, and results that depend on (input, mask seed,
passes) alone."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcdrop.export import export_model
from mcdrop.runtime import chunk_plan
from mcdrop.runtime import chunk_plan as session_module
from mcdrop.runtime.format import mask_sets as masks
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.limits import Limits
from mcdrop.runtime.format.mask_sets import MaskEntry, MaskLayout
from mcdrop.runtime.session import MCSession
from toy_model import build_toy_model

import zoo

SHIPPED_CNN = Path(__file__).resolve().parent.parent / "models" / "cnn.onnx"
M64 = 2**64 - 1
# Philox4x64-10 (Salmon et al. 2011, Random123): round multipliers and key increments.
PHILOX_M = (0xD2E7470EE14C6C93, 0xCA5A826395121157)
PHILOX_W = (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)


def philox4x64_10(counter, key):
    """The block function written out from the paper, in Python integers: what another binding
    implements (docs/FORMAT.md: Mask sets)."""
    c, k = list(counter), list(key)
    for _ in range(10):
        p0, p1 = PHILOX_M[0] * c[0], PHILOX_M[1] * c[2]
        c = [(p1 >> 64) ^ c[1] ^ k[0], p1 & M64, (p0 >> 64) ^ c[3] ^ k[1], p0 & M64]
        k = [(k[0] + PHILOX_W[0]) & M64, (k[1] + PHILOX_W[1]) & M64]
    return c


def reference_words(seed, t, size):
    """Pass t's words as FORMAT.md states them: blocks with counters (1, t, 0, 0), (2, t, 0, 0)..."""
    words = []
    for block in range(1, -(-size // 4) + 1):
        words += philox4x64_10([block, t, 0, 0], [seed, 0])
    return words[:size]


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**53 - 1, M64])
def test_pass_words_are_philox4x64_10_keyed_by_the_seed_and_counted_by_pass(seed):
    for t in (0, 1, 7, 1000):
        assert masks.pass_words(seed, t, 1, 9)[0].tolist() == reference_words(seed, t, 9)


def test_uniform_and_normal_values_follow_the_documented_formulas():
    words = masks.pass_words(99, 0, 1, 4001)[0]
    u, z = masks.uniform(words), masks.normal(words)
    for w, ui, zi in zip(words.tolist()[:200], u[:200], z[:200]):
        assert ui == np.float32((w >> 40) / 2**24)
        u1, u2 = ((w >> 32) + 1) / 2**32, (w & 0xFFFFFFFF) / 2**32
        assert zi == np.float32(math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))
    assert u.dtype == z.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    big = masks.normal(masks.pass_words(3, 0, 1, 200_000)[0]).astype(np.float64)
    assert abs(big.mean()) < 5 / math.sqrt(big.size) and abs(big.var() - 1) < 5 * math.sqrt(2 / big.size)


LAYOUT = MaskLayout(7, (MaskEntry(0, (2, 2), "uniform"), MaskEntry(4, (3,), "normal")))


def test_any_range_of_passes_is_those_rows_of_the_whole_set():
    whole = masks.draw(LAYOUT, 5, 0, 10)
    np.testing.assert_array_equal(masks.draw(LAYOUT, 5, 3, 4), whole[3:7])
    assert whole.shape == (10, 7) and whole.dtype == np.float32
    assert not np.array_equal(masks.draw(LAYOUT, 6, 0, 10), whole)


def test_the_same_seed_gives_the_same_set_in_another_process():
    script = ("import hashlib; from mcdrop.runtime.format import mask_sets as masks; from mcdrop.runtime.format.mask_sets import MaskEntry, MaskLayout;"
              "layout = MaskLayout(7, (MaskEntry(0, (2, 2), 'uniform'), MaskEntry(4, (3,), 'normal')));"
              "print(hashlib.sha256(masks.draw(layout, 2024, 0, 50).tobytes()).hexdigest())")
    theirs = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert theirs == hashlib.sha256(masks.draw(LAYOUT, 2024, 0, 50).tobytes()).hexdigest()


def test_bad_modes_and_seeds_are_one_line_errors():
    session = MCSession(SHIPPED_CNN)
    x = np.zeros((1, *session.info.input_shape[1:]), np.float32)
    for kwargs, message in [({"masks": "per-batch"}, "masks must be one of shared, independent"),
                            ({"mask_seed": -1}, "mask_seed must be an integer"),
                            ({"mask_seed": 2**64}, "mask_seed must be an integer"),
                            ({"mask_seed": True}, "mask_seed must be an integer"),
                            ({"masks": "independent", "mask_seed": 3}, "mask_seed is for masks='shared'")]:
        with pytest.raises(InputError, match=message):
            session.predict(x, passes=2, **kwargs)


@pytest.mark.parametrize("seed", [-1, 2**64, True, 1.5])
def test_a_session_seed_that_cannot_be_a_mask_seed_is_refused_on_load(seed):
    # The session's seed is its default mask seed: 2**64 was accepted, then failed in the first shared draw.
    with pytest.raises(InputError, match="seed must be an integer"):
        MCSession(SHIPPED_CNN, seed=seed)


def test_a_file_from_before_mask_sets_refuses_shared_masks_and_defaults_to_independent(tmp_path):
    path = build_toy_model(tmp_path / "format2.onnx")  # a format 2 file
    session = MCSession(path)
    assert session.default_masks == "independent"
    assert session.predict(np.zeros((2, 4), np.float32), passes=3).masks == "independent"
    with pytest.raises(InputError, match="exported before mask sets"):
        session.predict(np.zeros((2, 4), np.float32), passes=3, masks="shared")


# What the graph makes of a set ---------------------------------------------------------------

FEATURES, PASSES = 64, 1000
RATES = {"a": 0.3, "b": 0.5}
STDDEV = 0.7


@pytest.fixture(scope="module")
def mask_probe(tmp_path_factory):
    """ones -> [Dropout(0.3), Dropout(0.5), GaussianNoise(0.7)] side by side: the samples are the
    masks (and the noise) themselves."""
    import keras

    inp = keras.Input((FEATURES,))
    branches = [keras.layers.Dropout(RATES["a"], name="a")(inp), keras.layers.Dropout(RATES["b"], name="b")(inp),
                keras.layers.GaussianNoise(STDDEV, name="c")(inp)]
    model = keras.Model(inp, keras.layers.Concatenate()(branches))
    folder = tmp_path_factory.mktemp("probe")
    model.save(folder / "probe.keras")
    export_model(folder / "probe.keras", folder / "probe.onnx", head="regression", validate=False)
    keras_scale = {name: float(np.max(keras.layers.Dropout(rate)(np.ones((1, 8), np.float32), training=True)))
                   for name, rate in RATES.items()}
    return folder / "probe.onnx", keras_scale


def test_a_set_is_bernoulli_keep_with_keras_scale_independent_across_layers_and_passes(mask_probe):
    path, keras_scale = mask_probe
    prediction = MCSession(path).predict(np.ones((3, FEATURES), np.float32), passes=PASSES, masks="shared",
                                         mask_seed=7)
    samples = prediction.samples
    np.testing.assert_array_equal(samples[:, 0], samples[:, 2])  # every input: the same networks
    kept = {}
    for i, name in enumerate(RATES):
        values = samples[:, 0, i * FEATURES:(i + 1) * FEATURES]
        assert set(np.unique(values).tolist()) == {0.0, keras_scale[name]}  # exactly Keras's 1 / (1 - rate)
        kept[name] = (values > 0).astype(np.float64)
        rate, n = RATES[name], values.size
        assert abs((1 - kept[name].mean()) - rate) < 5 * math.sqrt(rate * (1 - rate) / n)
    limit = 5 / math.sqrt(PASSES * FEATURES)
    a, b = kept["a"], kept["b"]
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < limit  # across layers
    assert abs(np.corrcoef(a[1:].ravel(), a[:-1].ravel())[0, 1]) < 5 / math.sqrt(a[1:].size)  # across passes
    assert abs(np.corrcoef(a[:, 1:].ravel(), a[:, :-1].ravel())[0, 1]) < 5 / math.sqrt(a[:, 1:].size)  # features
    z = (samples[:, 0, 2 * FEATURES:].astype(np.float64) - 1) / STDDEV
    assert abs(z.mean()) < 5 / math.sqrt(z.size) and abs(z.var() - 1) < 5 * math.sqrt(2 / z.size)


def test_independent_masks_still_differ_per_input(mask_probe):
    path, _ = mask_probe
    samples = MCSession(path).predict(np.ones((2, FEATURES), np.float32), passes=50, masks="independent").samples
    assert not np.array_equal(samples[:, 0], samples[:, 1])


# Batch invariance ----------------------------------------------------------------------------

MASK_SEED = 31


@pytest.fixture(scope="module", params=["cnn2d_batchnorm_pooling", "bidirectional_lstm_sequences",
                                        "two_inputs_two_outputs"])
def zoo_file(request, tmp_path_factory):
    model, kwargs = getattr(zoo, request.param)()
    folder = tmp_path_factory.mktemp(request.param)
    model.save(folder / "m.keras")
    export_model(folder / "m.keras", folder / "m.onnx", validate=False, **kwargs)
    return folder / "m.onnx"


def _inputs(session, count, seed):
    rng = np.random.default_rng(seed)
    x = {i.name: rng.normal(size=(count, *[d or 5 for d in i.shape[1:]])).astype(np.float32)
         for i in session.info.model_inputs}
    return x if len(x) > 1 else next(iter(x.values()))


def _rows(x, rows):
    return {k: v[rows] for k, v in x.items()} if isinstance(x, dict) else x[rows]


def _samples(prediction):
    """Every output's samples, [T, B, ...] each."""
    return [p.samples for p in prediction.values()] if isinstance(prediction, dict) else [prediction.samples]


def _assert_close(got, expected, **kwargs):
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6, **kwargs)


def _put(x, one, position):
    """x with row `position` replaced by the single input `one`."""
    if isinstance(x, dict):
        return {k: np.concatenate([v[:position], one[k], v[position + 1:]]) for k, v in x.items()}
    return np.concatenate([x[:position], one, x[position + 1:]])


def test_one_input_alone_equals_it_at_every_position_of_a_batch_of_64(zoo_file):
    session = MCSession(zoo_file, threads=1)
    one, others = _inputs(session, 1, 0), _inputs(session, 64, 1)
    alone = _samples(session.predict(one, passes=6, mask_seed=MASK_SEED))
    for position in range(64):
        batch = _samples(session.predict(_put(others, one, position), passes=6, mask_seed=MASK_SEED))
        _assert_close([b[:, position] for b in batch], [a[:, 0] for a in alone], err_msg=f"position {position}")


def test_results_do_not_depend_on_chunks_threads_workers_or_session_seed(zoo_file, monkeypatch):
    x = _inputs(MCSession(zoo_file), 64, 2)
    reference = _samples(MCSession(zoo_file, threads=1, seed=1).predict(x, passes=9, mask_seed=MASK_SEED))
    bound = 400_000
    while len(MCSession(zoo_file, max_chunk_bytes=bound).chunk_plan(64, 9)) < 4:
        bound //= 2
    small = MCSession(zoo_file, threads=1, seed=2, max_chunk_bytes=bound)
    _assert_close(_samples(small.predict(x, passes=9, mask_seed=MASK_SEED)), reference)
    two = MCSession(zoo_file, threads=2, seed=3)
    _assert_close(_samples(two.predict(x, passes=9, mask_seed=MASK_SEED)), reference)
    # Worker sessions take the runs as soon as there is any work (see PARALLEL_MIN_FLOATS).
    monkeypatch.setattr(session_module, "PARALLEL_MIN_FLOATS", 1)
    monkeypatch.setattr(session_module, "PARALLEL_AT_ONCE_FLOATS", 1)
    workers = MCSession(zoo_file, threads=3, seed=4, max_chunk_bytes=2_000_000, limits=Limits(threads=8))
    _assert_close(_samples(workers.predict(x, passes=9, mask_seed=MASK_SEED)), reference)
    assert len(workers._workers) >= 2  # as many as the bound leaves room for


def test_two_mask_seeds_differ_and_one_seed_repeats_across_calls(zoo_file):
    session = MCSession(zoo_file)
    x = _inputs(session, 4, 3)
    first = _samples(session.predict(x, passes=8, mask_seed=1))
    for again, once in zip(_samples(session.predict(x, passes=8, mask_seed=1)), first, strict=True):
        np.testing.assert_array_equal(again, once)
    other = _samples(session.predict(x, passes=8, mask_seed=2))
    assert max(np.abs(a - b).max() for a, b in zip(other, first)) > 1e-3


def test_a_session_scores_with_its_own_mask_seed_and_reports_it():
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
    seeded = MCSession(SHIPPED_CNN, seed=77).predict(x, passes=5)
    assert (seeded.masks, seeded.mask_seed) == ("shared", 77)
    assert json.loads(seeded.to_json())["mask_seed"] == 77
    np.testing.assert_array_equal(MCSession(SHIPPED_CNN).predict(x, passes=5, mask_seed=77).samples, seeded.samples)
    fresh = [MCSession(SHIPPED_CNN).mask_seed for _ in range(3)]
    assert len(set(fresh)) == 3 and all(0 <= s < 2**53 for s in fresh)


def test_a_set_too_big_to_keep_is_drawn_per_run_with_the_same_numbers():
    x = np.random.default_rng(1).random((3, 28, 28, 1)).astype(np.float32)
    kept = MCSession(SHIPPED_CNN).predict(x, passes=40, mask_seed=5).samples
    tight = MCSession(SHIPPED_CNN, max_chunk_bytes=3_000_000)
    assert 40 * tight.info.mask_layout.bytes_per_pass > tight.max_chunk_bytes // session_module.MASK_SET_SHARE
    assert len(tight.chunk_plan(3, 40)) > 1
    np.testing.assert_allclose(tight.predict(x, passes=40, mask_seed=5).samples, kept, atol=2e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_set_too_big_to_keep_is_drawn_once_per_range_not_once_per_input(monkeypatch, threads):
    """Inputs whose passes split over several runs each: the set's first passes are kept between
    predicts (carried over when a predict keeps more), the rest drawn range by range, each pass
    once for all the inputs, whichever worker makes the run; the samples are a kept set's."""
    from mcdrop.runtime import mask_rows

    monkeypatch.setattr(session_module, "PARALLEL_MIN_FLOATS", 1)  # workers for the 2-thread session
    monkeypatch.setattr(session_module, "PARALLEL_AT_ONCE_FLOATS", 1)
    x = np.random.default_rng(1).random((5, 28, 28, 1)).astype(np.float32)
    whole = MCSession(SHIPPED_CNN, threads=1)
    tight = MCSession(SHIPPED_CNN, threads=threads)
    # A small bound: runs of one input and 3 passes, 17 passes kept. The workers' copies of the
    # weights are left out of it, so that their runs still take several passes.
    tight._planner.max_chunk_bytes = tight._planner.host_bytes = 24_000_000
    tight._planner.session_bytes = 0
    plan, workers = tight._plan(5, 40, True)
    keep = tight._planner.kept_passes(40)
    ranges = {(start, count) for start, (_, count) in zip(chunk_plan.pass_starts(plan), plan)}
    assert workers == (2 if threads == 2 else 0) and len(plan) == 5 * len(ranges)
    assert min(count for _, count in ranges) > 1 and any(start < keep < start + count for start, count in ranges)
    want = {passes: whole.predict(x, passes=passes, mask_seed=5).samples for passes in (12, 40)}
    drawn = []
    draw = mask_rows.MaskSets.draw
    monkeypatch.setattr(mask_rows.MaskSets, "draw", lambda self, *args: (drawn.append(args), draw(self, *args))[1])
    for passes, kept_before in ((12, 0), (40, 12), (40, keep)):
        drawn.clear()
        np.testing.assert_allclose(tight.predict(x, passes=passes, mask_seed=5).samples, want[passes], atol=2e-6)
        assert sorted(t for _, first, count in drawn for t in range(first, first + count)) == \
            list(range(kept_before, passes)), (passes, drawn)
        assert {seed for seed, _, _ in drawn} <= {5}


def test_passes_kept_by_an_earlier_predict_count_against_every_later_plan():
    """The memory a session keeps between predicts (the first 191 passes of the CNN's set, 64 MiB,
    after a T=200 predict) is left out of the bound of its later runs, shared masks or not."""
    session = MCSession(SHIPPED_CNN)
    before = [len(session.chunk_plan(64, 10, masks=mode)) for mode in ("shared", "independent")]
    session.predict(np.zeros((1, 28, 28, 1), np.float32), passes=200, mask_seed=0)
    assert session._planner.held_mask_passes == session._planner.kept_passes(200) == 191
    after = [len(session.chunk_plan(64, 10, masks=mode)) for mode in ("shared", "independent")]
    assert after[0] > before[0] and after[1] > before[1], (before, after)
