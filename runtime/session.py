"""MCSession: load an mcdrop ONNX file once, then run Monte Carlo predictions on it."""

import contextlib
import os
import queue
import re
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from concurrent.futures import wait as wait_for
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from . import decision, litert_engine, openvino_engine, portable_masks, providers, tensor_bounds
from .format import integrity, mask_sets, seeds
from .errors import DeviceError, InputError, ModelFileError, ModelRunError, first_line
from .files import read_regular
from .limits import DEFAULT, Limits, usable_cores
from .format.metadata import ModelInfo
from .format.onnx_file import ModelFile, read_model
from .format.rules import MASKS_FROM_FORMAT, METADATA_KEY
from .prediction import Prediction

SAMPLES = "samples"
FLOAT_BYTES = 4
# A run's resident memory is more than its activations: onnxruntime's arena holds freed blocks
# and rounds its growth. Measured on the shipped CNN, runs of 12 to 211 MiB of activations
# (activation_floats_per_sample) peaked at 2.04x to 2.51x that, so runs are planned at 2.5x.
ARENA_GROWTH = 2.5
# The samples a predict returns ([T, B, outputs] float32) are held too: per-chunk pieces, their
# concatenation and the float64 temporaries of the measures come to about 8 copies (measured: the
# measures of a softmax head peak at 6x the samples' bytes).
SAMPLE_COPIES = 8
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
# onnxruntime's CPU random kernels draw on one thread and lock their generator, so one session draws
# masks on one core however many threads it has (two runs of one session side by side take as long
# as one after the other). Separate single-threaded sessions ("workers"), each with its own seeds,
# draw on every core: shipped CNN, T=50, batch 32, 2 cores: 1.42 s in one session, 0.96 s in two.
# Each worker holds its own copy of the weights and kernel buffers: 13.9 MiB for the 6.6 MiB
# shipped CNN after one small run, and with 2x the file counted a T=1000, batch 256 predict grew
# 266 MiB for a 256 MiB bound, so 3x is counted. The copies come out of max_chunk_bytes and take
# at most a quarter of it; a model too big for that runs in the main session alone.
SESSION_COPY = 3
WEIGHTS_SHARE = 4
# Handing runs to workers costs about 0.3 ms a predict: below about 0.5M activation floats the
# main session is faster (2 cores, shipped MLP: T=100, batch 1, 0.15M floats: 1.5 ms in the main
# session, 2.1 ms with workers; T=10, batch 32, 0.5M: 3.9 and 3.5 ms). Workers also cost their
# creation (about 20 ms each for the shipped CNN) and memory, which a one-off predict does not win
# back (`cli.py infer` on one image: 0.52 s and 134 MB in the main session, 0.58 s and 167 MB with
# workers). So a predict of PARALLEL_MIN_FLOATS activation floats or more goes to the workers once
# the session has made such a predict before, or at once from PARALLEL_AT_ONCE_FLOATS (about 0.3 s
# of work for the shipped CNN).
PARALLEL_MIN_FLOATS = 2**19
PARALLEL_AT_ONCE_FLOATS = 2**24
# Seeds come from one spread of this many streams (runtime/seeds.py): the main session takes
# stream 0 and worker i stream i, so the main session's masks do not depend on the core count.
SEED_STREAMS = 64
# A large predict on the main session gives its arena back afterwards: the workers that take the
# next large predicts are given the whole bound (without it: 313-317 MiB for a 256 MiB bound
# when a 15-pass predict on the main session came before a 50-pass one on the workers).
SHRINK_MAIN_ARENA = ("memory.enable_memory_arena_shrinkage", "cpu:0")
# Shared mask sets (runtime/masks.py) are the default: they score faster, and an input's result
# then depends on (input, mask seed, passes) alone; docs/DESIGN.md: Mask sets.
DEFAULT_MASKS = "shared"
# A shared set is kept between predicts while it takes at most this share of max_chunk_bytes
# (the shipped CNN's set at T=50 is 17.5 MB, 87,616 floats a pass); a larger one is drawn per run, for that run's passes.
MASK_SET_SHARE = 4
# A run holds its slice of the set about 3 times: the feed, each layer's part of it, the masks.
MASK_COPIES = 3
# A stopped run (Ctrl-C, SIGTERM) is told to end (RunOptions.terminate, which onnxruntime checks
# between nodes and between a Loop's iterations); the stop waits this long for it, then goes on.
STOP_GRACE_S = 1.0
# Each session's CPU allocations come from an arena of its own capped at tensor_mb plus
# ARENA_GROWTH x max_chunk_bytes (what a planned run peaks at), so that a tensor the checks before
# the run could not see (tensor_bounds.py stops at operators it does not follow) is refused by
# onnxruntime itself instead of taking the machine's memory. The weights are kept outside it.
USE_ENV_ARENA = ("session.use_env_allocators", "1")
WEIGHTS_OUTSIDE_ARENA = ("session.use_device_allocator_for_initializers", "1")
# onnxruntime's refusal when the arena is full ("... Available memory of A is smaller than
# requested bytes of R") and the node it ran ("... while running Expand node. Name:'big'").
ARENA_FULL = re.compile(r"requested bytes of (\d+)")
FAILED_NODE = re.compile(r"while running (\w+) node\. Name:'([^']*)'")
# onnxruntime's Gather refusing an index ("... idx=12 must be within the inclusive range [-10,9]").
INDEX_OUTSIDE = re.compile(r"idx=(-?\d+) must be within the inclusive range \[-?\d+,(-?\d+)\]")
# Distinct feed shapes whose tensor bounds a session remembers as checked (each check: 1-3 ms).
CHECKED_FEEDS_KEPT = 1024
# Where onnxruntime looks for external data of a model loaded from bytes (else: the working folder).
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


