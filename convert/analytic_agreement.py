"""`convert --analytic INPUTS`: the file with the moment graph (convert/analytic.py) and its
agreement with MC measured on INPUTS, recorded in the metadata (docs/FORMAT.md: Analytic outputs),
which the runtime checks before it runs the mode (runtime/analytic.py)."""

from typing import List, Optional

import numpy as np

from ..runtime.errors import InputError
from .analytic import DRAWS, SPREADS, add_analytic_graph, set_spread

# Validation inputs the agreement is measured on (the first ones given): MC at REFERENCE_PASSES
# passes costs that many passes per input.
MAX_VALIDATION_INPUTS = 128
# The fewest validation inputs convert takes: half are held out, and a Spearman correlation over
# fewer than 8 says little (a random ranking of 8 reaches the 0.9 bound 0.2% of the time, of 4 4%,
# of 2 half the time; docs/DESIGN.md: Analytic mode).
MIN_VALIDATION_INPUTS = 16


def convert_analytic(source, output, validation, *, verify: bool = True, limits=None,
                     reference_passes: Optional[int] = None) -> List[str]:
    """Write `source` with its moment graph to `output` (atomically, after the runtime's load
    checks), with the agreement between the analytic mode and MC (shared masks, mask seed 0,
    runtime/analytic.py: REFERENCE_PASSES) on the inputs in `validation` (paths infer takes)
    recorded in the metadata. Returns the report's lines."""
    from pathlib import Path

    import onnx

    from ..runtime import analytic
    from ..runtime.format.integrity import seal
    from ..runtime.format.metadata_writer import write_metadata
    from ..runtime.input_files import load_inputs
    from ..runtime.limits import DEFAULT
    from ..runtime.load_checks import check_model_bytes
    from ..runtime.safe_files import atomic_writer
    from .source_model import opened_source

    limits = limits or DEFAULT
    reference_passes = reference_passes or analytic.REFERENCE_PASSES
    with opened_source(source, output, limits, verify, threads=None) as opened:
        standard, sealed, folder = opened.session, opened.sealed, opened.folder
        meta = dict(standard.info.metadata)
        proto = onnx.load_from_string(opened.data)
        add_analytic_graph(proto, meta, str(source))
        _, x = load_inputs([str(validation)], standard.info, limits=limits)
        x = {k: v[:MAX_VALIDATION_INPUTS] for k, v in x.items()} if isinstance(x, dict) else x[:MAX_VALIDATION_INPUTS]
        fit, held_out = _halves(len(next(iter(x.values())) if isinstance(x, dict) else x))  # before MC's cost
        mc = standard.predict(x, passes=reference_passes, masks="shared", mask_seed=0, keep_samples=False)
        mc = mc if isinstance(mc, dict) else {standard.info.model_outputs[0].name: mc}
        meta["analytic"] = {"draws": DRAWS, "spread": 1.0, "agreement": None}
        write_metadata(proto, meta)
        # The spread is fitted on the even inputs; the agreement recorded is the odd ones' (held out).
        best = None  # (gap, spread, its session): the smallest gap, then the smallest spread
        for spread in SPREADS:
            set_spread(proto, spread)
            moments = _session_of(proto, Path(folder), limits)
            gap = agreement(moments, standard, mc, x, fit)["max_abs_mean_gap"]
            best = (gap, spread, moments) if best is None or (gap, spread) < best[:2] else best
        _, spread, moments = best
        meta["analytic"]["spread"] = spread
        set_spread(proto, spread)
        found = agreement(moments, standard, mc, x, held_out)
        meta["analytic"]["agreement"] = dict(found, passes=int(reference_passes), mask_seed=0)
        write_metadata(proto, meta)
        onnx.checker.check_model(proto)
        data = proto.SerializeToString()
        data = seal(data) if sealed else data
        check_model_bytes(data, str(output), limits)
    with atomic_writer(Path(output)) as f:
        f.write(data)
    found = meta["analytic"]["agreement"]
    verdict = ("ok" if analytic.agreement_holds(found) else
               "POOR: the runtime refuses --method analytic on this file (MC runs as before)")
    return [f"wrote            {output} ({len(data) / 2**20:.1f} MiB, {len(proto.graph.node)} nodes, "
            f"analytic outputs of {DRAWS} draws, spread {meta['analytic']['spread']:g})",
            f"agreement        {verdict}: over {found['inputs']} held-out inputs against MC T={found['passes']}, mean "
            f"probabilities within {found['max_abs_mean_gap']:.4f} (max abs; bound {analytic.MAX_MEAN_GAP}), "
            f"mutual information ranked at Spearman {found['spearman_mutual_information']:.3f} "
            f"(bound {analytic.MIN_SPEARMAN})"]


def _halves(count: int):
    if count < MIN_VALIDATION_INPUTS:
        raise InputError(f"--analytic: {count} validation inputs; the agreement needs at least {MIN_VALIDATION_INPUTS} "
                         f"(half fit the spread, and a rank correlation over fewer than {MIN_VALIDATION_INPUTS // 2} "
                         "held-out inputs says little)")
    return slice(0, None, 2), slice(1, None, 2)


def _session_of(proto, folder, limits):
    from ..runtime.session import MCSession

    path = folder / "analytic.onnx"
    path.write_bytes(proto.SerializeToString())
    return MCSession(path, seed=0, limits=limits, verify=False)


def agreement(moments, standard, mc: dict, x, rows: slice) -> dict:
    """The analytic mode of the session `moments` on the inputs `rows` of `x` against MC's
    predictions `mc` (by output name): the largest gap in a mean probability, and the Spearman
    correlation of the mutual information (regression: the mean std) over the inputs; the worst
    over the outputs."""
    from ..runtime import analytic
    from ..runtime import measures as M

    x = moments._feeds.inputs(x)
    found = analytic.draws(moments, {name: value[rows] for name, value in x.items()})
    gap, rank = 0.0, 1.0
    for output, name in zip(standard.info.model_outputs, moments._samples):
        samples = found[name].astype(np.float64)
        mean, variance = M.mean_and_variance(samples)
        want = mc[output.name]
        gap = max(gap, float(np.max(np.abs(mean - want.mean[rows]))))
        if output.head == "regression":
            score = np.sqrt(variance).reshape(len(mean), -1).mean(1)
            reference = want.measures["std"][rows].reshape(len(mean), -1).mean(1)
        else:
            score, reference = M.mutual_information(samples), want.measures["mutual_information"][rows]
        rank = min(rank, spearman(score, reference))
    return {"inputs": int(len(mean)), "max_abs_mean_gap": round(gap, 6), "spearman_mutual_information": round(rank, 6)}


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties take their mean rank); 1 where either is constant."""
    def ranks(v):
        v = np.asarray(v, np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties: their mean rank
            same = v == value
            r[same] = r[same].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])
