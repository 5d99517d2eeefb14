"""What a score job computes, shared by both engines: its options (`ScoreOptions`, checked by
`score_options`) and `Scorer`, one MCSession that turns a batch of input references
(score/input_plan.py) into an Arrow table of result rows with a fixed schema: label, mean,
variance, measures and UNCERTAIN flag, then the standard errors (confidence_se, mean_se,
variance_se, <measure>_se). Inputs are scored with one shared mask set
(runtime/format/mask_sets.py), so a row depends on its input, the mask seed and the passes alone:
any batch size, worker count or engine gives the same rows, and a retried batch reproduces its rows.

The engines: score/local.py (one process) and score/ray_engine.py; the checkpoint both resume
from: score/checkpoint.py. Needs pyarrow (the `score` extra).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..runtime.checks import positive_int
from ..runtime.errors import InputError
from ..runtime.limits import DEFAULT, Limits

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # the CLI says which extra to install (job.require_pyarrow)
    pa = pq = None

ON_ERROR = ("skip", "stop")
# Measures written per head kind besides label, confidence, mean and variance (std is the
# square root of variance, top-k is read off mean; neither is repeated).
MEASURES = {
    "categorical": ("margin", "predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio"),
    "sigmoid": ("entropy", "expected_entropy", "mutual_information"),
    "regression": ("std",),
}
METADATA_KEY = b"mcdrop"


def require_pyarrow() -> None:
    if pa is None:
        raise InputError('scoring to Parquet needs pyarrow: pip install -e ".[score]"')


def check_job_flags(engine: str, address, workers, batch_size: int, gpus_per_worker: float, on_error: str, out,
                    resume: bool, overwrite: bool) -> None:
    """`cli.py score`'s flags that need no model, checked before any work (errors name the flags);
    then the engine's packages and the output (check_output)."""
    from .checkpoint import check_output

    if workers is not None:
        positive_int("--workers", workers)
    if engine not in ("local", "ray"):
        raise InputError(f"--engine {engine!r}: choose local or ray")
    if address is not None and engine != "ray":
        raise InputError("--address is for --engine ray")
    positive_int("--batch-size", batch_size)
    if not 0 <= gpus_per_worker < 2**20:
        raise InputError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    ScoreOptions.check_on_error(on_error)
    require_pyarrow()
    if engine == "ray":
        from .ray_engine import require_ray

        require_ray()
    check_output(out, engine, resume, overwrite)


@dataclass(frozen=True)
class ScoreOptions:
    """What a job computes; the same options give the same rows."""

    passes: int
    mask_seed: Optional[int]  # None: the file takes no mask set (independent masks)
    output: Optional[str] = None  # the output scored, for a model with several
    measures: Tuple[str, ...] = ()  # () : every measure of the head
    keep_samples: bool = False
    uncertain_if: Optional[str] = None
    on_error: str = "skip"
    auto: Optional[Tuple[int, int]] = None  # passes="auto": (min_passes, max_passes), and passes is max_passes

    def __post_init__(self):
        self.check_on_error(self.on_error)

    @staticmethod
    def check_on_error(on_error) -> None:
        if on_error not in ON_ERROR:
            raise InputError(f"--on-error {on_error!r}: choose one of {', '.join(ON_ERROR)}")


def score_options(session, passes: Optional[int] = None, mask_seed: Optional[int] = None,
                  output: Optional[str] = None, measures: Sequence[str] = (), keep_samples: bool = False,
                  uncertain_if: Optional[str] = None, on_error: str = "skip",
                  resume_from: Optional[Path] = None, max_passes: Optional[int] = None,
                  min_passes: Optional[int] = None) -> ScoreOptions:
    """The job's options, checked against the session's file. Masks are shared wherever the file
    takes a mask set; the mask seed defaults to that of the unfinished job in `resume_from` (a
    checkpoint folder), else the session's."""
    from .checkpoint import read_job

    shared = session.default_masks == "shared"
    if mask_seed is None and resume_from is not None:
        mask_seed = (read_job(resume_from) or {}).get("mask_seed")
    from ..runtime.adaptive_passes import parse_passes

    chosen = session.resolve(parse_passes(passes), mask_seed=mask_seed if shared else None, max_passes=max_passes,
                             min_passes=min_passes)
    if chosen.auto is not None and keep_samples:
        raise InputError("--keep-samples is for a fixed --passes: with --passes auto each input runs its own count")
    auto = None if chosen.auto is None else (chosen.auto.min_passes, chosen.auto.max_passes)
    return ScoreOptions(chosen.passes, chosen.mask_seed, output, tuple(measures), keep_samples, uncertain_if, on_error,
                        auto)


def measure_names(head: str) -> Tuple[str, ...]:
    from ..runtime.uncertain_rule import head_kind

    return MEASURES[head_kind(head)]


