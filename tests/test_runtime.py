"""MCSession on toy models: seeds, determinism, graph parity, chunking, threads, input checks."""

import json
import subprocess
import sys
import threading
import warnings

import numpy as np
import onnxruntime as ort
import pytest

from conftest import ROOT
from mcdrop.runtime.format import seeds
from mcdrop.runtime.errors import InputError, ModelFileError
from mcdrop.runtime.limits import Limits
from mcdrop.runtime.chunk_plan import DEFAULT_MAX_CHUNK_BYTES as DEFAULT_BOUND
from mcdrop.runtime.chunk_plan import CUDA_MAX_CHUNK_BYTES, MASK_SET_SHARE, SESSION_COPY, WEIGHTS_SHARE
from mcdrop.runtime.feed_checks import RawPixelWarning
from mcdrop.runtime.session import MCSession
from toy_model import SEEDS, build_toy_model, toy_weights, deterministic_forward

X = np.random.default_rng(42).normal(size=(5, 4)).astype(np.float32)
# Some tests run more workers than this machine has cores, which the default limits refuse.
MORE_THREADS = Limits(threads=8)


def samples_of(session, passes=16, x=X):
    return session.predict(x, passes=passes).samples


# Seeds -------------------------------------------------------------------------------------

def test_rewrite_replaces_exactly_the_random_nodes_seeds(toy_model_path):
    original = open(toy_model_path, "rb").read()
    assert sorted(value for _, value in seeds.find_seeds(original)) == sorted(SEEDS)
    rewritten, old = seeds.rewrite_seeds(original, seed=3)
    assert old == list(SEEDS) and len(rewritten) == len(original)
    assert [value for _, value in seeds.find_seeds(rewritten)] == seeds.fresh_seeds(2, seed=3)
    # Nothing but the 4 bytes of each seed changed.
    changed = [i for i, (a, b) in enumerate(zip(original, rewritten)) if a != b]
    offsets = [offset for offset, _ in seeds.find_seeds(original)]
    assert all(any(o <= i < o + 4 for o in offsets) for i in changed)


def test_seeds_that_disagree_with_the_metadata_are_refused(tmp_path):
    path = build_toy_model(tmp_path / "edited.onnx", metadata_seeds=(1.0, 2.0))
    with pytest.raises(ModelFileError, match="do not match the metadata"):
        MCSession(path)


def test_two_sessions_without_seed_differ(toy_model_path):
    assert not np.array_equal(samples_of(MCSession(toy_model_path)), samples_of(MCSession(toy_model_path)))


def test_same_integer_seed_reproduces_and_calls_differ(toy_model_path):
    a, b = MCSession(toy_model_path, seed=11), MCSession(toy_model_path, seed=11)
    first_a, first_b = samples_of(a), samples_of(b)
    np.testing.assert_array_equal(first_a, first_b)
    second_a = samples_of(a)
    assert not np.array_equal(first_a, second_a)  # the generator advances within a session
    np.testing.assert_array_equal(second_a, samples_of(b))
    assert not np.array_equal(first_a, samples_of(MCSession(toy_model_path, seed=12)))


