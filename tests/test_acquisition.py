"""Acquisition strategies against independent computations: python loops, scipy, brute-force
enumeration of BatchBALD's joint entropy, and a numpy port of batchbald_redux's definitions."""

import csv
import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import entropy as scipy_entropy

from mcdrop.acquire import acquisition as A
from mcdrop.runtime.errors import InputError
from mcdrop.runtime.measures import bernoulli_mutual_information, mutual_information

PER_INPUT = ("bald", "entropy", "variation-ratio", "margin", "random")


def dirichlet_samples(seed, passes, pool, classes, alpha=0.5, dtype=np.float64):
    """Class probabilities [T, N, C]; a small alpha makes passes disagree."""
    return np.random.default_rng(seed).dirichlet(np.full(classes, alpha), size=(passes, pool)).astype(dtype)


# --- independent references -------------------------------------------------------------------

def reference_scores(x, strategy, seed):
    """Per input, straight from the definitions, one input at a time."""
    passes, pool, _ = x.shape
    if strategy == "random":
        return np.random.default_rng(seed).random(pool)
    out = []
    for n in range(pool):
        rows = [x[t, n] for t in range(passes)]
        mean = np.mean(rows, axis=0)
        if strategy == "entropy":
            out.append(scipy_entropy(mean))
        elif strategy == "bald":
            out.append(scipy_entropy(mean) - np.mean([scipy_entropy(row) for row in rows]))
        elif strategy == "variation-ratio":
            votes = Counter(int(np.argmax(row)) for row in rows)
            out.append(1 - votes.most_common(1)[0][1] / passes)
        else:  # margin, turned so that a closer call scores higher
            top, second = sorted(mean)[-1], sorted(mean)[-2]
            out.append(1 - (top - second))
    return np.array(out)


def brute_joint_entropy(x, inputs):
    """Entropy of the inputs' joint label distribution, enumerating all C**len(inputs) labelings."""
    passes, _, classes = x.shape
    total = 0.0
    for labels in itertools.product(range(classes), repeat=len(inputs)):
        p = np.mean([math.prod(x[t, n, c] for n, c in zip(inputs, labels)) for t in range(passes)])
        if p > 0:
            total -= p * math.log(p)
    return total


def brute_joint_mi(x, inputs):
    conditional = sum(np.mean([scipy_entropy(x[t, n]) for t in range(x.shape[0])]) for n in inputs)
    return brute_joint_entropy(x, inputs) - conditional


def brute_greedy(x, k):
    picked, scores = [], []
    for _ in range(k):
        gains = {n: brute_joint_mi(x, picked + [n]) for n in range(x.shape[1]) if n not in picked}
        best = max(gains, key=lambda n: (gains[n], -n))
        picked.append(best)
        scores.append(gains[best])
    return picked, scores


# A numpy port of batchbald_redux 2.0.5's exact path, its layout [N, K, C] of log probabilities.

def redux_conditional_entropy(log_probs_N_K_C):
    """batchbald_redux/batchbald.py: compute_conditional_entropy."""
    K = log_probs_N_K_C.shape[1]
    return -np.sum(log_probs_N_K_C * np.exp(log_probs_N_K_C), axis=(1, 2)) / K


def redux_entropy(log_probs_N_K_C):
    """batchbald_redux/batchbald.py: compute_entropy."""
    K = log_probs_N_K_C.shape[1]
    mean_log_probs_N_C = logsumexp(log_probs_N_K_C, axis=1) - math.log(K)
    return -np.sum(mean_log_probs_N_C * np.exp(mean_log_probs_N_C), axis=1)


def redux_bald_batch(log_probs_N_K_C, batch_size):
    """batchbald_redux/batchbald.py: get_bald_batch (torch.topk -> a stable descending sort)."""
    scores_N = redux_entropy(log_probs_N_K_C) - redux_conditional_entropy(log_probs_N_K_C)
    indices = np.argsort(-scores_N, kind="stable")[:batch_size]
    return indices.tolist(), scores_N[indices].tolist()


