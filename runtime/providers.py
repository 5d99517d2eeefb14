"""Which onnxruntime execution provider runs the model.

onnxruntime falls back to CPU silently when CUDA cannot start (no driver, no GPU, missing
libraries), and prints its errors straight to file descriptor 2. So a CUDA session is created
quietly and then asked which provider it really got.
"""

import contextlib
import functools
import importlib.metadata
import os
import sys
import warnings
from typing import Callable, Iterable, List, Optional

import onnxruntime as ort

from .errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Full float32 matrix products and convolutions on CUDA. onnxruntime's default TF32 moved the
# shipped files' mean probabilities 4e-4 from the CPU's and changed passes="auto" decisions; off,
# 2e-7, for up to 35% more time on an H200. cuDNN's exhaustive search of convolution algorithms
# reran whenever a run's shape changed (auto rounds, single-pass scores): 35 against 12 ms per
# calibrated CNN predict. docs/DESIGN.md: Memory; BENCHMARKS.md: CUDA provider.
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
# onnxruntime's FATAL level: its errors would also print straight to fd 2, beside the one line the
# CLI prints for them; real failures still raise.
QUIET_LOG_LEVEL = 4

CONFLICT_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
                "(or `pip install onnxruntime` on machines without CUDA)")


def create_session(model_bytes: bytes, device: str, options: "ort.SessionOptions",
                   session_factory: Optional[Callable] = None):
    """An InferenceSession on `device`; session.get_providers()[0] is the provider really used.

    device "cuda" raises DeviceError when CUDA is not used; "auto" takes CUDA when it works, else
    CPU. `session_factory` stands in for ort.InferenceSession in tests.
    """
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    factory = session_factory or ort.InferenceSession
    warn_if_conflicting()
    options.log_severity_level = QUIET_LOG_LEVEL
    cuda_listed = CUDA in ort.get_available_providers()
    if device == "cuda" and not cuda_listed:
        raise DeviceError(f"device cuda: this onnxruntime has no {CUDA} "
                          f"(has {', '.join(ort.get_available_providers())}); "
                          "install onnxruntime-gpu, or use --device cpu")
    if device != "cpu" and cuda_listed:
        try:
            with quiet_stderr():
                session = factory(model_bytes, sess_options=options, providers=[(CUDA, CUDA_OPTIONS), CPU])
        except Exception:
            if device == "cuda":
                raise  # the model itself may be broken; the caller reports it
            session = None
        if session is not None and (session.get_providers()[0] == CUDA or device == "auto"):
            return session  # on CUDA, or fallen back to CPU by itself
        if device == "cuda":
            raise DeviceError(f"device cuda: onnxruntime lists {CUDA} but could not start it "
                              "(no GPU, driver or CUDA/cuDNN libraries); use --device cpu")
    return factory(model_bytes, sess_options=options, providers=[CPU])


@contextlib.contextmanager
def quiet_stderr():
    """Send file descriptor 2 to /dev/null: C++ loggers (onnxruntime, TensorFlow) write there
    directly. Yields a duplicate of the real stderr for what the user should still see."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield saved
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def onnxruntime_distributions(distributions: Optional[Iterable] = None) -> List[str]:
    """Names of the installed onnxruntime packages (onnxruntime, onnxruntime-gpu, ...)."""
    if distributions is None:
        distributions = importlib.metadata.distributions()
    names = {(dist.metadata["Name"] or "").lower().replace("_", "-") for dist in distributions}
    return sorted(name for name in names if name == "onnxruntime" or name.startswith("onnxruntime-"))


def conflict_message(names: List[str]) -> Optional[str]:
    """Advice when several onnxruntime packages share the one `onnxruntime` import folder."""
    if len(names) < 2:
        return None
    return (f"{' and '.join(names)} are installed together and overwrite each other's files, "
            f"so CUDA may silently be missing; fix: {CONFLICT_FIX}")


@functools.lru_cache(maxsize=None)
def warn_if_conflicting() -> None:
    """Warn once per process (scanning the installed packages takes a moment)."""
    message = conflict_message(onnxruntime_distributions())
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
