"""predict(method="analytic"): the file's moment graph (docs/FORMAT.md: Analytic outputs; built by
`convert --analytic`, convert/analytic.py) in one run instead of T passes: each output's Gaussian
draws of the layers after the last dropout, read as probabilities like MC samples, so the measures
(entropies, mutual information, variance, ...) keep their definitions (docs/DESIGN.md: Analytic mode).

The runtime runs the mode only where the file records an agreement with MC that meets the bounds
below, measured when the graph was added; anything else is refused in one line.
"""

from typing import Dict, Sequence

import numpy as np

from .errors import InputError, ModelFileError, ModelRunError
from .prediction import Prediction, _categorical, _conformal, _float32
from .measures import mean_and_variance, standard_deviation

METHODS = ("mc", "analytic")
PREFIX = "mcdrop_analytic/"
# The agreement a file must record (issue 26): mean probabilities within MAX_MEAN_GAP (max abs)
# of MC with REFERENCE_PASSES passes, and mutual information ranked with Spearman >= MIN_SPEARMAN.
MAX_MEAN_GAP = 0.02
MIN_SPEARMAN = 0.9
REFERENCE_PASSES = 1000
# Inputs per run: the draws hold DRAWS (256) x inputs x the last dropout's units floats.
ROWS_PER_RUN = 64


def check_method(method: str, flag: str = "method") -> str:
    if method not in METHODS:
        raise InputError(f"{flag} {method!r}: expected {' or '.join(METHODS)}")
    return method


def agreement_holds(agreement: dict) -> bool:
    return (agreement.get("max_abs_mean_gap", np.inf) <= MAX_MEAN_GAP
            and agreement.get("spearman_mutual_information", -1) >= MIN_SPEARMAN)


def check_arguments(info, path: str, method: str, names: dict, passes=None, masks=None, mask_seed=None,
                    dropout: bool = True, max_passes=None, min_passes=None) -> None:
    """method="analytic"'s refusals, before any run: Monte Carlo choices, a file without the
    moment graph, or one whose recorded agreement with MC is under the bounds."""
    flag = "--method" if names.get("passes", "").startswith("--") else "method"
    if check_method(method, flag) == "mc":
        return
    asked = [names[name] for name, value in (("passes", passes), ("masks", masks), ("mask_seed", mask_seed),
                                             ("max_passes", max_passes), ("min_passes", min_passes))
             if value is not None]
    if asked or not dropout:
        raise InputError(f"{flag} analytic runs no Monte Carlo passes: "
                         f"{asked[0] if asked else 'dropout off'} is for {flag} mc")
    spec = info.metadata.get("analytic")
    if not isinstance(spec, dict) or not isinstance(spec.get("agreement"), dict):
        raise ModelFileError(f"{path} has no analytic outputs; add them with `cli.py convert --analytic INPUTS`")
    agreement = spec["agreement"]
    if not agreement_holds(agreement):
        raise ModelFileError(
            f"{path}: its analytic mode agrees poorly with MC (mean probabilities within "
            f"{agreement.get('max_abs_mean_gap', float('nan')):.3f}, mutual information ranked at Spearman "
            f"{agreement.get('spearman_mutual_information', float('nan')):.2f}; needs <= {MAX_MEAN_GAP} and "
            f">= {MIN_SPEARMAN}); use {flag} mc")


def draws(session, x: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """{samples output name: [DRAWS, batch, ...]} from the moment graph, ROWS_PER_RUN inputs a run."""
    names = [PREFIX + name for name in session._samples]
    batch = len(next(iter(x.values())))
    moments = _moment_session(session, names)
    runs = [session._run({k: v[start:start + ROWS_PER_RUN] for k, v in x.items()}, 1, True, names, moments)
            for start in range(0, batch, ROWS_PER_RUN)]
    found = {name[len(PREFIX):]: np.concatenate([run[name] for run in runs], axis=1) for name in names}
    for name, value in found.items():
        if not np.isfinite(value).all():
            raise ModelRunError(f"{session.path}: the analytic graph gave NaN or infinite values for finite inputs")
    return found


def _moment_session(session, names):
    """A session of the file cut to the moment graph's outputs, created on the first analytic predict:
    onnxruntime runs every node of a graph, so the whole file would also run its Monte Carlo part
    once per analytic run (a third of the shipped CNN's analytic time; BENCHMARKS.md: Analytic mode)."""
    with session._lock:
        if session._analytic_session is None:
            session._analytic_session, _ = session._create_session(
                session._model_bytes, 0, session.settings.device, session.threads, names)
        return session._analytic_session


def predict(session, x: Dict[str, np.ndarray], rules: Sequence, top_k: int = 3) -> dict:
    """{output name: Prediction} of method="analytic" (passes 1, no standard errors: nothing is
    estimated from passes)."""
    found = draws(session, x)
    predictions = {}
    for output, name, rule in zip(session.info.model_outputs, session._samples, rules):
        samples = found[name].astype(np.float64)
        mean, variance = mean_and_variance(samples)
        if output.head == "regression":
            measures = {"mean": mean, "std": standard_deviation(variance)}
        else:
            measures = _categorical(samples, mean, variance, output.labels, top_k)
        conformal = (output.calibration or {}).get("conformal")
        if conformal:  # every method, as the Monte Carlo path makes them (runtime/conformal_sets.py)
            measures.update(_conformal(conformal, output.head, mean, measures, output.labels))
        predictions[output.name] = Prediction(
            head=output.head, mean=mean.astype(np.float32), variance=variance.astype(np.float32),
            measures={key: _float32(value) for key, value in measures.items()}, passes=1, stochastic=True,
            provider=session.provider, labels=output.labels, rule=rule)
    return predictions