def redux_exact_batchbald_batch(log_probs_N_K_C, batch_size):
    """batchbald_redux/batchbald.py: get_batchbald_batch with joint_entropy.py's ExactJointEntropy
    (add_variables, compute_batch): the path DynamicJointEntropy takes while C**picked <= num_samples."""
    N, K, C = log_probs_N_K_C.shape
    conditional_entropies_N = redux_conditional_entropy(log_probs_N_K_C)
    joint_probs_M_K = np.ones((1, K))
    candidate_indices, candidate_scores = [], []
    for i in range(batch_size):
        if i > 0:
            probs_K_C = np.exp(log_probs_N_K_C[candidate_indices[-1]])
            joint_probs_K_M_C = joint_probs_M_K.T[:, :, None] * probs_K_C[:, None, :]
            joint_probs_M_K = joint_probs_K_M_C.reshape((K, -1)).T
        probs_N_M_C = np.einsum("mk,nkc->nmc", joint_probs_M_K, np.exp(log_probs_N_K_C)) / K
        scores_N = np.sum(-np.log(probs_N_M_C) * probs_N_M_C, axis=(1, 2))
        scores_N -= conditional_entropies_N + conditional_entropies_N[candidate_indices].sum()
        scores_N[candidate_indices] = -np.inf
        candidate_indices.append(int(np.argmax(scores_N)))
        candidate_scores.append(scores_N[candidate_indices[-1]])
    return candidate_indices, candidate_scores


# --- per-input strategies and TopK -------------------------------------------------------------

@pytest.mark.parametrize("strategy", PER_INPUT)
def test_per_input_scores_match_definitions(strategy):
    x = dirichlet_samples(0, passes=9, pool=13, classes=4)
    rng = np.random.default_rng(5) if strategy == "random" else None
    np.testing.assert_allclose(A.per_input_scores(x, strategy, rng), reference_scores(x, strategy, 5),
                               rtol=1e-12, atol=1e-15)


def test_topk_over_uneven_slices_equals_sorting_the_whole_pool():
    scores = np.random.default_rng(1).integers(0, 6, size=40).astype(float)  # many ties
    for k in (1, 5, 40):
        keep = A.TopK(k)
        start = 0
        for width in (1, 7, 3, 11, 2, 16):
            keep.add(scores[start:start + width], start)
            start += width
            assert len(keep.result()[0]) <= k
        indices, kept = keep.result()
        expected = np.argsort(-scores, kind="stable")[:k]
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_array_equal(kept, scores[expected])


def test_bald_with_k_one_is_the_argmax_of_mutual_information():
    x = dirichlet_samples(2, passes=10, pool=30, classes=3)
    pool = np.arange(30)[:, None]
    acquisition = A.acquire(lambda rows: x[:, rows[:, 0]], pool, k=1, strategy="bald", batch_size=7)
    assert acquisition.indices.tolist() == [int(np.argmax(mutual_information(x)))]


# --- BatchBALD -------------------------------------------------------------------------------

def test_batchbald_greedy_equals_brute_force():
    x = dirichlet_samples(3, passes=20, pool=7, classes=3)
    indices, scores = A.batchbald(x, 3)
    picked, brute_scores = brute_greedy(x, 3)
    assert indices.tolist() == picked
    np.testing.assert_allclose(scores, brute_scores, rtol=1e-9)


def test_batchbald_first_pick_is_balds():
    x = dirichlet_samples(4, passes=15, pool=25, classes=5)
    indices, scores = A.batchbald(x, 1)
    bald = mutual_information(x)
    assert indices[0] == np.argmax(bald)
    assert scores[0] == pytest.approx(bald.max(), rel=1e-12)


def test_exact_while_configurations_within_limit_then_sampled():
    # C = 3, exact_limit = 3: the 2nd pick (3 configurations of the 1st) is exact, the 3rd (9) sampled.
    x = dirichlet_samples(5, passes=20, pool=7, classes=3)
    indices, scores = A.batchbald(x, 3, num_samples=2000, rng=np.random.default_rng(0), exact_limit=3)
    brute = [brute_joint_mi(x, indices[:i + 1].tolist()) for i in range(3)]
    np.testing.assert_allclose(scores[:2], brute[:2], rtol=1e-9)
    assert scores[2] != pytest.approx(brute[2], abs=1e-9)
    assert scores[2] == pytest.approx(brute[2], abs=0.1)


def test_sampled_estimator_agrees_with_exact_for_many_samples():
    x = dirichlet_samples(6, passes=20, pool=7, classes=3)
    indices, scores = A.batchbald(x, 4, num_samples=40_000, rng=np.random.default_rng(1), exact_limit=1)
    brute = [brute_joint_mi(x, indices[:i + 1].tolist()) for i in range(4)]
    np.testing.assert_allclose(scores, brute, atol=0.01)


