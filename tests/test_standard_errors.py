"""Monte Carlo standard errors against brute-force repetition: the shipped CNN, 200 mask seeds.

One run at T passes reports a standard error for each measure (runtime/measures.py); the spread
of that measure over runs with 200 different shared mask sets is its true Monte Carlo error. The
two agree within 20% for every measure and input where the spread is not ~0 (issue 26's
acceptance). The error of one run is averaged over the seeds as a root mean square: a squared
standard error estimates the variance, while a near-certain digit's errors are skewed (most runs
see no dissenting pass), so their median sits far below the spread (docs/DESIGN.md: Monte Carlo
standard errors has the figures). Then the standard errors through infer --json / --out and score.
"""

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mcdrop import cli
from mcdrop.runtime.input_files import load_inputs
from mcdrop.score.job import ScoreOptions
from mcdrop.score.local import score_local
from mcdrop.runtime.session import MCSession
from mcdrop.score.input_plan import plan_inputs
from conftest import ROOT

CNN = ROOT / "models" / "cnn.onnx"
# Inputs with real uncertainty (a clear digit's measures hardly move between seeds), the one with
# most of its mass on one class of them too. About 0.05 s per input and seed on 2 cores.
SAMPLES = [str(ROOT / "models" / "samples" / f"{name}.png") for name in ("ambiguous", "not_a_digit", "digit_8")]
SEEDS = range(1000, 1200)
PASSES = 50
TOLERANCE = 0.2
# A measure's element is checked where its spread over the seeds is at least this share of the
# measure's largest spread: a class whose probability stays ~0 has a spread of 1e-6, where
# neither number means anything.
MEANINGFUL_SPREAD = 0.05
MEASURES = ("confidence", "margin", "predictive_entropy", "expected_entropy", "mutual_information",
            "variation_ratio", "std", "top_k_probs")


@pytest.fixture(scope="module")
def repeated():
    """{name: (values [seeds, inputs, ...], standard errors [seeds, inputs, ...])} from one
    predict per mask seed over the inputs (a shared set's passes depend on its seed alone, so a
    batch of inputs per seed is the same as one run per input)."""
    session = MCSession(CNN, seed=0)
    names, x = load_inputs(SAMPLES, session.info)
    runs = [session.predict(x, passes=PASSES, masks="shared", mask_seed=seed, keep_samples=False, top_k=2)
            for seed in SEEDS]
    found = {name: (np.stack([run.measures[name] for run in runs]),
                    np.stack([run.standard_errors[name] for run in runs])) for name in MEASURES}
    for name in ("mean", "variance"):
        found[name] = (np.stack([getattr(run, name) for run in runs]),
                       np.stack([run.standard_errors[name] for run in runs]))
    return names, found


@pytest.mark.parametrize("name", MEASURES + ("mean", "variance"))
def test_standard_error_agrees_with_the_spread_over_mask_seeds(repeated, name):
    names, found = repeated
    values, errors = found[name]
    spread = values.astype(np.float64).std(axis=0, ddof=1)  # [inputs, ...]
    typical = np.sqrt(np.mean(np.square(errors.astype(np.float64)), axis=0))
    checked = spread >= MEANINGFUL_SPREAD * spread.max()
    ratio = typical[checked] / spread[checked]
    where = [names[i] for i in np.argwhere(checked)[:, 0]]
    bad = [f"{where[j]}: {ratio[j]:.2f}" for j in np.flatnonzero(np.abs(ratio - 1) > TOLERANCE)]
    assert not bad, f"{name}: standard error / spread over {len(SEEDS)} seeds outside 1 +- {TOLERANCE}: {bad}"
    # Every input is checked on every measure (for vectors: on some of its classes).
    assert checked.reshape(len(names), -1).any(axis=1).all()


def test_standard_errors_shrink_with_more_passes(repeated):
    """sqrt(T) more passes, sqrt(T) smaller error: the 200 seeds' spread at T=50 against one run of
    T=800 (16x the passes: a quarter of the error)."""
    names, found = repeated
    session = MCSession(CNN, seed=0)
    _, x = load_inputs(SAMPLES[:1], session.info)  # the ambiguous digit
    long = session.predict(x, passes=PASSES * 16, masks="shared", mask_seed=7, keep_samples=False)
    for name in ("mutual_information", "confidence", "expected_entropy"):
        spread = found[name][0][:, 0].std(ddof=1)
        assert long.standard_errors[name][0] == pytest.approx(spread / 4, rel=0.3), name


# The standard errors in every output ----------------------------------------------------------

def test_infer_json_and_csv_carry_the_standard_errors(tmp_path):
    ambiguous = str(ROOT / "models" / "samples" / "ambiguous.png")
    expected = MCSession(CNN).predict(load_inputs([ambiguous], MCSession(CNN).info)[1], passes=20, mask_seed=3)
    runner = CliRunner()
    out = tmp_path / "r.csv"
    result = runner.invoke(cli.app, ["infer", ambiguous, "--model", str(CNN), "--passes", "20", "--mask-seed", "3",
                                     "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)["predictions"][0]
    np.testing.assert_allclose(document["mean_se"], expected.standard_errors["mean"][0], atol=1e-6)
    for name in ("confidence", "mutual_information", "variation_ratio", "predictive_entropy"):
        assert document["measures"][f"{name}_se"] == pytest.approx(float(expected.standard_errors[name][0]), abs=1e-6)
    header, row = list(csv.reader(out.open()))
    columns = dict(zip(header, row))
    assert float(columns["mutual_information_se"]) == pytest.approx(document["measures"]["mutual_information_se"])
    assert float(columns["mean_se_3"]) == pytest.approx(document["mean_se"][3])
    # Every standard error comes after every column there was before.
    first = min(i for i, column in enumerate(header) if "_se" in column)
    assert all("_se" in column for column in header[first:]) and "top_k_labels_2" in header[:first]


def test_score_columns_carry_the_standard_errors(tmp_path):
    x = np.concatenate([load_inputs(SAMPLES, MCSession(CNN).info)[1]] * 3)
    np.save(tmp_path / "x.npy", x)
    session = MCSession(CNN, threads=1)
    plan = plan_inputs([str(tmp_path / "x.npy")], session.info)
    score_local(session, plan, tmp_path / "s.parquet", ScoreOptions(passes=20, mask_seed=5), batch_size=4)
    table = pq.read_table(tmp_path / "s.parquet")
    expected = session.predict(x, passes=20, mask_seed=5)
    for name in ("margin", "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio"):
        np.testing.assert_allclose(table.column(f"{name}_se").to_numpy(), expected.standard_errors[name], atol=2e-6,
                                   err_msg=name)
    np.testing.assert_allclose(table.column("confidence_se").to_numpy(), expected.standard_errors["confidence"],
                               atol=2e-6)
    np.testing.assert_allclose(np.stack(table.column("mean_se").to_numpy(zero_copy_only=False)),
                               expected.standard_errors["mean"], atol=2e-6)
    assert table.column_names.index("confidence_se") > table.column_names.index("error")
