"""MCSession: load an mcdrop ONNX file once, then run Monte Carlo predictions on it.

Around it: runtime/settings.py (how it loads and runs), runtime/load_checks.py (the trust checks
on load), runtime/feed_checks.py (the input checks), runtime/run_plan.py (passes, masks and
mask_seed), runtime/chunk_plan.py (runs within the memory bound, and the workers that share
them), runtime/stoppable_runs.py (runs that Ctrl-C ends). Figures: docs/DESIGN.md: Session internals.
"""

import contextlib
import dataclasses
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import wait as wait_for
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from . import adaptive_passes, analytic, litert_engine, openvino_engine, portable_masks, providers, run_plan, tensor_bounds
from .chunk_plan import ARENA_GROWTH, SEED_STREAMS, ChunkPlanner, assemble, default_max_chunk_bytes, pass_starts, run_order
from .errors import DeviceError, InputError, ModelFileError, ModelRunError, first_line
from .feed_checks import FeedChecks
from .format import graph_outputs, mask_sets, seeds
from .format.metadata import ModelInfo
from .format.rules import MASKS_FROM_FORMAT
from .measures import add_single_pass_scores
from .mask_rows import MaskSets, PlanMasks
from .load_checks import checked_file, from_onnxruntime, load_error, load_failure, model_info
from .safe_files import read_regular
from .prediction import Prediction
from .run_plan import RunPlan, rows_of
from .settings import SessionSettings
from .stoppable_runs import STOP_GRACE_S, InFlight, stoppable_run
from .uncertain_rule import Rule, file_rule

SAMPLES = "samples"
# A large predict on the main session gives its arena back afterwards, so that the workers that
# take the next large predicts are given the whole bound (DESIGN.md: Session internals).
SHRINK_MAIN_ARENA = ("memory.enable_memory_arena_shrinkage", "cpu:0")
# Each session's CPU allocations come from an arena of its own capped at tensor_mb plus ARENA_GROWTH x
# max_chunk_bytes (a planned run's peak; the CPU's bound under CUDA, whose runs are on the GPU), so that
# a tensor the checks before the run could not see (tensor_bounds.py stops at operators it does not
# follow) is refused by onnxruntime itself instead of taking the machine's memory. Weights are outside it.
USE_ENV_ARENA = ("session.use_env_allocators", "1")
WEIGHTS_OUTSIDE_ARENA = ("session.use_device_allocator_for_initializers", "1")
# onnxruntime's refusal when the arena is full ("... Available memory of A is smaller than
# requested bytes of R") and the node it ran ("... while running Expand node. Name:'big'").
ARENA_FULL = re.compile(r"requested bytes of (\d+)")
FAILED_NODE = re.compile(r"while running (\w+) node\. Name:'([^']*)'")
# onnxruntime's Gather refusing an index ("... idx=12 must be within the inclusive range [-10,9]").
INDEX_OUTSIDE = re.compile(r"idx=(-?\d+) must be within the inclusive range \[-?\d+,(-?\d+)\]")
# Where onnxruntime looks for external data of a model loaded from bytes (else: the working folder).
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


