"""Typed errors shared by the runtime, the exporter and the CLI.

Every error a user can cause is a subclass of McdropError; the CLI prints its message on one
line and exits with its exit_code. Anything else is a bug and keeps its traceback.
"""

import os


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name if it has none), cut to `limit`."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def os_error_text(err: OSError) -> str:
    """'PATH: reason' as the system words it (the path of the file it concerns, if any)."""
    reason = err.strerror or first_line(err)
    if err.filename is None:
        return reason
    path = err.filename
    return f"{os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else path}: {reason}"


def memory_error_text(err: MemoryError, options: dict) -> str:
    """One line: what ran out, and the knobs among a command's `options` that bound its memory."""
    detail = first_line(err) if str(err).strip() else "an allocation failed"
    knobs = ["fewer inputs", "fewer --passes" if "passes" in options else None,
             "a smaller --max-chunk-mb" if "max_chunk_mb" in options else None,
             "lower --limit values" if options.get("limit") else None]
    return f"out of memory ({detail}); try " + ", ".join(knob for knob in knobs if knob)


class McdropError(Exception):
    """Base class: a problem the user can fix, reported in one line."""

    exit_code = 2


class InputError(McdropError):
    """Bad input data: missing or unreadable file, wrong shape or dtype, NaN, bad option value."""


class ModelFileError(McdropError):
    """A model file that cannot be used: missing, not ONNX, not an mcdrop export, unsupported Keras model."""


class UnsafeModelError(ModelFileError):
    """A model file that would run code of its own when loaded (a Keras Lambda layer, a custom
    object from outside Keras); refused unless the user trusts it (--trust-model-code)."""


class ModelRunError(McdropError):
    """onnxruntime failed while running a model it had accepted (a broken or hostile graph, or
    an allocation the machine cannot give)."""


class DeviceError(McdropError):
    """The requested execution provider cannot run here."""


class ExportError(McdropError):
    """The Keras model cannot be exported as asked (no stochastic layer, ambiguous head, ...)."""


class ValidationError(ExportError):
    """The exported graph failed a validation check; the file was not written."""

    exit_code = 3
