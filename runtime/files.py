"""Write a file so that it is either complete or absent: a temp file beside it, then a rename."""

import contextlib
import os
import tempfile
from pathlib import Path

from runtime.errors import InputError


@contextlib.contextmanager
def atomic_writer(path):
    """Yield a binary file object; on success it replaces `path`, on any error it is removed.

    A path that cannot be written (a folder, a missing or read-only folder) is an InputError.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise InputError(f"{path}: cannot write here ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