def test_batchbald_never_picks_an_input_twice():
    # A second draw of a soft input's label would add information, so only the rule stops a repeat.
    x = dirichlet_samples(0, passes=10, pool=6, classes=3)
    indices, _ = A.batchbald(x, 6)
    assert sorted(indices.tolist()) == list(range(6))


def test_batchbald_skips_a_copy_that_bald_would_pick():
    # 4 passes. A's label is the pass's half (0,0,1,1); B's is its parity (0,1,0,1), blurred, so
    # BALD ranks B below A, but B's label tells what A's copy cannot: which pass within the half.
    a = [[1, 0], [1, 0], [0, 1], [0, 1]]
    b = [[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]]
    flat = [[0.5, 0.5]] * 4
    sure = [[0.8, 0.2]] * 4
    x = np.array([flat, a, b, a, a, sure], dtype=np.float64).transpose(1, 0, 2)  # [T, N, C]
    bald_top2 = np.argsort(-mutual_information(x), kind="stable")[:2]
    assert bald_top2.tolist() == [1, 3]  # the two copies of A
    indices, scores = A.batchbald(x, 2)
    assert indices.tolist() == [1, 2]
    assert scores[1] > scores[0] + 0.3


def test_batchbald_equals_batchbald_redux_definitions():
    x = dirichlet_samples(7, passes=20, pool=40, classes=4, alpha=0.3)
    log_probs_N_K_C = np.log(x.transpose(1, 0, 2))
    redux_indices, redux_scores = redux_exact_batchbald_batch(log_probs_N_K_C, 5)
    indices, scores = A.batchbald(x, 5)  # 4**4 configurations <= the default limit: exact throughout
    assert indices.tolist() == redux_indices
    np.testing.assert_allclose(scores, redux_scores, rtol=1e-9)
    bald_indices, bald_scores = redux_bald_batch(log_probs_N_K_C, 5)
    keep = A.TopK(5)
    keep.add(A.per_input_scores(x, "bald"), 0)
    assert keep.result()[0].tolist() == bald_indices
    np.testing.assert_allclose(keep.result()[1], bald_scores, rtol=1e-9)


# --- acquire ---------------------------------------------------------------------------------

def index_predict(samples):
    """predict over a pool whose one column is the pool index: the samples of those rows."""
    return lambda rows: samples[:, rows[:, 0]]


@pytest.mark.parametrize("strategy", PER_INPUT)
@pytest.mark.parametrize("batch_size", [1, 3, 17])
def test_acquire_streaming_equals_scoring_the_whole_pool(strategy, batch_size):
    x = dirichlet_samples(8, passes=6, pool=17, classes=3, dtype=np.float32)
    calls = []
    rng = np.random.default_rng(9) if strategy == "random" else None
    acquisition = A.acquire(index_predict(x), np.arange(17)[:, None], k=5, strategy=strategy,
                            batch_size=batch_size, rng=rng, mask_seed=42,
                            progress=lambda done, total: calls.append((done, total)))
    scores = A.per_input_scores(x, strategy, np.random.default_rng(9) if rng else None)
    expected = np.argsort(-scores, kind="stable")[:5]
    np.testing.assert_array_equal(acquisition.indices, expected)
    np.testing.assert_allclose(acquisition.scores, scores[expected], rtol=1e-12)
    assert acquisition.ids == [str(i) for i in expected]
    assert (acquisition.passes, acquisition.mask_seed) == (6, 42)
    assert calls == [(min(start + batch_size, 17), 17) for start in range(0, 17, batch_size)]


def test_acquire_batchbald_equals_batchbald_on_the_whole_tensor():
    x = dirichlet_samples(10, passes=8, pool=11, classes=3, dtype=np.float32)
    acquisition = A.acquire(index_predict(x), np.arange(11)[:, None], k=3, strategy="batchbald", batch_size=4)
    indices, scores = A.batchbald(x, 3)
    np.testing.assert_array_equal(acquisition.indices, indices)
    np.testing.assert_array_equal(acquisition.scores, scores)