def check_measures(head: str, wanted: Sequence[str], single_pass: Sequence[str] = ()) -> Tuple[str, ...]:
    """The measure columns to write: `wanted` in the head's order, every one when empty.
    single_pass: the file's single-pass scores (feature_distance, energy, max_logit), after the head's."""
    known = measure_names(head) + tuple(single_pass)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise InputError(f"--measures {', '.join(unknown)}: a {head} head has {', '.join(known)}")
    return tuple(name for name in known if name in wanted) if wanted else known


class Scorer:
    """One MCSession and a job's options: batches of input references -> result rows (Arrow)."""

    def __init__(self, session, options: ScoreOptions, limits: Limits = DEFAULT):
        from ..evaluate.labelled_sets import pick_output
        from ..runtime.uncertain_rule import Rule, file_rule
        from .input_plan import ArrayReaders

        require_pyarrow()
        self.session = session
        self.limits = limits
        self.model_output = pick_output(session.info, options.output)
        head = self.model_output.head
        self.rule = Rule.parse(options.uncertain_if, head, source="override") if options.uncertain_if is not None \
            else file_rule(self.model_output.calibration, head)
        self.options = options
        from ..runtime.measures import single_pass_outputs

        self.measures = check_measures(self.model_output.head, options.measures,
                                       tuple(single_pass_outputs(self.model_output).values()))
        self._readers = ArrayReaders()
        self.schema = self._columns(self._probe()).schema

    def score_refs(self, refs: Dict[str, np.ndarray]) -> "pa.Table":
        """Rows for a batch of references (score/input_plan.py), in their order. An input that
        cannot be read gets a row with only `error` set (on_error skip), or stops the job."""
        from .input_plan import load_refs

        x, errors = load_refs(refs, self.session.info, self._readers, self.limits)
        return self.score_loaded(x, refs["index"], refs["id"], errors)

    def score_loaded(self, x, index, ids, errors: Optional[Dict[int, str]] = None) -> "pa.Table":
        """Rows for inputs already read: `x` holds the inputs of `index` / `ids` not in
        `errors` ({position: message}), in order."""
        errors = errors or {}
        if errors and self.options.on_error == "stop":
            raise InputError(errors[min(errors)])
        index, ids = np.asarray(index, np.int64), np.asarray(ids, dtype=object)
        good = np.setdiff1d(np.arange(len(index)), list(errors), assume_unique=True)
        pieces = []
        if len(good):
            table = self._columns(self._predict(x), index[good], ids[good])
            pieces.append(table)
        if errors:
            bad = np.array(sorted(errors))
            pieces.append(self._error_rows(index[bad], ids[bad], [errors[i] for i in bad]))
        table = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
        return table.take(np.argsort(table.column("index").to_numpy(), kind="stable")) if errors else table

    def close(self) -> None:
        self._readers.close()

    def _predict(self, x):
        o = self.options
        masks = "shared" if o.mask_seed is not None else "independent"
        passes = dict(passes=o.passes) if o.auto is None else dict(passes="auto", min_passes=o.auto[0],
                                                                    max_passes=o.auto[1])
        predicted = self.session.predict(x, masks=masks, mask_seed=o.mask_seed, top_k=1,
                                         keep_samples=o.keep_samples, uncertain_if=o.uncertain_if, **passes)
        return predicted[self.model_output.name] if isinstance(predicted, dict) else predicted

    def _probe(self):
        """A one-row Prediction of this head, labels and calibration, for the schema."""
        from ..runtime.measures import single_pass_outputs
        from ..runtime.prediction import Prediction

        output = self.model_output
        shape = [d or 1 for d in output.shape[1:]]
        samples = np.full((self.options.passes, 1, *shape), 1 / max(1, int(np.prod(shape))), np.float32)
        if output.head == "binary":
            samples[:] = 0.5
        conformal = (output.calibration or {}).get("conformal")
        probe = Prediction.from_samples(samples, output.head, labels=output.labels, top_k=1,
                                        keep_samples=self.options.keep_samples, rule=None,
                                        conformal=conformal)
        for measure in single_pass_outputs(output).values():  # what the graph adds: one float per input
            probe.measures[measure] = np.zeros(1, np.float32)
        probe.rule = self.rule
        return probe

    def _columns(self, prediction, index=None, ids=None) -> "pa.Table":
        n = len(prediction)
        index = np.zeros(n, np.int64) if index is None else index
        ids = [""] * n if ids is None else list(ids)
        labels, confidence = prediction.decided()
        columns = {"index": pa.array(index, pa.int64()), "id": pa.array(ids, pa.string()),
                   "label": pa.array(labels, pa.string()),
                   "confidence": pa.array(confidence, pa.float32(), from_pandas=True),
                   "mean": _lists(prediction.mean), "variance": _lists(prediction.variance)}
        for name in self.measures:
            value = np.asarray(prediction.measures[name], np.float32)
            columns[name] = pa.array(value, pa.float32()) if value.ndim == 1 else _lists(value)
        columns["uncertain"] = pa.array(prediction.uncertain, pa.bool_())
        if "prediction_set" in prediction.measures:
            chosen = prediction.measures["prediction_set"]
            columns["prediction_set"] = pa.array([np.flatnonzero(row).astype(np.int32) for row in chosen],
                                                 pa.list_(pa.int32()))
        seed = self.options.mask_seed
        columns["mask_seed"] = pa.array([seed] * n, pa.uint64())
        columns["passes"] = pa.array(prediction.input_passes.astype(np.int32), pa.int32())  # per input: auto varies
        columns["error"] = pa.nulls(n, pa.string())
        if self.options.keep_samples:
            samples = np.moveaxis(prediction.samples.reshape(prediction.passes, n, -1), 1, 0)  # [n, T, out]
            columns["samples"] = pa.ListArray.from_arrays(
                np.arange(0, (n + 1) * prediction.passes, prediction.passes, dtype=np.int32),
                _lists(samples.reshape(n * prediction.passes, -1)))
        # Monte Carlo standard errors, after every other column (docs/DESIGN.md: Monte Carlo
        # standard errors): of the confidence, mean, variance and each measure written.
        columns["confidence_se"] = pa.array(prediction.decided_standard_error(), pa.float32(), from_pandas=True)
        columns["mean_se"] = _lists(prediction.standard_errors["mean"])
        columns["variance_se"] = _lists(prediction.standard_errors["variance"])
        errors = prediction.measure_errors()
        for name in (name for name in self.measures if name in errors):  # single-pass scores have none
            value = np.asarray(errors[name], np.float32)
            columns[f"{name}_se"] = pa.array(value, pa.float32()) if value.ndim == 1 else _lists(value)
        return pa.table(columns).replace_schema_metadata({METADATA_KEY: self._metadata()})

    def _error_rows(self, index, ids, messages) -> "pa.Table":
        n = len(index)
        columns = {field.name: pa.nulls(n, field.type) for field in self.schema}
        columns.update(index=pa.array(index, pa.int64()), id=pa.array(list(ids), pa.string()),
                       mask_seed=pa.array([self.options.mask_seed] * n, pa.uint64()),
                       passes=pa.array(np.full(n, self.options.passes, np.int32)),
                       error=pa.array(messages, pa.string()))
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _metadata(self) -> bytes:
        output = self.model_output
        return json.dumps({"model": os.path.basename(self.session.path), "output": output.name, "head": output.head,
                           "labels": output.labels, "passes": self.options.passes,
                           "passes_auto": None if self.options.auto is None else list(self.options.auto),
                           "masks": "shared" if self.options.mask_seed is not None else "independent",
                           "mask_seed": self.options.mask_seed, "measures": list(self.measures),
                           "uncertain_rule": str(self.rule)}).encode()


