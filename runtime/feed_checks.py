"""The input checks of a loaded model: a predict's x as float32 arrays by input name, and the
tensors a feed's shapes imply bounded before onnxruntime allocates them."""

import threading
import warnings
from typing import Dict, Optional

import numpy as np

from . import tensor_bounds
from .errors import InputError, first_line
from .limits import Limits
from .format.metadata import ModelInfo
from .format.onnx_file import ModelFile

# Distinct feed shapes whose tensor bounds a session remembers as checked (each check: 1-3 ms).
CHECKED_FEEDS_KEPT = 1024


class RawPixelWarning(UserWarning):
    """The input looks like 0-255 pixels, but the model expects them scaled."""


class FeedChecks:
    """The checks of one loaded file's inputs and feeds; safe to use from several threads."""

    def __init__(self, info: ModelInfo, parsed: Optional[ModelFile], limits: Limits, path: str):
        self.info, self.parsed, self.limits, self.path = info, parsed, limits, path
        # {input: vocabulary size} of the inputs that hold token ids (an Embedding's table rows)
        self.vocabularies = tensor_bounds.vocabularies(parsed.graph) if parsed is not None else {}
        self.checked: set = set()  # feed shapes (and small values) whose tensors are bounded
        self._lock = threading.Lock()

    def inputs(self, x) -> Dict[str, np.ndarray]:
        """x as {graph input name: float32 [batch, *shape]}, one batch size for all, or an
        InputError saying what is wrong. x: an array (one-input model), a dict by input name, or a
        list or tuple in input order."""
        names = self.info.input_names
        if isinstance(x, dict):
            unknown = sorted(map(str, set(x) - set(names)))
            missing = [name for name in names if name not in x]
            if unknown or missing:
                raise InputError(f"the model's inputs are {', '.join(names)}; "
                                 + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"))
            arrays = {name: self._array(x[name], name) for name in names}
        elif len(names) > 1:
            if not isinstance(x, (list, tuple)) or len(x) != len(names):
                raise InputError(f"the model takes {len(names)} inputs ({', '.join(names)}): pass a dict by name")
            arrays = {name: self._array(value, name) for name, value in zip(names, x)}
        else:
            arrays = {names[0]: self._array(x, names[0])}
        sizes = {name: len(value) for name, value in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise InputError("inputs differ in batch size: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        return arrays

    def tensors(self, feed: Dict[str, np.ndarray]) -> None:
        """InputError if a tensor this feed's shapes (and small values: passes) imply is over
        the tensor_mb limit (runtime/tensor_bounds.py); once per distinct feed shape."""
        # Only small integer feeds (passes, token ids) are read as values by the walk: float data in
        # the key would make every small tabular input a new entry.
        key = tuple((name, value.shape, value.tobytes() if value.size <= 16 and value.dtype.kind in "iub" else None)
                    for name, value in sorted(feed.items()))
        with self._lock:
            if key in self.checked or self.parsed is None:  # LiteRT (no ONNX graph): fixed shapes but the batch
                return
        tensor_bounds.check(self.parsed.graph, self.limits, self.path, feed)
        with self._lock:
            if len(self.checked) >= CHECKED_FEEDS_KEPT:  # a long-lived session: bounded memory
                self.checked.clear()
            self.checked.add(key)

    def _token_ids(self, x: np.ndarray, name: str) -> None:
        """InputError naming the first id outside [0, vocabulary) of an input that holds token ids
        (the graph casts them to integers, so 3.7 is id 3)."""
        size = self.vocabularies[name]
        ids = np.trunc(x)
        outside = (ids < 0) | (ids >= size)
        if outside.any():
            where = tuple(int(i) for i in np.argwhere(outside)[0])
            raise InputError(f"input {name!r} holds {np.count_nonzero(outside)} token ids outside the model's vocabulary of "
                             f"{size:,} (ids 0 to {size - 1:,}), the first {ids[where]:g} at {list(where)}")

    def _array(self, x, name: str) -> np.ndarray:
        """One input as float32 [batch, *its shape]."""
        what = "input" if len(self.info.model_inputs) == 1 else f"input {name!r}"
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as err:  # ragged nested lists
            raise InputError(f"{what} is not an array ({first_line(err)})") from None
        if x.dtype.kind not in "fiu":
            raise InputError(f"{what} must be real numbers, got dtype {x.dtype}")
        problem = self.info.shape_problem(x.shape, name)
        if problem:
            raise InputError(f"{what} has {problem}")
        if x.shape[0] == 0:
            raise InputError(f"{what} batch is empty")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise InputError(f"{what} has {np.count_nonzero(~np.isfinite(x))} NaN or infinite values")
        if name in self.vocabularies:
            self._token_ids(x, name)
        pre = self.info.preprocessing
        if pre is not None and abs(pre.scale * 255 - 1) < 1e-3 and not pre.normalizes and x.max() > 1.5:
            warnings.warn("input looks like raw 0-255 pixels but the model expects [0,1] (scale 1/255)",
                          RawPixelWarning, stacklevel=4)
        return x
