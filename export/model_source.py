"""The model an export starts from: a .keras file, a legacy .h5 file or a SavedModel folder.

`read_source` lists its files, checks what each is and their total size, and hashes them in one
pass (the SHA-256 the file's metadata records); `load_keras_model` then reads its config as data
(export/model_code.py) and loads it with Keras. A source may come from anyone: what would make
reading it hang, leak or never end (a FIFO, device or socket, a link out of the folder, more than
max_bytes in all) is refused before Keras opens it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..runtime.errors import ModelFileError, first_line

MAX_SOURCE_BYTES = 4 * 2**30  # a model file or SavedModel folder, all files together
SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class ModelSource:
    path: Path
    files: List[Path]  # the regular files it is made of, sorted (for a folder, every one in it)
    sha256: Optional[str]  # of the files' bytes in path order; None when not asked for


def read_source(path, max_bytes=MAX_SOURCE_BYTES, hashed=True) -> ModelSource:
    """The source's files, each checked, the total capped at `max_bytes`; with `hashed`, their
    SHA-256, read through open_regular (never through a link out of a folder) and stopped once
    more than `max_bytes` have been read (a file may grow after it was listed)."""
    from ..runtime.safe_files import open_regular

    path = Path(path)
    files = source_files(path, max_bytes)
    if not hashed:
        return ModelSource(path, files, None)
    digest, total = hashlib.sha256(), 0
    for name in files:
        with os.fdopen(open_regular(name, ModelFileError, "model file"), "rb") as f:
            while chunk := f.read(2**20):
                total += len(chunk)
                _check_source_size(path, total, max_bytes)
                digest.update(chunk)
    return ModelSource(path, files, digest.hexdigest())


def source_sha256(path, max_bytes=MAX_SOURCE_BYTES) -> str:
    """SHA-256 of the source's files, in path order (see read_source)."""
    return read_source(path, max_bytes).sha256


def source_files(path, max_bytes=MAX_SOURCE_BYTES) -> List[Path]:
    """The regular files a model source is made of, sorted; for a SavedModel folder, every file in it.

    Refuses what would make reading the source hang, leak or never end: a FIFO, device or socket,
    a symbolic link whose target lies outside the folder (or is not there), and more than
    `max_bytes` in all. Links inside the folder are allowed; their targets are listed once, as
    the files they are."""
    from ..runtime.safe_files import open_regular

    path = Path(path)
    if not path.is_dir():
        fd = open_regular(path, ModelFileError, "model file")
        size = os.fstat(fd).st_size
        os.close(fd)
        _check_source_size(path, size, max_bytes)
        return [path]
    root, files, total, folders = os.path.realpath(path), [], 0, [str(path)]
    while folders:
        with _scan(folders.pop(), path) as entries:
            for entry in entries:
                name = os.path.relpath(entry.path, path)
                if entry.is_symlink():
                    _check_link(entry.path, root, path, name)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    files.append(Path(entry.path))
                    total += entry.stat(follow_symlinks=False).st_size
                    _check_source_size(path, total, max_bytes)
                else:
                    raise ModelFileError(f"{path}: {name} is not a regular file or folder (a FIFO, device or socket); refused")
    return sorted(files)


def load_keras_model(path, trust_model_code=False, max_source_bytes=MAX_SOURCE_BYTES, registered=()):
    """A .keras file, a legacy .h5 file or a SavedModel directory written by Keras.

    Its config is read as data first (export.model_code): a model that would run Python code of
    its own while loading (a Lambda layer, a module outside Keras) is an UnsafeModelError unless
    `trust_model_code`. The source must be a regular file or a folder of them (see source_files).
    """
    model, _ = load_source(path, trust_model_code, max_source_bytes, registered, hashed=False)
    return model


def load_source(path, trust_model_code=False, max_source_bytes=MAX_SOURCE_BYTES, registered=(), hashed=True):
    """(Keras model, ModelSource): load_keras_model's model, and the source as read_source read it
    (listed, checked and, with `hashed`, hashed once)."""
    import keras

    from .model_code import check_model_code

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory")
    if not path.is_dir() and path.suffix not in SUFFIXES:
        raise ModelFileError(f"{path}: expected a .keras file, an .h5 file or a SavedModel directory")
    source = read_source(path, max_source_bytes, hashed)
    if not trust_model_code:
        check_model_code(path, registered)
    try:
        if path.is_dir():
            return _load_saved_model(path, trust_model_code), source
        return keras.models.load_model(path, compile=False, safe_mode=not trust_model_code), source
    except ModelFileError:
        raise
    except Exception as err:  # keras raises many types for unreadable files
        raise ModelFileError(f"{path}: cannot load the Keras model ({first_line(err)})") from err


def _load_saved_model(path, trust_model_code=False):
    import keras

    if not (path / "saved_model.pb").exists():
        raise ModelFileError(f"{path}: a directory without saved_model.pb is not a SavedModel")
    if (path / "keras_metadata.pb").exists():
        # Keras 2 SavedModels keep the layer config; tf_keras (Keras 2) reads it and writes the
        # legacy .h5 form, which Keras 3 loads with its layers intact. tf_keras runs a Lambda's
        # code even in safe mode: check_model_code is what keeps an untrusted one from loading.
        try:
            import tf_keras
        except ImportError as err:
            raise ModelFileError(f"{path}: a Keras 2 SavedModel needs the tf_keras package (pip install tf_keras)") from err
        safe = not trust_model_code
        with tempfile.TemporaryDirectory() as tmp:
            tf_keras.models.load_model(path, compile=False, safe_mode=safe).save(Path(tmp) / "model.h5")
            return keras.models.load_model(Path(tmp) / "model.h5", compile=False, safe_mode=safe)
    raise ModelFileError(
        f"{path}: this SavedModel holds a traced inference graph only (no Keras layers), so its dropout is gone; "
        "export from the .keras file instead"
    )


def _scan(folder, source):
    try:
        return os.scandir(folder)
    except OSError as err:
        raise ModelFileError(f"{source}: cannot read {folder} ({err.strerror or err})") from None


def _check_link(link, root, source, name):
    """A link in a SavedModel folder must lead to a file or folder inside it."""
    target = os.path.realpath(link)
    if os.path.commonpath([root, target]) != root:
        raise ModelFileError(f"{source}: {name} is a symbolic link to {target}, outside the folder; refused")
    try:
        mode = os.stat(target).st_mode
    except OSError:
        raise ModelFileError(f"{source}: {name} is a symbolic link to nothing; refused") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ModelFileError(f"{source}: {name} links to something that is not a regular file or folder; refused")


def _check_source_size(source, size, max_bytes):
    if size > max_bytes:
        raise ModelFileError(f"{source}: more than {_amount(max_bytes)}; refused (raise max_source_bytes if you trust it)")


def _amount(size):
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"