def _lists(matrix) -> "pa.ListArray":
    """float32 rows -> a list<float32> column (each row flattened)."""
    matrix = np.asarray(matrix, np.float32)
    n = len(matrix)
    flat = matrix.reshape(n, -1)
    width = flat.shape[1]
    return pa.ListArray.from_arrays(np.arange(0, (n + 1) * width, width, dtype=np.int32),
                                    pa.array(flat.reshape(-1), pa.float32()))


def run_job(engine: str, session, plan, out, options: ScoreOptions, model, *, batch_size: int = 256,
            workers: Optional[int] = None, gpus_per_worker: float = 0, resume: bool = False,
            address: Optional[str] = None, overwrite: bool = False, progress=None):
    """Score `plan` into `out` on the local engine (`session`, every core) or with Ray Data actors
    (each with `session`'s settings); the ScoreSummary. progress(done, total): local engine only."""
    if engine == "local":
        from .local import score_local

        return score_local(session, plan, out, options, batch_size=batch_size, resume=resume, limits=session.limits,
                           progress=progress, overwrite=overwrite)
    from .ray_engine import score_with_ray

    return score_with_ray(plan, out, model, options, batch_size=batch_size, workers=workers, num_gpus=gpus_per_worker,
                          resume=resume, address=address, settings=session.settings, overwrite=overwrite)


def summary_line(summary, engine: str) -> str:
    """What `cli.py score` prints when a job is done."""
    from ..runtime.safe_files import shown_path

    masks = f"masks shared (seed {summary.mask_seed})" if summary.mask_seed is not None else "masks independent"
    resumed = f", {summary.rows - summary.scored} were done before" if summary.scored < summary.rows else ""
    return (f"scored {summary.scored} inputs{resumed} ({summary.failed} could not be read) into "
            f"{shown_path(summary.out)}  engine {engine}  passes {summary.passes}  {masks}")