def test_acquire_slices_every_input_of_a_dict_pool_alike_and_names_picks_by_id():
    x = dirichlet_samples(11, passes=5, pool=9, classes=4)

    def predict(inputs):
        assert np.array_equal(inputs["scaled"], 10 * inputs["index"])
        return x[:, inputs["index"]]

    pool = {"index": np.arange(9), "scaled": 10 * np.arange(9)}
    acquisition = A.acquire(predict, pool, k=3, strategy="entropy", batch_size=4,
                            ids=[f"img{i}.png" for i in range(9)])
    expected = np.argsort(-A.per_input_scores(x, "entropy"), kind="stable")[:3]
    np.testing.assert_array_equal(acquisition.indices, expected)
    assert acquisition.ids == [f"img{i}.png" for i in expected]


# --- writing -------------------------------------------------------------------------------------

def example_acquisition():
    return A.Acquisition("bald", np.array([4, 0, 2]), np.array([0.5, 1 / 3, 0.125]), passes=20,
                         mask_seed=7, ids=["a,b", 'say "hi"', "c"])


def test_csv_round_trip(tmp_path):
    acquisition = example_acquisition()
    acquisition.write(tmp_path / "picks.csv")
    with open(tmp_path / "picks.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["rank", "index", "id", "score", "strategy", "passes", "mask_seed"]
        read = list(reader)
        rows = [{"rank": int(r["rank"]), "index": int(r["index"]), "id": r["id"], "score": float(r["score"])}
                for r in read]
    assert rows == acquisition.rows()
    # Every row carries what reproduces the ranking.
    assert {(r["strategy"], int(r["passes"]), int(r["mask_seed"])) for r in read} == {("bald", 20, 7)}
    assert [r["rank"] for r in rows] == [1, 2, 3]


def test_json_round_trip(tmp_path):
    acquisition = example_acquisition()
    acquisition.write(tmp_path / "picks.JSON")
    document = json.loads((tmp_path / "picks.JSON").read_text())
    assert document == {"strategy": "bald", "passes": 20, "mask_seed": 7,
                        "score_meaning": A.SCORE_MEANING["bald"], "rows": acquisition.rows()}


def test_unknown_suffix_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(InputError, match=r"\.csv or \.json"):
        example_acquisition().write(tmp_path / "picks.txt")
    assert list(tmp_path.iterdir()) == []


# --- binary heads and refusals -------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1)])
def test_binary_as_categorical(shape):
    p = np.random.default_rng(12).uniform(size=shape)
    categorical = A.binary_as_categorical(p)
    flat = p.reshape(6, 5)
    np.testing.assert_array_equal(categorical[..., 1], flat)
    np.testing.assert_array_equal(categorical[..., 0], 1 - flat)
    np.testing.assert_allclose(A.per_input_scores(categorical, "bald"), bernoulli_mutual_information(flat),
                               rtol=1e-12, atol=1e-15)


X = dirichlet_samples(13, passes=4, pool=5, classes=3)
NAN = X.copy()
NAN[1, 2, 0] = np.nan


@pytest.mark.parametrize("call", [
    lambda: A.per_input_scores(X, "nope"),
    lambda: A.per_input_scores(X, "batchbald"),
    lambda: A.per_input_scores(X, "random"),  # random needs an rng
    lambda: A.per_input_scores(X[0], "bald"),
    lambda: A.per_input_scores(NAN, "entropy"),
    lambda: A.per_input_scores(2 * X, "entropy"),  # not probabilities
    lambda: A.batchbald(X, 0),
    lambda: A.batchbald(X, 6),
    lambda: A.batchbald(NAN, 2),
    lambda: A.TopK(0),
    lambda: A.binary_as_categorical(X),
    lambda: A.acquire(index_predict(X), np.arange(5)[:, None], k=6),
    lambda: A.acquire(index_predict(X), np.arange(5)[:, None], k=2, strategy="unknown"),
    lambda: A.acquire(index_predict(X), np.arange(5)[:, None], k=2, passes=3),
    lambda: A.acquire(index_predict(X), np.arange(5)[:, None], k=2, ids=["a"]),
    lambda: A.acquire(lambda rows: X, np.arange(5)[:, None], k=2, batch_size=2),  # wrong batch
], ids=["strategy", "batchbald-per-input", "random-without-rng", "shape", "nan", "not-probabilities",
        "k-zero", "k-over-pool", "batchbald-nan", "topk-zero", "binary-shape", "acquire-k-over-pool",
        "acquire-strategy", "acquire-passes", "acquire-ids", "acquire-predict-batch"])
def test_bad_arguments_are_one_line_input_errors(call):
    with pytest.raises(InputError) as err:
        call()
    assert "\n" not in str(err.value)