class MCSession:
    """An mcdrop ONNX file loaded for Monte Carlo prediction, with fresh dropout seeds.

    MCSession(path, settings=SessionSettings(...)), or the settings' fields as keywords
    (MCSession(path, seed=0, threads=2)); runtime/settings.py says what each is.

    A main onnxruntime session with `threads` threads runs small predicts, run_raw and everything
    on CUDA. On the CPU provider, large predicts are split into runs shared by `threads`
    single-threaded sessions (workers), each with its own seeds, so that random masks are drawn
    on every core; they are created when first needed (runtime/chunk_plan.py).

    Masks (runtime/format/mask_sets.py): "shared" (the default where the file takes a mask set) scores
    every input with one set of T sampled networks drawn from the mask seed, so a result depends
    on the input, the mask seed and the passes alone, in any batch, chunking, thread count, worker
    or machine; "independent" draws new masks for every input of every pass inside onnxruntime,
    as Keras does.

    seed=None: new seeds per session (a random mask seed, new random node seeds), so two sessions
    never replay the same masks. An integer seed is the session's mask seed, and in independent
    mode it reproduces the same results for the same sequence of calls with the same chunking
    and workers (max_chunk_bytes, threads), in any process; independent calls within one session
    always differ.
    predict() and run_raw() may be called from several threads at once.

    The file is untrusted until checked: it must be a regular file within limits.model_mb, carry
    the exporter's integrity checksum (verify=False skips that), keep all its data inside
    (allow_external_data=True reads external data from the model's own folder only), and its
    metadata and graph must match the contract (docs/FORMAT.md), all before any run
    (runtime/load_checks.py). Every failure is a McdropError.
    """

    def __init__(self, path, settings: Optional[SessionSettings] = None, **fields):
        if settings is not None and fields:
            raise TypeError("give MCSession either settings or its fields as keywords, not both")
        settings = SessionSettings(**fields) if settings is None else settings
        self.path = str(path)
        self.settings = settings
        self.limits = limits = settings.limits
        self.threads = settings.cores
        model_bytes = read_regular(self.path, limits.model_bytes, ModelFileError, "model file", "model_mb")
        if litert_engine.wants(self.path):  # LiteRT engine (runtime/litert_engine.py): a portable .tflite file
            if settings.device not in ("auto", "cpu"):
                raise InputError(f"{self.path}: a .tflite file runs on LiteRT's CPU kernels; device "
                                 f"{settings.device!r} is for ONNX files")
            self._parsed, self._external_folder = None, None
        else:
            self._parsed, self._external_folder = checked_file(model_bytes, self.path, settings.verify,
                                                               settings.allow_external_data, limits)
        host_bound = settings.max_chunk_bytes or default_max_chunk_bytes(providers.CPU)  # the CPU's, also on CUDA
        self._arena_bytes = limits.tensor_bytes + int(ARENA_GROWTH * host_bound)
        # One spread of seeds for all workers (see runtime/format/seeds.py), drawn from fresh entropy
        # when no seed is given.
        self._entropy = np.random.SeedSequence(settings.seed).entropy
        self._mask_seed = settings.seed if settings.seed is not None else \
            int(np.random.default_rng(self._entropy).integers(2**53))  # 53 bits: a seed JSON keeps in every language
        self._round_cost = adaptive_passes.RoundCost()  # what passes="auto" runs cost here
        self._session, self._info = self._create_session(model_bytes, 0, settings.device, self.threads)
        self.max_chunk_bytes = settings.max_chunk_bytes or default_max_chunk_bytes(self.provider)
        self._feeds = FeedChecks(self._info, self._parsed, limits, self.path)
        self._checked_feeds = self._feeds.checked
        self._samples = tuple(output.prefix + SAMPLES for output in self._info.model_outputs)
        # The GPU draws in parallel inside one session; a portable file draws nothing.
        self._planner = ChunkPlanner(self._info, self.max_chunk_bytes, self.threads, len(model_bytes), host_bound,
                                     workers_allowed=self.provider == providers.CPU and self._info.portable is None)
        self._mask_sets = MaskSets(self._info, self._planner)
        # The bytes stay for the workers and the analytic mode's session, each created on first need.
        self._model_bytes = model_bytes if self._planner.max_workers or "analytic" in self._info.metadata else None
        self._workers: List = []
        self._analytic_session = None  # runtime/analytic.py: the moment graph alone
        self._executors: List[ThreadPoolExecutor] = []
        self._parallel_predicts = 0
        self._lock = threading.Lock()
        self._run_count = 0

    def _create_session(self, model_bytes: bytes, stream: int, device: str, threads: int,
                        outputs: Sequence[str] = ()) -> Tuple["ort.InferenceSession", Optional[ModelInfo]]:
        """A session and what its file says; its seeds are stream `stream` of the session's seed (0: the main
        session, 1 and on: the workers). outputs: the graph cut to these (format/graph_outputs.py), no ModelInfo."""
        if self._parsed is None:  # LiteRT engine: a portable file, no seed to rewrite
            session = litert_engine.create_session(model_bytes, self.path, threads)
            text = litert_engine.read_metadata(model_bytes, self.path)  # once LiteRT has verified the flatbuffer
            info = ModelInfo.from_session(session, self.path, text, self.limits)
            if info.portable is None:
                raise ModelFileError(f"{self.path}: a .tflite mcdrop file is a portable file; its metadata has no "
                                     "'portable' entry")
            return session, info
        model_bytes, _ = seeds.rewrite_seeds(model_bytes, self._entropy, stream, SEED_STREAMS, self._parsed)
        model_bytes = graph_outputs.keep_outputs(model_bytes, outputs) if outputs else model_bytes
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        if self._external_folder:
            options.add_session_config_entry(EXTERNAL_DATA_FOLDER, self._external_folder)
        try:
            if openvino_engine.wants(device):  # OpenVINO engine (runtime/openvino_engine.py)
                session = openvino_engine.create_session(model_bytes, device, self.path, threads)
            else:
                with _capped_arena(options, self._arena_bytes):
                    session = providers.create_session(model_bytes, device, options, self.settings.session_factory)
        except Exception as err:
            if not load_failure(err):
                raise
            if stream:  # the file loaded already, for the main session
                raise DeviceError(f"{self.path}: could not start worker session {stream} "
                                  f"({first_line(err)}); use threads=1") from None
            raise load_error(err, self.path) from None
        return session, None if outputs else model_info(session, self._parsed, self.path, self.limits)

    def _workers_for(self, wanted: int) -> List:
        """The first `wanted` workers, created (with their threads) on first need."""
        with self._lock:
            while len(self._workers) < wanted:
                worker, _ = self._create_session(self._model_bytes, len(self._workers) + 1, "cpu", 1)
                self._workers.append(worker)
                self._executors.append(ThreadPoolExecutor(1, thread_name_prefix="mcdrop-worker"))
            return self._workers[:wanted]

    # What the file says, and where it runs.
    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def provider(self) -> str:
        return self._session.get_providers()[0]

    @property
    def head(self) -> str:
        return self._info.head

    @property
    def labels(self) -> Optional[List[str]]:
        return self._info.labels

    @property
    def default_passes(self) -> int:
        return self._info.default_passes

    @property
    def mask_seed(self) -> int:
        """The shared mask set's seed when predict is not given one."""
        return self._mask_seed

    @property
    def default_masks(self) -> str:
        """"shared" where the file takes a mask set, else "independent"."""
        return run_plan.default_masks(self._info)

    @property
    def run_count(self) -> int:
        """onnxruntime runs made by this session so far (a predict may take several)."""
        with self._lock:
            return self._run_count

    @property
    def input_names(self) -> List[str]:
        return self._info.input_names

    @property
    def output_names(self) -> List[str]:
        return [output.name for output in self._info.model_outputs]

    def resolve(self, passes=None, masks: Optional[str] = None, mask_seed: Optional[int] = None,
                dropout: bool = True, flags: bool = False, **auto) -> RunPlan:
        """The passes, masks and mask seed a predict with these arguments runs, checked, with
        None taking the default: the file's passes, default_masks, this session's mask_seed;
        auto: max_passes, min_passes (passes="auto"), method. flags=True: errors name the flags."""
        return run_plan.resolve(self._info, self.path, self.limits, self._mask_seed, passes, masks, mask_seed,
                                dropout, run_plan.FLAGS if flags else run_plan.ARGUMENTS, **auto)

    def predict(self, x, passes: Optional[int] = None, dropout: bool = True, threshold: Optional[float] = None,
                thresholds: Optional[Sequence[float]] = None, top_k: int = 3, keep_samples: bool = True,
                progress: Optional[Callable[[int, int], None]] = None, uncertain_if: Optional[str] = None, masks: Optional[str] = None,
                mask_seed: Optional[int] = None, max_passes: Optional[int] = None, min_passes: Optional[int] = None,
                method: str = "mc"):
        """Monte Carlo prediction for the batch `x` (already preprocessed, batch first): an array
        for a one-input model, else a dict by input name (a list in input order also works).

        Returns a Prediction, or for a model with several outputs a dict of them by output name,
        each with its own head, labels and measures (threshold, thresholds and top_k apply to
        each). passes defaults to the exported default; dropout=False gives the deterministic
        pass. The work is split into runs of at most max_chunk_bytes of activations; the result
        does not depend on the split other than through the random stream. progress(done, total)
        is called after each run.

        What a calibrated file carries (docs/FORMAT.md: Calibration) is used: its UNCERTAIN rule,
        its per-label thresholds (unless threshold or thresholds is given) and its conformal
        prediction sets. uncertain_if ("mutual_information > 0.05 or confidence < 0.7", "never")
        overrides the rule; without either, the default rule (runtime/uncertain_rule.py).

        masks: "shared" or "independent" (default: default_masks); mask_seed: the shared set's seed
        (default: the session's mask_seed). See resolve. passes="auto", method="analytic": runtime/*.py.
        """
        x = self._feeds.inputs(x)
        batch = len(next(iter(x.values())))
        asked_seed, chosen = mask_seed, self.resolve(passes, masks, mask_seed, dropout, max_passes=max_passes,
                                                               min_passes=min_passes, method=method)
        rules = [Rule.parse(uncertain_if, output.head) if uncertain_if is not None
                 else file_rule(output.calibration, output.head) for output in self._info.model_outputs]
        if chosen.method != "mc":
            return self._with_single_pass_scores(x, batch, analytic.predict(self, x, rules, top_k))

        def predictions_of(samples_of, keep=keep_samples, settling=False):  # settling: passes="auto"'s checks
            predictions = {}
            for output, name, rule in zip(self._info.model_outputs, self._samples, rules):
                fitted, conformal = ((output.calibration or {}).get(key) for key in ("thresholds", "conformal"))
                fitted = fitted if threshold is None and thresholds is None else None
                samples = samples_of(name)
                if not np.isfinite(samples).all():  # a broken or hostile file; no measure means anything then
                    raise ModelRunError(f"{self.path}: the model gave {np.count_nonzero(~np.isfinite(samples))} "
                                        "NaN or infinite outputs for finite inputs")
                predictions[output.name] = Prediction.from_samples(
                    samples, output.head, labels=output.labels, threshold=0.5 if threshold is None else threshold,
                    thresholds=fitted or thresholds, top_k=top_k, stochastic=chosen.stochastic,
                    provider=self.provider, keep_samples=keep, rule=rule, conformal=None if settling else conformal,
                    errors=adaptive_passes.errors_needed(output.head, rule) if settling else None,
                    masks=chosen.masks, mask_seed=chosen.mask_seed)
            return predictions

        if chosen.auto is not None:
            return self._with_single_pass_scores(x, batch, self._predict_auto(x, batch, chosen, predictions_of, progress))
        portable, passes = None, chosen.passes
        if self._info.portable is not None:  # runs of the file's fixed shape (runtime/portable_masks.py)
            portable_masks.check_predict(self._info, self.path, chosen.masks or "shared", asked_seed, passes)
            mask_seed = portable_masks.mask_seed_of(self._info, chosen.mask_seed if chosen.mask_seed is not None
                                                    else self._mask_seed)
            rows_per_run = max(rows.stop - rows.start for rows, _ in self._plan(batch, self._info.default_passes, True)[0])
            portable = portable_masks.run_samples(
                self._info, lambda rows, kept: self._run(rows, passes, chosen.stochastic, masks=kept), x, passes,
                chosen.stochastic, mask_seed, list(self._samples), progress, rows_per_run)
            if chosen.shared:  # a baked file's own seed
                chosen = dataclasses.replace(chosen, mask_seed=mask_seed)
        else:
            plan, workers = self._plan(batch, passes, chosen.shared)
            big = self._planner.big(batch, passes)
            if big:
                with self._lock:
                    self._parallel_predicts += 1
            mask_rows = self._mask_sets.rows(chosen.mask_seed, passes) if chosen.shared else None
            pieces = self._run_plan(x, plan, workers, chosen.stochastic, progress, shrink=big and not workers,
                                    mask_rows=mask_rows)
        return self._with_single_pass_scores(x, batch, predictions_of(
            lambda name: portable[name] if portable is not None else assemble([piece[name] for piece in pieces], plan)))

    def _with_single_pass_scores(self, x, batch: int, predictions: dict):
        """A calibrated file's single-pass scores from one deterministic pass (runtime/measures.py)."""
        def deterministic(names):  # on a worker if any: the main session's threads spin after a run, slowing
            session = self._workers[0] if self._workers else None  # the workers' next runs (DESIGN.md: Session internals)
            runs = [self._run(rows_of(x, rows), 1, False, names, session) for rows, _ in self._plan(batch, 1, False)[0]]
            return {name: np.concatenate([run[name] for run in runs]) for name in names}

        if self._info.portable is None:
            add_single_pass_scores(predictions, self._info.model_outputs, deterministic)
        return next(iter(predictions.values())) if len(predictions) == 1 else predictions

    def _predict_auto(self, x, batch: int, chosen: RunPlan, predictions_of, progress):
        """passes="auto": rounds of the shared set until each input settles (runtime/adaptive_passes.py)."""
        mask_rows = self._mask_sets.rows(chosen.mask_seed, chosen.passes)
        def run(inputs, first, count):
            plan, workers = self._plan(len(inputs), count, True)
            pieces = self._run_plan({name: value[inputs] for name, value in x.items()}, plan, workers, True, None,
                                    mask_rows=lambda start, n: mask_rows(first + start, n))
            return {name: assemble([piece[name] for piece in pieces], plan) for name in self._samples}

        return adaptive_passes.predict(run, batch, chosen.auto, predictions_of, progress, self._round_cost)

    def _run_plan(self, x, plan, workers: int, stochastic, progress, shrink=False,
                  mask_rows=None) -> List[Dict[str, np.ndarray]]:
        """The samples of every run of the plan ({output's samples name: array}), in plan order.
        workers=0: the main session, which gives its arena back after the last run if `shrink`.
        mask_rows(first pass, count): the shared set's rows for a run. None: independent masks, whose
        run i goes to worker i mod W, each worker taking its runs in order, so a seeded session
        repeats its results. With a shared set a run's samples do not depend on who makes it or
        when: the runs are taken in chunk_plan.run_order by whichever worker is free, so the runs in
        flight are over one or two ranges of passes, each fetched once (mask_rows.PlanMasks)."""
        starts = pass_starts(plan)
        shared = mask_rows is not None
        order = run_order(plan) if shared else list(range(len(plan)))
        masks_of = PlanMasks(mask_rows, [(starts[i], count) for i, (_, count) in enumerate(plan)]) if shared \
            else (lambda i: None)
        if workers == 0:
            out = [None] * len(plan)
            for done, i in enumerate(order, 1):
                rows, count = plan[i]
                out[i] = self._run(rows_of(x, rows), count, stochastic, shrink=shrink and done == len(plan),
                                   masks=masks_of(i))
                if progress:
                    progress(done, len(plan))
            return out
        workers = self._workers_for(workers)

        in_flight = InFlight()
        taken, take = iter(order), threading.Lock()

        def run(i, worker):  # on the worker's thread: a range drawn for its runs is drawn there too
            if shared:  # the next run in run_order, not the one this task was submitted for
                with take:
                    i = next(taken)
            rows, count = plan[i]
            return i, self._run(rows_of(x, rows), count, stochastic, None, worker, masks=masks_of(i), in_flight=in_flight)

        futures = [self._executors[n % len(workers)].submit(run, i, workers[n % len(workers)])
                   for n, i in enumerate(order)]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                future.result()  # the first failure stops the predict
                if progress:
                    progress(done, len(plan))
        finally:
            for future in futures:
                future.cancel()
            if not all(future.done() for future in futures):  # leaving early: a failure, or a stop
                in_flight.stop()
                wait_for(futures, STOP_GRACE_S)
        out = [None] * len(plan)
        for future in futures:
            i, found = future.result()
            out[i] = found
        return out

    def run_raw(self, x, passes: Optional[int] = None, stochastic: bool = True,
                masks: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Every graph output of one run, unchunked (for checking the graph itself). masks: a
        portable file's own uint8 keep masks [T, floats_per_pass] (default: the session's mask seed's)."""
        x, passes = self._feeds.inputs(x), self.resolve(passes).passes
        if self._info.portable is not None:  # portable profile: its fixed T and batch, masks checked
            portable_masks.check_raw(self._info, x, passes, masks)
        elif masks is not None:
            raise InputError("run_raw takes masks for portable files only; predict(masks='shared') feeds a set")
        return self._run(x, passes, bool(stochastic), (), masks=masks)

    def self_check(self, x=None) -> list:
        """Check on this device that the file's randomness is live (runs and passes differ, the
        deterministic pass repeats); raise ValidationError otherwise. Returns the passed checks."""
        from .randomness_checks import Checklist, check_live_randomness, sample_inputs, side_by_side

        checks = Checklist()
        if x is None:
            x = {i.name: sample_inputs(i.shape, self._info.metadata.get("preprocessing"), seed=n)
                 for n, i in enumerate(self._info.model_inputs)}
        if self._info.portable is not None:  # portable profile: masks from mask seeds (runtime/portable_masks.py)
            portable_masks.self_check(checks, self._info, lambda rows, kept, on: self._run(rows, 0, on, masks=kept),
                                      self._feeds.inputs(x), self._mask_seed, list(self._samples))
            return checks.passed
        checks.check("random nodes", True, f"{len(self._info.stochastic_layers)} seeded random nodes, as the metadata "
                     "lists", "")  # reached only when __init__'s check_seeds passed
        if self._info.stochastic_layers:
            check_live_randomness(checks, lambda x, t, on: side_by_side(self._run(self._feeds.inputs(x), t, on),
                                                                        self._samples), x)
        return checks.passed

    def chunk_plan(self, batch: int, passes: int, masks: Optional[str] = None) -> List[Tuple[slice, int]]:
        """The runs predict makes: (rows of the batch, passes); see runtime/chunk_plan.py."""
        return self._plan(batch, passes, self.resolve(None, masks).shared)[0]

    def _plan(self, batch: int, passes: int, shared: bool):
        return self._planner.plan(batch, passes, shared, warm=bool(self._workers or self._parallel_predicts))

    def _run(self, x: Dict[str, np.ndarray], passes: int, stochastic: bool,
             outputs: Optional[Sequence[str]] = None, session=None, shrink=False,
             masks: Optional[np.ndarray] = None, in_flight: Optional[InFlight] = None) -> Dict[str, np.ndarray]:
        """One onnxruntime run; outputs: None for every output's samples, () for every graph output.
        masks: the shared set's rows for these passes; None: independent masks. in_flight: where
        a run on a worker's thread registers while it runs (runtime/stoppable_runs.py)."""
        session = session or self._session
        layout = self._info.mask_layout
        feed = {**x, **mask_sets.control_feeds(passes, stochastic, masks, layout.floats_per_pass if layout else 0)}
        if self._info.portable is not None:  # portable profile: no passes input, uint8 keep masks
            feed = portable_masks.feeds(self._info, x, stochastic, portable_masks.masks_for_run(self._info, masks, self._mask_seed))
        elif self._info.format < MASKS_FROM_FORMAT:
            del feed[mask_sets.MASKS]  # files from before mask sets have no such input
        names = list(self._samples if outputs is None else outputs) or [arg.name for arg in session.get_outputs()]
        # A failing kernel would also print its error straight to fd 2; the exception carries it.
        options = ort.RunOptions()
        options.log_severity_level = providers.QUIET_LOG_LEVEL
        if shrink:
            options.add_run_config_entry(*SHRINK_MAIN_ARENA)
        self._feeds.tensors(feed)
        try:
            result = stoppable_run(session, names, feed, options, in_flight)
        except Exception as err:
            if from_onnxruntime(err) or isinstance(err, MemoryError):
                raise self._run_error(err) from None
            raise
        with self._lock:
            self._run_count += 1
        return dict(zip(names, result))

    def _run_error(self, err: BaseException) -> ModelRunError:
        """onnxruntime's failure as one line; an index outside a table names the input it comes
        from, an allocation over the arena's cap the node that asked and how to raise it."""
        text = str(err)
        asked, node, index = ARENA_FULL.search(text), FAILED_NODE.search(text), INDEX_OUTSIDE.search(text)
        where = f" in node {node.group(2) or node.group(1)!r} ({node.group(1)})" if node else ""
        if index:  # ids that reach the table through arithmetic, or a table of unknown size
            rows = int(index.group(2)) + 1
            # (an unnamed node could be any of the unnamed Gathers)
            sources = tensor_bounds.index_sources(self._parsed.graph).get(node.group(2), []) \
                if node and node.group(2) else []
            if sources:
                named = ("input " if len(sources) == 1 else "inputs ") + ", ".join(repr(name) for name in sources)
                return ModelRunError(f"{self.path}: {named} {'holds' if len(sources) == 1 else 'hold'} a token id "
                                     f"outside the model's vocabulary of {rows:,} (ids 0 to {rows - 1:,}): "
                                     f"onnxruntime got {index.group(1)}{where}")
            return ModelRunError(f"{self.path}: an index{where} is outside its table of {rows:,} rows "
                                 f"(got {index.group(1)}): a token id outside the model's vocabulary?")
        if asked:
            return ModelRunError(
                f"{self.path}: a run asked onnxruntime for {int(asked.group(1)) / 2**20:,.0f} MiB{where}, over the "
                f"{self._arena_bytes / 2**20:,.0f} MiB a session may hold (tensor_mb {self.limits.tensor_mb:g} + "
                f"{ARENA_GROWTH} x the run bound); raise it with --limit tensor_mb=N if you trust this file")
        return ModelRunError(f"{self.path}: onnxruntime failed to run the model ({first_line(err)})")


_ARENA_LOCK = threading.Lock()
_registered_arena: Optional[int] = None  # the cap of the CPU arena last registered with onnxruntime


@contextlib.contextmanager
def _capped_arena(options: "ort.SessionOptions", cap: int):
    """Create the session inside this block to give its CPU allocations an arena of their own
    capped at `cap` bytes (ARENA_FULL when a run asks for more).

    onnxruntime takes such a cap for the CPU from an arena registered for the process, which each
    session takes when it is created, and a later registration replaces for the sessions created
    after it (onnxruntime 1.31): so the registration and the session's creation are made under one
    lock. Where onnxruntime refuses a second registration (older releases), a session that wants
    another cap than the first keeps onnxruntime's own, uncapped, arena."""
    global _registered_arena
    with _ARENA_LOCK:
        if _registered_arena != cap:
            try:
                ort.create_and_register_allocator(
                    ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT),
                    ort.OrtArenaCfg({"max_mem": cap}))
                _registered_arena = cap
            except Exception:  # noqa: BLE001 (onnxruntime keeps an arena registered before)
                pass
        if _registered_arena == cap:
            options.add_session_config_entry(*USE_ENV_ARENA)
            options.add_session_config_entry(*WEIGHTS_OUTSIDE_ARENA)
        yield
