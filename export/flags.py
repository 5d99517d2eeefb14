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
                     ignore_random_layers: Optional[str]) -> dict:
    """The keyword arguments of export_model that the flags give, once they are all checked."""
    from . import check_preprocess_options  # no TensorFlow yet

    check_export_target(output)
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
    require_modules(EXPORT_EXTRA, "export", "export")
    return dict(passes=passes, image_size=size, color_mode=color_mode, preprocess=preprocess, scale=scale,
                offset=offset, quantize=None if quantize == "none" else quantize, mc_layers=names(mc_layers),
                ignore_random_layers=names(ignore_random_layers),
                # a file of labels, or NAME=FILE,NAME=FILE for a model with several outputs
                labels=Path(labels) if labels is not None and ("=" not in labels or Path(labels).exists()) else labels)


def export_from_flags(source, output: Path, *, passes: int, image_size: Optional[str], color_mode: Optional[str],
                      preprocess: Optional[str], scale: Optional[float], offset: Optional[float],
                      labels: Optional[str], mc_layers: Optional[str], quantize: str,
                      ignore_random_layers: Optional[str], deterministic: bool, **others):
    """export_model run as `cli.py export` runs it: the flags checked first, TensorFlow's and
    tf2onnx's own logging kept off the terminal (they log to stderr from C++ while they load and
    convert) and the progress lines written to the real stderr instead. `others`: export_model's
    arguments that need no parsing (head, opset, validate, seed, calibration, ...)."""
    arguments = export_arguments(output, passes, image_size, color_mode, preprocess, scale, offset, labels, mc_layers,
                                 quantize, ignore_random_layers)
    import logging

    from ..runtime.providers import quiet_stderr
    from . import export_model

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    with quiet_stderr() as terminal:
        def progress(message):
            os.write(terminal, (message + "\n").encode())

        return export_model(source, output, allow_deterministic=deterministic, progress=progress, **arguments, **others)


def names(text: Optional[str]) -> Optional[List[str]]:
    """Comma-separated names as a list (None when the flag is not given)."""
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def check_export_target(output: Path) -> None:
    """-o must name an .onnx file (so `-o model.keras` cannot replace the source), not a folder or
    a link, in a folder that is one or can be made."""
    from ..runtime.safe_files import check_writable_target

    path = Path(os.path.abspath(output))
    folder = next(p for p in path.parents if os.path.lexists(p))
    if not folder.is_dir():
        raise InputError(f"-o {output}: {folder} is not a folder")
    if folder == path.parent:
        check_writable_target(output)
    if output.suffix.lower() != ".onnx":
        raise InputError(f"-o {output}: the file to write must end in .onnx")