def test_same_seed_in_another_process_reproduces(toy_model_path):
    script = (
        "import json, sys, numpy as np;"
        "from mcdrop.runtime import MCSession;"
        f"x = np.array({X.tolist()}, dtype=np.float32);"
        f"s = MCSession({toy_model_path!r}, device='cpu', seed=21);"
        "print(json.dumps(s.predict(x, passes=16).samples.tolist()))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    there = np.array(json.loads(done.stdout), dtype=np.float32)
    np.testing.assert_array_equal(there, samples_of(MCSession(toy_model_path, device="cpu", seed=21)))


# What is computed ----------------------------------------------------------------------------

def test_no_dropout_is_the_deterministic_graph_in_numpy(toy_head_model):
    head, path = toy_head_model
    session = MCSession(path, seed=0)
    prediction = session.predict(X, passes=30, dropout=False)
    assert prediction.passes == 1 and prediction.stochastic is False
    assert prediction.samples.shape[0] == 1
    expected = deterministic_forward(X, head, toy_weights(head, 4))
    np.testing.assert_allclose(prediction.mean, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(prediction.variance, 0)


def test_dropout_changes_the_passes(toy_head_model):
    head, path = toy_head_model
    samples = MCSession(path, seed=1).predict(X, passes=20).samples
    assert samples.shape[:2] == (20, len(X))
    assert np.ptp(samples, axis=0).max() > 1e-3


def test_graph_measures_agree_with_numpy(toy_head_model):
    head, path = toy_head_model
    session = MCSession(path, seed=2)
    raw = session.run_raw(X, passes=64)
    samples = raw["samples"].astype(np.float64)
    assert samples.shape == (64, len(X), session.info.output_shape[1])
    np.testing.assert_allclose(raw["mean"], samples.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw["variance"], samples.var(axis=0), rtol=1e-4, atol=1e-6)
    if head == "regression":
        return
    # The numpy measures of the Prediction built from the same samples.
    from mcdrop.runtime.prediction import Prediction

    measures = Prediction.from_samples(raw["samples"], head).measures
    found = {"predictive_entropy": measures.get("predictive_entropy", measures.get("entropy")),
             "expected_entropy": measures["expected_entropy"],
             "mutual_information": measures["mutual_information"]}
    for name, value in found.items():
        graph = raw[name].reshape(value.shape)
        np.testing.assert_allclose(np.maximum(graph, 0) if name == "mutual_information" else graph,
                                   value, atol=2e-5, err_msg=name)


def test_probabilities_and_shapes_per_head(toy_head_model):
    head, path = toy_head_model
    prediction = MCSession(path, seed=3).predict(X, passes=10)
    units = 3 if head in ("softmax", "multilabel") else (1 if head == "binary" else 2)
    assert prediction.mean.shape == prediction.variance.shape == (len(X), units)
    assert prediction.samples.shape == (10, len(X), units)
    assert prediction.uncertain.shape == (len(X),)
    if head == "softmax":
        np.testing.assert_allclose(prediction.samples.sum(axis=-1), 1, atol=1e-5)
    json.loads(prediction.to_json())


def test_default_passes_and_keep_samples(toy_model_path):
    session = MCSession(toy_model_path)
    prediction = session.predict(X, keep_samples=False)
    assert prediction.passes == session.default_passes == 8
    assert prediction.samples is None
    assert session.head == "softmax" and session.labels == ["cat", "dog", "bird"]


# Chunking ----------------------------------------------------------------------------------

@pytest.mark.parametrize("max_chunk_bytes, batch", [(64 * 4 * 3, 7), (64 * 4 * 50, 5), (1, 4)])
def test_chunks_stay_within_the_bound_and_cover_the_work(toy_model_path, max_chunk_bytes, batch):
    session = MCSession(toy_model_path, seed=4, max_chunk_bytes=max_chunk_bytes)
    per_sample = session.info.activation_floats_per_sample * 4
    per_input = session.info.once_floats_per_input * 4
    passes = 37
    plan = session.chunk_plan(batch, passes)
    covered = np.zeros((passes, batch), dtype=int)
    done = {}
    for rows, count in plan:
        assert count >= 1 and rows.stop > rows.start
        size = rows.stop - rows.start
        assert size * per_input + count * size * per_sample <= max(max_chunk_bytes, per_input + per_sample)
        start = done.get(rows.start, 0)
        covered[start:start + count, rows] += 1
        done[rows.start] = start + count
    np.testing.assert_array_equal(covered, 1)

    x = np.random.default_rng(0).normal(size=(batch, 4)).astype(np.float32)
    before = session.run_count
    prediction = session.predict(x, passes=passes)
    assert session.run_count - before == len(plan) > 1
    assert prediction.samples.shape == (passes, batch, 3)
    assert prediction.mean.shape == (batch, 3)


def test_a_big_batch_keeps_each_inputs_passes_in_one_run(toy_model_path):
    """Where one input's passes fit in a run, the batch is split and the passes are not, so the
    layers before the first dropout run once per input (docs/DESIGN.md, Bounded work)."""
    session = MCSession(toy_model_path, max_chunk_bytes=2**20, threads=1)
    plan = session.chunk_plan(5000, 50)
    assert len(plan) > 1 and all(count == 50 for _, count in plan)
    assert sum(rows.stop - rows.start for rows, _ in plan) == 5000


def test_one_chunk_when_everything_fits(toy_model_path):
    session = MCSession(toy_model_path)
    before = session.run_count
    session.predict(X, passes=50)
    assert session.run_count - before == len(session.chunk_plan(len(X), 50)) == 1


def test_chunked_mean_matches_unchunked_statistically(toy_model_path):
    passes = 3000
    whole = MCSession(toy_model_path, seed=5).predict(X, passes=passes)
    chunked = MCSession(toy_model_path, seed=6, max_chunk_bytes=64 * 4 * 40).predict(X, passes=passes)
    assert len(MCSession(toy_model_path, max_chunk_bytes=64 * 4 * 40).chunk_plan(len(X), passes)) > 100
    spread = np.sqrt((whole.variance + chunked.variance) / passes)
    assert (np.abs(whole.mean - chunked.mean) <= 5 * spread + 1e-6).all()
    np.testing.assert_allclose(whole.variance, chunked.variance, rtol=0.15, atol=1e-4)


# Threads -----------------------------------------------------------------------------------

def test_many_threads_share_one_session(toy_model_path):
    session = MCSession(toy_model_path, threads=1)
    failures, results = [], []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                batch = int(rng.integers(1, 4))
                prediction = session.predict(rng.normal(size=(batch, 4)), passes=int(rng.integers(1, 6)))
                results.append((batch, prediction))
        except Exception as err:  # reported below; a thread's exception would be lost
            failures.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert len(results) == 1600
    for batch, prediction in results:
        assert prediction.mean.shape == (batch, 3)
        assert np.isfinite(prediction.samples).all()
        np.testing.assert_allclose(prediction.samples.sum(axis=-1), 1, atol=1e-5)


# Workers: single-threaded sessions side by side --------------------------------------------

class CountingFactory:
    """Creates real sessions, remembering each one's intra-op threads; claims CUDA if asked to."""

    def __init__(self, claim_cuda=False):
        self.threads, self.claim_cuda = [], claim_cuda

    def __call__(self, model_bytes, sess_options, providers):
        self.threads.append(sess_options.intra_op_num_threads)
        session = ort.InferenceSession(model_bytes, sess_options=sess_options, providers=["CPUExecutionProvider"])
        if self.claim_cuda:
            session.get_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return session


@pytest.fixture
def heavy_toy(tmp_path):
    # The toy network, with metadata saying each sample holds a million activation floats: every
    # predict is big enough to share, and a few passes already need several runs.
    return build_toy_model(tmp_path / "heavy.onnx", activation_floats_per_sample=2**20)


def test_small_predicts_stay_in_the_main_session_with_every_thread(toy_model_path):
    factory = CountingFactory()
    session = MCSession(toy_model_path, threads=2, session_factory=factory)
    for _ in range(3):
        session.predict(X, passes=8)
    assert factory.threads == [2]


def test_big_predicts_are_shared_by_workers_with_their_own_seeds(heavy_toy):
    factory = CountingFactory()
    session = MCSession(heavy_toy, threads=2, seed=1, session_factory=factory)
    first = session.predict(X[:1], passes=8).samples  # 8M floats: a one-off would not pay for workers
    assert factory.threads == [2]
    plan = session.chunk_plan(1, 8)
    assert len(plan) % 2 == 0 and {count for _, count in plan} == {8 // len(plan)}
    samples = session.predict(X[:1], passes=8).samples  # the second: worth the workers
    assert factory.threads == [2, 1, 1]
    assert not np.array_equal(samples, first)
    run = plan[0][1]
    # The first two runs went to different workers: equal if both drew from the same seeds.
    assert not np.array_equal(samples[:run], samples[run:2 * run])
    # Run i goes to worker i mod 2 and each worker keeps its order: a seed repeats the results.
    again = MCSession(heavy_toy, threads=2, seed=1)
    np.testing.assert_array_equal(again.predict(X[:1], passes=8).samples, first)
    np.testing.assert_array_equal(again.predict(X[:1], passes=8).samples, samples)
    np.testing.assert_array_equal(again.predict(X, passes=8).samples, session.predict(X, passes=8).samples)


def test_a_seed_gives_the_same_small_predicts_whatever_the_thread_count(toy_model_path):
    # The main session's seeds are stream 0 of a fixed spread, not of one sized by the cores.
    results = [MCSession(toy_model_path, seed=3, threads=threads, limits=MORE_THREADS).predict(X, passes=8).samples
               for threads in (1, 2, 4, 8)]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_a_predict_big_enough_takes_the_workers_at_once(heavy_toy):
    factory = CountingFactory()
    session = MCSession(heavy_toy, threads=3, session_factory=factory, limits=MORE_THREADS)
    session.predict(X, passes=4)  # 20M floats
    assert factory.threads == [3, 1, 1, 1]


def test_progress_counts_every_run_across_workers(heavy_toy):
    session = MCSession(heavy_toy, threads=2)
    calls = []
    session.predict(X, passes=8, progress=lambda done, total: calls.append((done, total)))
    runs = len(session.chunk_plan(len(X), 8))
    assert runs > 2 and calls == [(done, runs) for done in range(1, runs + 1)]


@pytest.mark.parametrize("case", ["one thread", "weights too big for the bound", "cuda"])
def test_no_workers_where_they_do_not_pay(heavy_toy, case):
    factory = CountingFactory(claim_cuda=case == "cuda")
    threads, bound = (1, DEFAULT_BOUND) if case == "one thread" else (4, DEFAULT_BOUND)
    if case == "weights too big for the bound":
        bound = WEIGHTS_SHARE * SESSION_COPY * 2 * len(open(heavy_toy, "rb").read()) - 1  # 2 copies: over a quarter
    session = MCSession(heavy_toy, threads=threads, max_chunk_bytes=bound, session_factory=factory,
                        limits=MORE_THREADS)
    for _ in range(2):
        session.predict(X, passes=8)
    assert factory.threads == [threads]


class CountedRuns:
    """An onnxruntime session that counts its runs."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_a_calibrated_files_single_pass_run_goes_to_a_worker_once_there_are_some():
    # The main session's threads spin after its own runs and slowed the workers' next runs (the
    # calibrated CNN at batch 1 on 2 cores: 39 -> 27 ms per predict); the scores stay the same.
    made = []

    def counted(model_bytes, sess_options=None, providers=None):
        made.append(CountedRuns(ort.InferenceSession(model_bytes, sess_options=sess_options, providers=providers)))
        return made[-1]

    path = ROOT / "models" / "cnn_calibrated.onnx"
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    session = MCSession(path, seed=0, threads=2, limits=MORE_THREADS, session_factory=counted)
    session.predict(x, passes=50)
    assert len(made) == 3  # the main session and two workers
    before = made[0].runs
    found = session.predict(x[:1], passes=50)
    assert made[0].runs == before
    alone = MCSession(path, seed=0, threads=1).predict(x[:1], passes=50)  # no workers: the main session's run
    for name in ("feature_distance", "energy", "max_logit"):
        np.testing.assert_allclose(found.measures[name], alone.measures[name], rtol=1e-5, atol=1e-6)


def test_cuda_runs_take_the_gpus_bound_unless_one_is_given(heavy_toy):
    # On CUDA the activations are in the GPU's memory and each run costs a fixed time: the CPU's bound
    # would split a predict into many small runs (bench/cuda.py).
    cuda = MCSession(heavy_toy, session_factory=CountingFactory(claim_cuda=True))
    cpu = MCSession(heavy_toy, device="cpu")
    assert (cuda.max_chunk_bytes, cpu.max_chunk_bytes) == (CUDA_MAX_CHUNK_BYTES, DEFAULT_BOUND)
    given = MCSession(heavy_toy, max_chunk_bytes=DEFAULT_BOUND, session_factory=CountingFactory(claim_cuda=True))
    assert given.max_chunk_bytes == DEFAULT_BOUND
    runs = [len(session.chunk_plan(64, 64)) for session in (cuda, given)]  # 4 MiB of activations per sample
    assert runs[0] > 1 and runs[1] >= 8 * runs[0], runs  # bounds 16x apart
    # What stays in host memory between predicts (the kept mask set) keeps the CPU's bound.
    shipped = MCSession(ROOT / "models" / "mlp.onnx", session_factory=CountingFactory(claim_cuda=True))
    over_cpu_share = DEFAULT_BOUND // MASK_SET_SHARE // shipped.info.mask_layout.bytes_per_pass + 1
    assert shipped._planner.kept_passes(over_cpu_share) == over_cpu_share - 1 == shipped._planner.kept_passes(over_cpu_share - 1)


# The model file --------------------------------------------------------------------------

def test_model_file_errors(tmp_path, toy_model_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        MCSession(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty file"):
        MCSession(tmp_path / "empty.onnx")
    (tmp_path / "text.onnx").write_text("hello, not a model")
    with pytest.raises(ModelFileError, match="not an ONNX file"):
        MCSession(tmp_path / "text.onnx")
    plain = build_toy_model(tmp_path / "plain.onnx", with_metadata=False)
    with pytest.raises(ModelFileError, match="not an mcdrop export .*cli.py export"):
        MCSession(plain)


def test_info_lists_names_and_shapes(toy_model_path):
    info = MCSession(toy_model_path).info
    assert info.inputs == {"input": (None, 4)}
    assert set(info.outputs) >= {"samples", "mean", "variance", "mutual_information"}
    assert info.input_shape == (None, 4) and info.output_shape == (None, 3)
    assert [layer.random_node for layer in info.stochastic_layers] == ["mcdrop_random/dropout_0",
                                                                      "mcdrop_random/dropout_1"]


def test_importing_runtime_loads_no_tensorflow_or_onnx(toy_model_path):
    script = ("import sys, numpy as np; from mcdrop import runtime;"
              f"p = runtime.MCSession({toy_model_path!r}).predict(np.zeros((1, 4)), passes=2);"
              "print(sorted({'tensorflow', 'keras', 'tf2onnx', 'onnx'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# Inputs to predict -----------------------------------------------------------------------

@pytest.mark.parametrize("x, message", [
    (np.zeros(4), "without the batch axis"),
    (np.zeros((2, 5)), r"expects \[batch, 4\]"),
    (np.zeros((2, 4, 1)), r"expects \[batch, 4\]"),
    (np.zeros((0, 4)), "empty"),
    (np.array([["a"] * 4]), "real numbers"),
    (np.zeros((1, 4), dtype=complex), "real numbers"),
    (np.zeros((1, 4), dtype=bool), "real numbers"),
    (np.array([[0, 1, 2, None]], dtype=object), "real numbers"),
    (np.array([[0, np.nan, 0, 0]]), "NaN"),
    (np.array([[0, np.inf, 0, 0]]), "infinite"),
])
def test_bad_inputs_are_refused(toy_model_path, x, message):
    with pytest.raises(InputError, match=message):
        MCSession(toy_model_path).predict(x)


@pytest.mark.parametrize("passes", [0, -1, 2.5, True, "3"])
def test_bad_passes_are_refused(toy_model_path, passes):
    with pytest.raises(InputError, match="passes"):
        MCSession(toy_model_path).predict(X, passes=passes)


def test_integer_inputs_are_accepted(toy_model_path):
    prediction = MCSession(toy_model_path).predict(np.ones((2, 4), dtype=np.int64), passes=3)
    assert prediction.mean.shape == (2, 3)


def test_raw_pixels_warn(grayscale_model_path):
    session = MCSession(grayscale_model_path)
    with pytest.warns(RawPixelWarning, match="raw 0-255 pixels"):
        session.predict(np.full((1, 2, 3, 1), 200.0), passes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.predict(np.full((1, 2, 3, 1), 0.8), passes=2)


def test_session_options(toy_model_path):
    assert MCSession(toy_model_path, device="cpu").provider == "CPUExecutionProvider"
    for bad in (dict(max_chunk_bytes=0), dict(threads=-1), dict(seed=-3), dict(seed=1.5)):
        with pytest.raises(InputError):
            MCSession(toy_model_path, **bad)
    assert "CPUExecutionProvider" in ort.get_available_providers()
