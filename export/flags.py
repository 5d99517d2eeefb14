"""`cli.py export`'s flags turned into export_model's arguments, every one checked before
TensorFlow loads (a bad flag fails at once, not after minutes of loading and converting)."""

import os
from pathlib import Path
from typing import List, Optional

from ..runtime.checks import positive_int, require_modules
from ..runtime.errors import InputError

EXPORT_EXTRA = ("tensorflow", "keras", "tf2onnx", "onnx")


def export_arguments(output: Path, passes: int, image_size: Optional[str], color_mode: Optional[str],
                     preprocess: Optional[str], scale: Optional[float], offset: Optional[float],
                     labels: Optional[str], mc_layers: Optional[str], quantize: str,
                     ignore_random_layers: Optional[str], file_format: str = "onnx", portable: bool = False,
                     bake_masks: Optional[int] = None) -> dict:
    """The keyword arguments of export_model that the flags give, once they are all checked."""
    from . import check_preprocess_options  # no TensorFlow yet

    if file_format not in ("onnx", "tflite"):
        raise InputError(f"--format {file_format!r}: choose onnx or tflite")
    if bake_masks is not None and not (portable or file_format == "tflite"):
        raise InputError("--bake-masks is for --portable or --format tflite")
    if file_format == "tflite" and (portable or quantize != "none"):
        raise InputError("--format tflite writes a portable float file: no --portable or --quantize with it")
    check_export_target(output, ".tflite" if file_format == "tflite" else ".onnx")
    size = None
    if image_size is not None:
        try:
            size = tuple(int(v) for v in image_size.lower().split("x"))
            if len(size) != 2 or min(size) < 1:
                raise ValueError
        except ValueError:
            raise InputError(f"--image-size {image_size!r}: expected HxW, e.g. 28x28") from None
    if color_mode not in (None, "grayscale", "rgb"):
        raise InputError(f"--color-mode {color_mode!r}: expected grayscale or rgb")
    positive_int("--passes", passes)
    check_preprocess_options(preprocess, scale, offset)
    # LiteRT checks the file before it is written
    require_modules(EXPORT_EXTRA + (("ai_edge_litert",) if file_format == "tflite" else ()), "export", "export")
    return dict(passes=passes, image_size=size, color_mode=color_mode, preprocess=preprocess, scale=scale,
                offset=offset, quantize=None if quantize == "none" else quantize, mc_layers=names(mc_layers),
                ignore_random_layers=names(ignore_random_layers),
                # a file of labels, or NAME=FILE,NAME=FILE for a model with several outputs
                labels=Path(labels) if labels is not None and ("=" not in labels or Path(labels).exists()) else labels)


def export_from_flags(source, output: Path, *, passes: int, image_size: Optional[str], color_mode: Optional[str],
                      preprocess: Optional[str], scale: Optional[float], offset: Optional[float],
                      labels: Optional[str], mc_layers: Optional[str], quantize: str,
                      ignore_random_layers: Optional[str], deterministic: bool, file_format: str = "onnx",
                      portable: bool = False, bake_masks: Optional[int] = None, **others) -> List[str]:
    """export_model run as `cli.py export` runs it, returning the report's lines: the flags checked
    first, TensorFlow's and tf2onnx's own logging kept off the terminal (they log to stderr from C++
    while they load and convert) and the progress lines written to the real stderr instead.
    `file_format` "tflite": the portable file in TensorFlow Lite's format (export/litert.py);
    `portable`: the standard file, then the same conversion as `convert --portable`. `others`:
    export_model's arguments that need no parsing (head, opset, validate, seed, calibration, ...)."""
    arguments = export_arguments(output, passes, image_size, color_mode, preprocess, scale, offset, labels, mc_layers,
                                 quantize, ignore_random_layers, file_format, portable, bake_masks)
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    if len(sources) > 1 and (portable or file_format == "tflite" or quantize != "none"):
        raise InputError("an ensemble is written as a standard float ONNX file: no --portable, --format tflite "
                         "or --quantize with several models")
    source = sources if len(sources) > 1 else sources[0]
    import logging

    from ..runtime.providers import quiet_stderr
    from ..runtime.safe_files import terminal_safe
    from . import export_model

    write = export_model
    if file_format == "tflite":
        from functools import partial

        from .litert import export_litert

        write = partial(export_litert, bake_masks=bake_masks)
    standard = _standard_path(output) if portable else output
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    with quiet_stderr() as terminal:
        def progress(message):
            os.write(terminal, (message + "\n").encode())

        report = write(source, standard, allow_deterministic=deterministic, progress=progress, **arguments, **others)
    if not portable:
        return report.lines()
    from ..convert import convert_file

    try:
        converted = convert_file(standard, output, bake_masks=bake_masks)
    finally:
        standard.unlink(missing_ok=True)
    return ([line for line in report.lines() if not line.startswith("wrote")]
            + [terminal_safe(line) for line in converted.lines()])


def _standard_path(output: Path) -> Path:
    """Where export --portable writes the standard file before converting it: beside OUT."""
    return output.with_name(f".{output.stem}.standard.{os.getpid()}.onnx")


def names(text: Optional[str]) -> Optional[List[str]]:
    """Comma-separated names as a list (None when the flag is not given)."""
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def check_export_target(output: Path, suffix: str = ".onnx") -> None:
    """-o must name an .onnx (or `suffix`) file (so `-o model.keras` cannot replace the source), not
    a folder or a link, in a folder that is one or can be made."""
    from ..runtime.safe_files import check_writable_target

    path = Path(os.path.abspath(output))
    folder = next(p for p in path.parents if os.path.lexists(p))
    if not folder.is_dir():
        raise InputError(f"-o {output}: {folder} is not a folder")
    if folder == path.parent:
        check_writable_target(output)
    if output.suffix.lower() != suffix:
        raise InputError(f"-o {output}: the file to write must end in {suffix}")
