"""MCSession: load an mcdrop ONNX file once, then run Monte Carlo predictions on it."""

import threading
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from runtime import providers, seeds
from runtime.errors import InputError, ModelFileError, first_line
from runtime.metadata import ModelInfo
from runtime.prediction import Prediction

INPUT, PASSES, STOCHASTIC, SAMPLES = "input", "passes", "stochastic", "samples"
FLOAT_BYTES = 4
# onnxruntime's CPU arena grows by doubling, so after the first runs it holds up to twice what one
# run needs (measured on the shipped CNN: 520 MiB for runs planned at 250 MiB). Plan each run at
# half the bound so the process stays within it.
ARENA_GROWTH = 2
# The samples a predict returns ([T, B, outputs] float32) are held too: per-chunk pieces, their
# concatenation and the float64 temporaries of the measures come to about 8 copies (measured: the
# measures of a softmax head peak at 6x the samples' bytes).
SAMPLE_COPIES = 8
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20


class RawPixelWarning(UserWarning):
    """The input looks like 0-255 pixels, but the model expects them scaled."""


class MCSession:
    """One onnxruntime session with fresh dropout seeds.

    seed=None: new seeds per session, so two sessions never replay the same masks. An integer
    seed reproduces the same results for the same sequence of calls with the same chunking
    (max_chunk_bytes), in any process. Calls within one session always differ.
    predict() and run_raw() may be called from several threads at once.
    """

    def __init__(self, path, device: str = "auto", seed: Optional[int] = None,
                 threads: Optional[int] = None, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
                 session_factory: Optional[Callable] = None):
        self.path = str(path)
        if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, (int, np.integer)) \
                or max_chunk_bytes < 1:
            raise InputError(f"max_chunk_bytes must be a positive integer, got {max_chunk_bytes!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise InputError(f"threads must be an integer >= 0 (0: onnxruntime decides), got {threads!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InputError(f"seed must be an integer >= 0, got {seed!r}")
        self.max_chunk_bytes = int(max_chunk_bytes)
        model_bytes, old_seeds = seeds.rewrite_seeds(_read_model(self.path), seed)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = providers.create_session(model_bytes, device, options, session_factory)
        except Exception as err:
            if type(err).__module__.startswith("onnxruntime"):
                raise ModelFileError(f"{self.path}: not an ONNX file ({first_line(err)})") from None
            raise
        self._info = ModelInfo.from_session(self._session, self.path)
        seeds.check_seeds(old_seeds, [layer.seed for layer in self._info.stochastic_layers], self.path)
        self._lock = threading.Lock()
        self._run_count = 0

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
    def run_count(self) -> int:
        """onnxruntime runs made by this session so far (a predict may take several)."""
        with self._lock:
            return self._run_count

    def predict(self, x, passes: Optional[int] = None, dropout: bool = True, threshold: float = 0.5,
                thresholds: Optional[Sequence[float]] = None, top_k: int = 3,
                keep_samples: bool = True,
                progress: Optional[Callable[[int, int], None]] = None) -> Prediction:
        """Monte Carlo prediction for the batch `x` (already preprocessed, batch first).

        passes defaults to the exported default; dropout=False gives the deterministic pass.
        The work is split into runs of at most max_chunk_bytes of activations; the result does not
        depend on the split other than through the random stream. progress(done, total) is called
        after each run.
        """
        x = self._check_input(x)
        passes = self._check_passes(passes)
        passes, stochastic = (passes, True) if dropout else (1, False)
        plan = self.chunk_plan(len(x), passes)
        by_batch: List[np.ndarray] = []
        done = 0
        for rows, chunk_passes in _group_by_rows(plan):
            per_pass = []
            for count in chunk_passes:
                per_pass.append(self._run(x[rows], count, stochastic)[SAMPLES])
                done += 1
                if progress:
                    progress(done, len(plan))
            by_batch.append(np.concatenate(per_pass, axis=0))
        samples = np.concatenate(by_batch, axis=1)
        return Prediction.from_samples(
            samples, self.head, labels=self.labels, threshold=threshold, thresholds=thresholds,
            top_k=top_k, passes=passes, stochastic=stochastic, provider=self.provider,
            keep_samples=keep_samples)

    def run_raw(self, x, passes: Optional[int] = None, stochastic: bool = True) -> Dict[str, np.ndarray]:
        """Every graph output of one run, unchunked (for checking the graph itself)."""
        return self._run(self._check_input(x), self._check_passes(passes), bool(stochastic), None)

    def self_check(self, x=None) -> list:
        """Check on this device that the file's randomness is live (runs and passes differ, the
        deterministic pass repeats); raise ValidationError otherwise. Returns the passed checks."""
        from runtime.validate import Checklist, check_live_randomness, sample_inputs

        checks = Checklist()
        checks.check("random nodes", True, f"{len(self._info.stochastic_layers)} seeded random nodes, as the metadata "
                     "lists", "")  # reached only when __init__'s check_seeds passed
        if self._info.stochastic_layers:
            if x is None:
                x = sample_inputs(self._info.input_shape, self._info.metadata.get("preprocessing"))
            check_live_randomness(checks, lambda x, t, on: self._run(self._check_input(x), t, on)[SAMPLES], x)
        return checks.passed

    def chunk_plan(self, batch: int, passes: int) -> List[Tuple[slice, int]]:
        """The runs predict makes: (rows of the batch, passes), each within max_chunk_bytes less
        what the returned samples and their measures take.

        A run over `rows` inputs and `p` passes holds rows x once_floats_per_input activations of
        the layers that run once and rows x p x activation_floats_per_sample of the repeated part.
        Split the batch only when one pass over all of it is too big, then the passes; at least 1
        pass of 1 row per run. Chunks are as equal as the counts allow: runs of alternating sizes
        fragment onnxruntime's arena, which then grows past the bound (seen: 423 MiB for 256 with
        runs of 228 and 28 rows).
        """
        scale = FLOAT_BYTES * ARENA_GROWTH
        per_sample = max(1, self._info.activation_floats_per_sample) * scale
        per_input = self._info.once_floats_per_input * scale
        outputs = int(np.prod([d or 1 for d in self._info.output_shape[1:]]))
        samples = SAMPLE_COPIES * passes * batch * outputs * FLOAT_BYTES
        # The samples are the result and cannot be chunked away: they take at most half the bound,
        # else runs would shrink to one row and one pass (10,000 inputs x 100 passes: 1M runs).
        budget = max(self.max_chunk_bytes - samples, self.max_chunk_bytes // 2)
        rows = _even_split(batch, min(batch, max(1, budget // (per_input + per_sample))))
        passes_per_run = _even_split(passes, min(passes, max(1, (budget - rows * per_input) // (rows * per_sample))))
        return [(slice(start, min(start + rows, batch)), min(passes_per_run, passes - done))
                for start in range(0, batch, rows)
                for done in range(0, passes, passes_per_run)]

    def _run(self, x: np.ndarray, passes: int, stochastic: bool,
             outputs: Optional[List[str]] = (SAMPLES,)) -> Dict[str, np.ndarray]:
        feed = {INPUT: x, PASSES: np.array(passes, dtype=np.int64),
                STOCHASTIC: np.array(stochastic, dtype=np.bool_)}
        names = list(outputs) if outputs else [arg.name for arg in self._session.get_outputs()]
        result = self._session.run(names, feed)
        with self._lock:
            self._run_count += 1
        return dict(zip(names, result))

    def _check_passes(self, passes) -> int:
        if passes is None:
            return self.default_passes
        if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1:
            raise InputError(f"passes must be an integer >= 1, got {passes!r}")
        return int(passes)

    def _check_input(self, x) -> np.ndarray:
        """x as float32 [batch, *input shape], or an InputError saying what is wrong."""
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as err:  # ragged nested lists
            raise InputError(f"input is not an array ({first_line(err)})") from None
        if x.dtype.kind not in "fiu":
            raise InputError(f"input must be real numbers, got dtype {x.dtype}")
        expected = self._info.input_shape
        shown = "[batch, " + ", ".join(str(d) for d in expected[1:]) + "]"
        if tuple(x.shape) == tuple(expected[1:]):
            raise InputError(f"input has shape {list(x.shape)}, one example without the batch axis; "
                             f"the model expects {shown}: add one (x[None])")
        if x.ndim != len(expected) or any(d is not None and d != n for d, n in zip(expected[1:], x.shape[1:])):
            raise InputError(f"input has shape {list(x.shape)}, the model expects {shown}")
        if x.shape[0] == 0:
            raise InputError("input batch is empty")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise InputError(f"input has {np.count_nonzero(~np.isfinite(x))} NaN or infinite values")
        pre = self._info.preprocessing
        if pre is not None and abs(pre.scale * 255 - 1) < 1e-3 and x.max() > 1.5:
            warnings.warn("input looks like raw 0-255 pixels but the model expects [0,1] (scale 1/255)",
                          RawPixelWarning, stacklevel=3)
        return x


def _even_split(total: int, most: int) -> int:
    """The chunk size that splits total into as few chunks of at most `most` as possible, evenly."""
    chunks = -(-total // most)
    return -(-total // chunks)


def _group_by_rows(plan):
    """[(rows, passes), ...] -> [(rows, [passes, ...]), ...] keeping the order."""
    grouped: List[Tuple[slice, List[int]]] = []
    for rows, passes in plan:
        if grouped and grouped[-1][0] == rows:
            grouped[-1][1].append(passes)
        else:
            grouped.append((rows, [passes]))
    return grouped


def _read_model(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not an ONNX file") from None
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror})") from None
    if not data:
        raise ModelFileError(f"{path}: empty file, not an ONNX file")
    return data