class RawPixelWarning(UserWarning):
    """The input looks like 0-255 pixels, but the model expects them scaled."""


class MCSession:
    """An mcdrop ONNX file loaded for Monte Carlo prediction, with fresh dropout seeds.

    A main onnxruntime session with `threads` threads runs small predicts, run_raw and everything
    on CUDA. On the CPU provider, large predicts are split into runs shared by `threads`
    single-threaded sessions (workers), each with its own seeds, so that random masks are drawn
    on every core; they are created when first needed (see PARALLEL_MIN_FLOATS).

    Masks (runtime/masks.py): "shared" (the default where the file takes a mask set) scores
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
    metadata and graph must match the contract (docs/FORMAT.md), all before any run. Every
    failure is a McdropError.
    """

    def __init__(self, path, device: str = "auto", seed: Optional[int] = None,
                 threads: Optional[int] = None, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
                 session_factory: Optional[Callable] = None, limits: Limits = DEFAULT,
                 verify: bool = True, allow_external_data: bool = False):
        self.path = str(path)
        self.limits = limits
        if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, (int, np.integer)) \
                or max_chunk_bytes < 1:
            raise InputError(f"max_chunk_bytes must be a positive integer, got {max_chunk_bytes!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise InputError(f"threads must be an integer >= 0 (0: every core), got {threads!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed < mask_sets.MAX_SEED):  # the seed is the mask seed too
            raise InputError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
        if threads:
            limits.check("threads", threads, f"threads {threads} (this machine lets the process use "
                         f"{usable_cores()} cores)")
        self.max_chunk_bytes = int(max_chunk_bytes)
        self.threads = threads or usable_cores()
        model_bytes = read_regular(self.path, limits.model_bytes, ModelFileError, "model file", "model_mb")
        if litert_engine.wants(self.path):  # LiteRT engine (runtime/litert_engine.py): a portable .tflite file
            if device not in ("auto", "cpu"):
                raise InputError(f"{self.path}: a .tflite file runs on LiteRT's CPU kernels; device {device!r} "
                                 "is for ONNX files")
            self._parsed, self._external_folder = None, None
        else:
            self._parsed, self._external_folder = _checked_file(model_bytes, self.path, verify, allow_external_data,
                                                                limits)
        self._arena_bytes = limits.tensor_bytes + int(ARENA_GROWTH * self.max_chunk_bytes)
        self._checked_feeds: set = set()  # feed shapes (and small values) whose tensors are bounded
        # {input: vocabulary size} of the inputs that hold token ids (an Embedding's table rows)
        self._vocabularies = tensor_bounds.vocabularies(self._parsed.graph) if self._parsed else {}
        self._session_bytes = SESSION_COPY * len(model_bytes)
        self._max_workers = min(self.threads, SEED_STREAMS - 1,
                                max_chunk_bytes // WEIGHTS_SHARE // self._session_bytes)
        if self._max_workers < 2:
            self._max_workers = 0  # one single-threaded worker would only be slower than the main session
        # One spread of seeds for all workers (see runtime/seeds.py), drawn from fresh entropy
        # when no seed is given.
        self._entropy = np.random.SeedSequence(seed).entropy
        # 53 bits: a seed that survives JSON in every language.
        self._mask_seed = int(seed) if seed is not None else int(np.random.default_rng(self._entropy).integers(2**53))
        self._mask_cache: Optional[Tuple[int, np.ndarray]] = None  # (seed, the set's first passes)
        self._factory = session_factory
        self._session, self._info = self._create_session(model_bytes, 0, device, self.threads)
        self._samples = tuple(output.prefix + SAMPLES for output in self._info.model_outputs)
        if self.provider != providers.CPU or self._info.portable is not None:
            self._max_workers = 0  # the GPU draws in parallel inside one session; a portable file draws nothing
        # The bytes stay for the workers, created on the first predict that wants them.
        self._model_bytes = model_bytes if self._max_workers else None
        self._workers: List = []
        self._executors: List[ThreadPoolExecutor] = []
        self._parallel_predicts = 0
        self._lock = threading.Lock()
        self._run_count = 0

    def _create_session(self, model_bytes: bytes, stream: int, device: str,
                        threads: int) -> Tuple["ort.InferenceSession", ModelInfo]:
        """A session and what its file says; its seeds are stream `stream` of the session's seed
        (0: the main session, 1 and on: the workers)."""
        if self._parsed is None:  # LiteRT engine: a portable file, no seed to rewrite
            session = litert_engine.create_session(model_bytes, self.path, threads)
            text = litert_engine.read_metadata(model_bytes, self.path)  # once LiteRT has verified the flatbuffer
            info = ModelInfo.from_session(session, self.path, text, self.limits)
            if info.portable is None:
                raise ModelFileError(f"{self.path}: a .tflite mcdrop file is a portable file; its metadata has no "
                                     "'portable' entry")
            return session, info
        model_bytes, _ = seeds.rewrite_seeds(model_bytes, self._entropy, stream, SEED_STREAMS, self._parsed)
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
                    session = providers.create_session(model_bytes, device, options, self._factory)
        except Exception as err:
            if not _load_failure(err):
                raise
            if stream:  # the file loaded already, for the main session
                raise DeviceError(f"{self.path}: could not start worker session {stream} "
                                  f"({first_line(err)}); use threads=1") from None
            raise _load_error(err, self.path) from None
        return session, _model_info(session, self._parsed, self.path, self.limits)

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
        return DEFAULT_MASKS if self._info.mask_layout is not None else "independent"

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

    def predict(self, x, passes: Optional[int] = None, dropout: bool = True, threshold: Optional[float] = None,
                thresholds: Optional[Sequence[float]] = None, top_k: int = 3,
                keep_samples: bool = True,
                progress: Optional[Callable[[int, int], None]] = None,
                uncertain_if: Optional[str] = None, masks: Optional[str] = None,
                mask_seed: Optional[int] = None):
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
        overrides the rule; without either, the default rule (runtime/decision.py).

        masks: "shared" or "independent" (default: default_masks); mask_seed: the shared set's seed
        (default: the session's mask_seed).
        """
        x = self._check_inputs(x)
        batch = len(next(iter(x.values())))
        passes = self._check_passes(passes)
        asked_seed = mask_seed
        mode, mask_seed = self._check_masks(masks, mask_seed)
        passes, stochastic = (passes, True) if dropout else (1, False)
        shared = mode == "shared" and dropout
        rules = [decision.Rule.parse(uncertain_if, output.head) if uncertain_if is not None
                 else decision.file_rule(output.calibration, output.head) for output in self._info.model_outputs]
        # --- portable profile (runtime/portable_masks.py): runs of the file's fixed shape ---
        portable = None
        if self._info.portable is not None:
            portable_masks.check_predict(self._info, self.path, mode, asked_seed, passes)
            mask_seed = portable_masks.mask_seed_of(self._info, mask_seed)
            rows_per_run = max(rows.stop - rows.start for rows, _ in self._plan(batch, self._info.default_passes, True)[0])
            portable = portable_masks.run_samples(
                self._info, lambda rows, kept: self._run(rows, passes, stochastic, masks=kept), x, passes, stochastic,
                mask_seed, list(self._samples), progress, rows_per_run)
        # --- end of the portable profile ---
        else:
            plan, workers = self._plan(batch, passes, shared)
            big = self._big(batch, passes)
            if big:
                with self._lock:
                    self._parallel_predicts += 1
            mask_rows = self._mask_rows(mask_seed, passes) if shared else None
            pieces = self._run_plan(x, plan, workers, stochastic, progress, shrink=big and not workers,
                                    mask_rows=mask_rows)
        predictions = {}
        for output, name, rule in zip(self._info.model_outputs, self._samples, rules):
            calibration = output.calibration or {}
            fitted = calibration.get("thresholds") if threshold is None and thresholds is None else None
            conformal = calibration.get("conformal")
            samples = portable[name] if portable is not None else _assemble([piece[name] for piece in pieces], plan)
            if not np.isfinite(samples).all():  # a broken or hostile file; no measure means anything then
                raise ModelRunError(f"{self.path}: the model gave {np.count_nonzero(~np.isfinite(samples))} NaN "
                                    "or infinite outputs for finite inputs")
            predictions[output.name] = Prediction.from_samples(
                samples, output.head, labels=output.labels, threshold=0.5 if threshold is None else threshold,
                thresholds=fitted or thresholds, top_k=top_k, passes=passes, stochastic=stochastic,
                provider=self.provider, keep_samples=keep_samples, rule=rule,
                conformal_quantile=conformal["quantile"] if conformal else None,
                masks=mode if dropout else None, mask_seed=mask_seed if shared else None)
        return next(iter(predictions.values())) if len(predictions) == 1 else predictions

    def _run_plan(self, x, plan, workers: int, stochastic, progress, shrink=False,
                  mask_rows=None) -> List[Dict[str, np.ndarray]]:
        """The samples of every run of the plan ({output's samples name: array}), in plan order. Run i goes to worker i mod W, and
        each worker takes its runs in order, so a seeded session repeats its results. workers=0:
        the main session, which gives its arena back after the last run if `shrink`.
        mask_rows(first pass, count): the shared set's rows for a run; None: independent masks."""
        starts = _pass_starts(plan)

        def masks_of(i):
            return mask_rows(starts[i], plan[i][1]) if mask_rows else None

        if workers == 0:
            out = []
            for done, (rows, count) in enumerate(plan, 1):
                out.append(self._run(_rows(x, rows), count, stochastic, shrink=shrink and done == len(plan),
                                     masks=masks_of(done - 1)))
                if progress:
                    progress(done, len(plan))
            return out
        workers = self._workers_for(workers)

        in_flight = _InFlight()

        def run(i, rows, count, worker):  # on the worker's thread: a set drawn per run is drawn there too
            return self._run(_rows(x, rows), count, stochastic, None, worker, masks=masks_of(i), in_flight=in_flight)

        futures = [self._executors[i % len(workers)].submit(run, i, rows, count, workers[i % len(workers)])
                   for i, (rows, count) in enumerate(plan)]
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
        return [future.result() for future in futures]

    def run_raw(self, x, passes: Optional[int] = None, stochastic: bool = True,
                masks: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Every graph output of one run, unchunked (for checking the graph itself). masks: a
        portable file's own uint8 keep masks [T, floats_per_pass] (default: the session's mask seed's)."""
        x, passes = self._check_inputs(x), self._check_passes(passes)
        if self._info.portable is not None:  # portable profile: its fixed T and batch, masks checked
            portable_masks.check_raw(self._info, x, passes, masks)
        elif masks is not None:
            raise InputError("run_raw takes masks for portable files only; predict(masks='shared') feeds a set")
        return self._run(x, passes, bool(stochastic), (), masks=masks)

    def self_check(self, x=None) -> list:
        """Check on this device that the file's randomness is live (runs and passes differ, the
        deterministic pass repeats); raise ValidationError otherwise. Returns the passed checks."""
        from .validate import Checklist, check_live_randomness, sample_inputs, side_by_side

        checks = Checklist()
        if self._info.portable is not None:  # portable profile: masks from mask seeds (runtime/portable_masks.py)
            x = x if x is not None else {i.name: sample_inputs(i.shape, self._info.metadata.get("preprocessing"), seed=n)
                                         for n, i in enumerate(self._info.model_inputs)}
            portable_masks.self_check(checks, self._info, lambda rows, kept, on: self._run(rows, 0, on, masks=kept),
                                      self._check_inputs(x), self._mask_seed, list(self._samples))
            return checks.passed
        checks.check("random nodes", True, f"{len(self._info.stochastic_layers)} seeded random nodes, as the metadata "
                     "lists", "")  # reached only when __init__'s check_seeds passed
        if self._info.stochastic_layers:
            if x is None:
                x = {i.name: sample_inputs(i.shape, self._info.metadata.get("preprocessing"), seed=n)
                     for n, i in enumerate(self._info.model_inputs)}
            check_live_randomness(checks, lambda x, t, on: side_by_side(self._run(self._check_inputs(x), t, on),
                                                                        self._samples), x)
        return checks.passed

    def chunk_plan(self, batch: int, passes: int, masks: Optional[str] = None) -> List[Tuple[slice, int]]:
        """The runs predict makes: (rows of the batch, passes); see _plan."""
        mode, _ = self._check_masks(masks, None)
        return self._plan(batch, passes, mode == "shared")[0]

    def _check_masks(self, masks, mask_seed) -> Tuple[str, int]:
        """(mode, mask seed) of a predict, or an InputError."""
        mode = self.default_masks if masks is None else mask_sets.check_mode(masks)
        if mode == "shared" and self._info.mask_layout is None:
            why = (f"it was exported before mask sets (format {self._info.format}); export it again"
                   if self._info.format < MASKS_FROM_FORMAT else "its noise shapes depend on the input size")
            raise InputError(f"{self.path} cannot take a shared mask set: {why}; use masks='independent'")
        if mask_seed is not None and mode != "shared":
            raise InputError("mask_seed is for masks='shared'")
        return mode, self._mask_seed if mask_seed is None else mask_sets.check_seed(mask_seed)

    def _mask_rows(self, seed: int, passes: int) -> Callable[[int, int], np.ndarray]:
        """rows(first, count) of the set `seed`: slices of one set kept between predicts where it
        fits MASK_SET_SHARE, else drawn per run. Pass t depends on (seed, t) alone, so a set drawn
        for more passes holds the one for fewer."""
        layout = self._info.mask_layout
        if not self._keeps_mask_set(passes):
            return lambda first, count: mask_sets.draw(layout, seed, first, count)
        with self._lock:
            cached = self._mask_cache
        if cached is None or cached[0] != seed or len(cached[1]) < passes:
            cached = (seed, mask_sets.draw(layout, seed, 0, passes))
            with self._lock:
                self._mask_cache = cached
        whole = cached[1]
        return lambda first, count: whole[first:first + count]

    def _keeps_mask_set(self, passes: int) -> bool:
        """Whether a shared set of `passes` passes is kept between predicts (MASK_SET_SHARE)."""
        return passes * self._info.mask_layout.bytes_per_pass <= self.max_chunk_bytes // MASK_SET_SHARE

    def _plan(self, batch: int, passes: int, shared: bool = False) -> Tuple[List[Tuple[slice, int]], int]:
        """(The runs predict makes, the workers that share them). A run is (rows of the batch,
        passes), within max_chunk_bytes less what the returned samples and their measures take,
        shared by the runs in flight at once.

        A run over `rows` inputs and `p` passes holds rows x once_floats_per_input activations of
        the layers that run once and rows x p x activation_floats_per_sample of the repeated part.
        Runs keep all the passes of their rows where one row's passes fit, so the layers before the
        first stochastic layer run once per input (splitting passes first recomputed them in every
        pass: batch 10,000 at T=50 took 21,750 runs of 1 pass); only an input whose passes do not
        fit alone has its passes split. A shared mask set adds p x MASK_COPIES rows of the set to a
        run of p passes, and the set itself where it is kept. At least 1 pass of 1 row per run. Chunks differ by one row
        or pass at most: runs of alternating sizes fragment onnxruntime's arena, which then grows past the bound (seen: 423 MiB for 256 with
        runs of 228 and 28 rows). A predict with work for several workers gives each of them the
        same number of runs, where the passes and rows allow.
        """
        scale = FLOAT_BYTES * ARENA_GROWTH
        per_sample = int(max(1, self._info.activation_floats_per_sample) * scale)
        per_input = int(self._info.once_floats_per_input * scale)
        outputs = sum(int(np.prod([d or 1 for d in output.shape[1:]])) for output in self._info.model_outputs)
        samples = SAMPLE_COPIES * passes * batch * outputs * FLOAT_BYTES
        # The samples are the result and cannot be chunked away: they take at most half the bound,
        # else runs would shrink to one row and one pass (10,000 inputs x 100 passes: 1M runs).
        budget = max(self.max_chunk_bytes - samples, self.max_chunk_bytes // 2)
        per_pass_masks = MASK_COPIES * self._info.mask_layout.bytes_per_pass if shared else 0
        if shared and self._keeps_mask_set(passes):
            budget -= passes * self._info.mask_layout.bytes_per_pass
        floats = passes * batch * self._info.activation_floats_per_sample
        workers = self._max_workers if self._big(batch, passes) and (
            self._workers or self._parallel_predicts or floats >= PARALLEL_AT_ONCE_FLOATS) else 0
        budget = (budget - workers * self._session_bytes) // max(1, workers)  # runs in flight at once
        rows_fit = (budget - passes * per_pass_masks) // (per_input + passes * per_sample)
        if rows_fit >= 1:
            row_parts, pass_parts = -(-batch // min(batch, rows_fit)), 1
        else:
            row_parts = batch
            pass_parts = -(-passes // min(passes, max(1, (budget - per_input) // (per_sample + per_pass_masks))))
        # Every worker gets the same number of runs: split the rows further, then the passes.
        while workers and (row_parts * pass_parts) % workers and row_parts < batch:
            row_parts += 1
        while workers and (row_parts * pass_parts) % workers and pass_parts < passes:
            pass_parts += 1
        plan, start = [], 0
        for size in _even_sizes(batch, row_parts):
            plan += [(slice(start, start + size), count) for count in _even_sizes(passes, pass_parts)]
            start += size
        return plan, (workers if len(plan) >= workers else 0)  # too few runs to share: the main session

    def _big(self, batch: int, passes: int) -> bool:
        """Whether a predict is big enough for the workers (once they pay off, see PARALLEL_*)."""
        floats = passes * batch * self._info.activation_floats_per_sample
        return bool(self._max_workers) and floats >= PARALLEL_MIN_FLOATS

    def _run(self, x: Dict[str, np.ndarray], passes: int, stochastic: bool,
             outputs: Optional[Sequence[str]] = None, session=None, shrink=False,
             masks: Optional[np.ndarray] = None, in_flight: Optional["_InFlight"] = None) -> Dict[str, np.ndarray]:
        """One onnxruntime run; outputs: None for every output's samples, () for every graph output.
        masks: the shared set's rows for these passes; None: independent masks. in_flight: where
        a run on a worker's thread registers while it runs (see _stoppable_run)."""
        session = session or self._session
        layout = self._info.mask_layout
        feed = {**x, **mask_sets.control_feeds(passes, stochastic, masks, layout.floats_per_pass if layout else 0)}
        if self._info.portable is not None:  # portable profile: no passes input, uint8 keep masks
            feed = portable_masks.feeds(self._info, x, stochastic, self._portable_masks(masks))
        elif self._info.format < MASKS_FROM_FORMAT:
            del feed[mask_sets.MASKS]  # files from before mask sets have no such input
        names = list(self._samples if outputs is None else outputs) or [arg.name for arg in session.get_outputs()]
        # A failing kernel would also print its error straight to fd 2; the exception carries it.
        options = ort.RunOptions()
        options.log_severity_level = providers.QUIET_LOG_LEVEL
        if shrink:
            options.add_run_config_entry(*SHRINK_MAIN_ARENA)
        self._check_tensors(feed)
        try:
            result = self._stoppable_run(session, names, feed, options, in_flight)
        except Exception as err:
            if _from_onnxruntime(err) or isinstance(err, MemoryError):
                raise self._run_error(err) from None
            raise
        with self._lock:
            self._run_count += 1
        return dict(zip(names, result))

    def _portable_masks(self, masks: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """A portable file's keep masks for one run: the caller's, checked, or the session's mask seed's
        (None for a baked file)."""
        portable, layout = self._info.portable, self._info.mask_layout
        if portable["baked"] is not None:
            return None  # stored in the file
        if masks is None:
            return portable_masks.keep_masks(layout, [layer.rate for layer in self._info.stochastic_layers],
                                             self._mask_seed, 0, portable["passes"])
        return portable_masks.check_masks_feed(masks, portable["passes"], layout.floats_per_pass)

    def _check_tensors(self, feed: Dict[str, np.ndarray]) -> None:
        """InputError if a tensor this feed's shapes (and small values: passes) imply is over
        the tensor_mb limit (runtime/tensor_bounds.py); once per distinct feed shape."""
        # Only small integer feeds (passes, token ids) are read as values by the walk: float data in
        # the key would make every small tabular input a new entry.
        key = tuple((name, value.shape, value.tobytes() if value.size <= 16 and value.dtype.kind in "iub" else None)
                    for name, value in sorted(feed.items()))
        with self._lock:
            if key in self._checked_feeds or self._parsed is None:  # LiteRT: fixed shapes but the batch
                return
        tensor_bounds.check(self._parsed.graph, self.limits, self.path, feed)
        with self._lock:
            if len(self._checked_feeds) >= CHECKED_FEEDS_KEPT:  # a long-lived session: bounded memory
                self._checked_feeds.clear()
            self._checked_feeds.add(key)

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

    def _stoppable_run(self, session, names, feed, options: "ort.RunOptions", in_flight: Optional["_InFlight"]):
        """session.run, the one call into onnxruntime's runs, made so that Ctrl-C and SIGTERM end it.

        Python runs signal handlers in the main thread only, and only between bytecodes: a main
        thread inside session.run would take the signal when the run ends (a 1e12-iteration Loop:
        never). So the main thread's runs go to a helper thread while the main thread waits; the
        KeyboardInterrupt or SystemExit the signal raises there tells the run to terminate and goes
        on up. Runs on other threads (the workers) register in `in_flight`, which _run_plan stops."""
        if threading.current_thread() is not threading.main_thread():
            with in_flight.running(options) if in_flight else contextlib.nullcontext():
                return session.run(names, feed, options)
        future = _runner().submit(session.run, names, feed, options)
        try:
            return future.result()
        except BaseException:
            if not future.done():  # stopped while onnxruntime runs
                options.terminate = True
                wait_for([future], STOP_GRACE_S)
            raise

    def _check_passes(self, passes) -> int:
        if passes is None:
            return self.default_passes
        if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1:
            raise InputError(f"passes must be an integer >= 1, got {passes!r}")
        self.limits.check("passes", passes, f"passes {passes:,}")
        return int(passes)

    def _check_inputs(self, x) -> Dict[str, np.ndarray]:
        """x as {graph input name: float32 [batch, *shape]}, one batch size for all, or an
        InputError saying what is wrong. x: an array (one-input model), a dict by input name, or a
        list or tuple in input order."""
        names = self._info.input_names
        if isinstance(x, dict):
            unknown = sorted(map(str, set(x) - set(names)))
            missing = [name for name in names if name not in x]
            if unknown or missing:
                raise InputError(f"the model's inputs are {', '.join(names)}; "
                                 + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"))
            arrays = {name: self._check_array(x[name], name) for name in names}
        elif len(names) > 1:
            if not isinstance(x, (list, tuple)) or len(x) != len(names):
                raise InputError(f"the model takes {len(names)} inputs ({', '.join(names)}): pass a dict by name")
            arrays = {name: self._check_array(value, name) for name, value in zip(names, x)}
        else:
            arrays = {names[0]: self._check_array(x, names[0])}
        sizes = {name: len(value) for name, value in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise InputError("inputs differ in batch size: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        return arrays

    def _check_token_ids(self, x: np.ndarray, name: str) -> None:
        """InputError naming the first id outside [0, vocabulary) of an input that holds token ids
        (the graph casts them to integers, so 3.7 is id 3)."""
        size = self._vocabularies[name]
        ids = np.trunc(x)
        outside = (ids < 0) | (ids >= size)
        if outside.any():
            where = tuple(int(i) for i in np.argwhere(outside)[0])
            raise InputError(f"input {name!r} holds {np.count_nonzero(outside)} token ids outside the model's vocabulary of "
                             f"{size:,} (ids 0 to {size - 1:,}), the first {ids[where]:g} at {list(where)}")

    def _check_array(self, x, name: str) -> np.ndarray:
        """One input as float32 [batch, *its shape]."""
        what = "input" if len(self._info.model_inputs) == 1 else f"input {name!r}"
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as err:  # ragged nested lists
            raise InputError(f"{what} is not an array ({first_line(err)})") from None
        if x.dtype.kind not in "fiu":
            raise InputError(f"{what} must be real numbers, got dtype {x.dtype}")
        problem = self._info.shape_problem(x.shape, name)
        if problem:
            raise InputError(f"{what} has {problem}")
        if x.shape[0] == 0:
            raise InputError(f"{what} batch is empty")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise InputError(f"{what} has {np.count_nonzero(~np.isfinite(x))} NaN or infinite values")
        if name in self._vocabularies:
            self._check_token_ids(x, name)
        pre = self._info.preprocessing
        if pre is not None and abs(pre.scale * 255 - 1) < 1e-3 and not pre.normalizes and x.max() > 1.5:
            warnings.warn("input looks like raw 0-255 pixels but the model expects [0,1] (scale 1/255)",
                          RawPixelWarning, stacklevel=4)
        return x


class _InFlight:
    """The runs a predict's workers are making, so that leaving the predict early ends them all,
    including those that start after the stop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._runs: set = set()
        self._stopped = False

    @contextlib.contextmanager
    def running(self, options: "ort.RunOptions"):
        with self._lock:
            if self._stopped:
                options.terminate = True
            self._runs.add(options)
        try:
            yield
        finally:
            with self._lock:
                self._runs.discard(options)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for options in self._runs:
                options.terminate = True


class _Runner:
    """One daemon thread that makes the main thread's onnxruntime runs, one at a time, so that
    the main thread stays free to take signals. A daemon thread: a run that does not end within
    STOP_GRACE_S of its stop (one long kernel) does not hold up the process's exit."""

    def __init__(self):
        self.pid = os.getpid()
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="mcdrop-run", daemon=True).start()

    def _serve(self):
        while True:
            call, args, future = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(*args))
                except BaseException as err:
                    future.set_exception(err)

    def submit(self, call, *args) -> Future:
        future: Future = Future()
        self._jobs.put((call, args, future))
        return future


_RUNNER: Optional[_Runner] = None
_RUNNER_LOCK = threading.Lock()


def _runner() -> _Runner:
    global _RUNNER
    with _RUNNER_LOCK:
        if _RUNNER is None or _RUNNER.pid != os.getpid():  # a forked child has no thread of its own
            _RUNNER = _Runner()
        return _RUNNER


def _rows(x: Dict[str, np.ndarray], rows: slice) -> Dict[str, np.ndarray]:
    return {name: value[rows] for name, value in x.items()}


def _pass_starts(plan) -> List[int]:
    """The first pass of each run: the passes of one row range are split in order."""
    starts, done = [], {}
    for rows, count in plan:
        key = (rows.start, rows.stop)
        starts.append(done.get(key, 0))
        done[key] = starts[-1] + count
    return starts


def _even_sizes(total: int, parts: int) -> List[int]:
    """total split into `parts` sizes that differ by one at most, the larger first."""
    size, larger = divmod(total, parts)
    return [size + 1] * larger + [size] * (parts - larger)


def _assemble(pieces: List[np.ndarray], plan) -> np.ndarray:
    """The runs' samples, in plan order, as one [T, B, ...] array. The pieces go as they are
    copied, so that the measures computed next share memory with the samples alone."""
    pieces.reverse()
    by_batch = [np.concatenate([pieces.pop() for _ in counts], axis=0) for _, counts in _group_by_rows(plan)]
    return np.concatenate(by_batch, axis=1)


def _group_by_rows(plan):
    """[(rows, passes), ...] -> [(rows, [passes, ...]), ...] keeping the order."""
    grouped: List[Tuple[slice, List[int]]] = []
    for rows, passes in plan:
        if grouped and grouped[-1][0] == rows:
            grouped[-1][1].append(passes)
        else:
            grouped.append((rows, [passes]))
    return grouped


def check_model_bytes(model_bytes: bytes, path: str, limits: Limits = DEFAULT) -> ModelInfo:
    """What MCSession checks before the first run (checksum, self-contained data, metadata, the
    graph's contract, random nodes and seeds), on bytes not yet written: the exporter runs it on
    every file, --no-validate or not, so that nothing the runtime would refuse is ever written."""
    parsed, _ = _checked_file(model_bytes, path, verify=True, allow_external_data=False, limits=limits)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = providers.create_session(model_bytes, "cpu", options)
    except Exception as err:
        if not _load_failure(err):
            raise
        raise _load_error(err, path) from None
    return _model_info(session, parsed, path, limits)


def _checked_file(model_bytes: bytes, path: str, verify: bool, allow_external_data: bool,
                  limits: Limits) -> Tuple[ModelFile, Optional[str]]:
    """(the parsed file, the folder of its external data or None), once its checksum (if
    `verify`), its data's whereabouts and the tensors its fixed shapes imply (before onnxruntime
    folds or allocates them) are checked."""
    parsed = read_model(model_bytes, path)
    if verify:
        integrity.verify(model_bytes, parsed, path)
    folder = _external_data_folder(parsed, path, allow_external_data)
    tensor_bounds.check(parsed.graph, limits, path)
    return parsed, folder


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


def _model_info(session, parsed: ModelFile, path: str, limits: Limits) -> ModelInfo:
    """What the file says, checked against the session's graph and its random nodes' seeds."""
    info = ModelInfo.from_session(session, path, parsed.metadata.get(METADATA_KEY), limits)
    if info.portable is not None:  # portable profile: its masks are fed, no node may draw
        if parsed.random_nodes:
            raise ModelFileError(f"{path}: a portable file holds random node {parsed.random_nodes[0].name!r}; "
                                 "convert the standard file again")
        return info
    seeds.check_seeds(parsed, info.stochastic_layers, path)
    return info


def _load_failure(err: BaseException) -> bool:
    """onnxruntime refusing or failing to hold the file: the file's problem, not a bug. A
    UnicodeDecodeError is onnxruntime's refusal too: its message quoted a name from the file
    that is not UTF-8, and pybind11 could not turn it into text (tests/test_fuzz.py found one)."""
    return _from_onnxruntime(err) or isinstance(err, (MemoryError, OverflowError, UnicodeDecodeError))


def _load_error(err: BaseException, path: str) -> ModelFileError:
    reason = "a name in the file is not UTF-8" if isinstance(err, UnicodeDecodeError) else first_line(err)
    return ModelFileError(f"{path}: onnxruntime cannot load it ({reason})")


def _from_onnxruntime(err: BaseException) -> bool:
    """onnxruntime's Python errors (Fail, InvalidArgument, RuntimeException, ...) live in its
    pybind module; a RuntimeError it raises for allocation failures does too."""
    return type(err).__module__.startswith("onnxruntime")


def _external_data_folder(parsed: ModelFile, path: str, allowed: bool) -> Optional[str]:
    """None for a self-contained file. External data is refused unless allowed, and then read only
    from the model's own folder: onnxruntime would otherwise resolve it against the working
    folder of whoever runs the model."""
    if not parsed.external_data:
        return None
    tensor, location = parsed.external_data[0]
    if not allowed:
        raise ModelFileError(f"{path}: tensor {tensor!r} keeps its data in another file ({location!r}); "
                             "mcdrop files are self-contained, so this is refused (pass "
                             "--allow-external-data to read it from the model's own folder)")
    folder = os.path.dirname(os.path.realpath(path))
    for tensor, location in parsed.external_data:
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.isabs(location) or os.path.commonpath([folder, target]) != folder:
            raise ModelFileError(f"{path}: tensor {tensor!r} points outside the model's folder "
                                 f"({location!r}); refused")
        if not os.path.isfile(target):
            raise ModelFileError(f"{path}: tensor {tensor!r}: external data {location!r} is not a "
                                 "regular file in the model's folder")
    return folder


