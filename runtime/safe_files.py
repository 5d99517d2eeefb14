"""Reading and writing files that may come from anyone.

Reads: only regular files (a FIFO would block, /dev/zero never ends), opened without blocking and
checked with fstat on the open descriptor, with a size cap checked before reading.

Writes: a file is either complete or absent: a temporary file beside it, then a rename. A symbolic
link at the target is refused rather than followed, so a link planted where results go cannot
redirect them. Temporary files carry the writer's process id, so one left by a killed writer
(SIGKILL gives no chance to clean up) is removed by the next write to the same target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import unicodedata
from pathlib import Path
from typing import Type

from .errors import InputError, McdropError, first_line

TEMP_SUFFIX = ".tmp"


def valid_text(text: str) -> str:
    """A file name as valid UTF-8 (for JSON, CSV, npz, Arrow strings): bytes that are not UTF-8
    (surrogate escapes from the file system) become the text \\xNN."""
    if any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def terminal_safe(text: str) -> str:
    """`text` with every control, format (bidi overrides), surrogate or unassigned character
    written as an escape, so names and labels from files cannot move the cursor, recolour or
    rewrite the terminal, or break a one-line message or a table row. Bytes of a file name that
    are not UTF-8 (surrogate escapes) show as \\xNN."""
    out = []
    for char in text:
        if unicodedata.category(char)[0] != "C":
            out.append(char)
            continue
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def open_regular(path, error: Type[McdropError] = InputError, what: str = "file") -> int:
    """A read-only descriptor of `path`, which must be a regular file (a link to one is fine).

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the fstat on
    the descriptor then refuses it, with no race between the check and the open."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise error(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path}: not a regular file (a device, FIFO or socket); mcdrop reads {what}s "
                    "from regular files only")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd


def read_regular(path, max_bytes: int, error: Type[McdropError] = InputError, what: str = "file",
                 limit_name: str = "input_mb", raise_hint: str = "") -> bytes:
    """The bytes of the regular file `path`, refused before reading when over max_bytes (the
    message says how to raise the limit: `raise_hint`, or the --limit flag named limit_name)."""
    fd = open_regular(path, error, what)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            hint = raise_hint or f"raise it with --limit {limit_name}=N if you trust it"
            raise error(f"{path}: {size / 2**20:.1f} MiB is over the {limit_name} limit "
                        f"({max_bytes / 2**20:g} MiB); {hint}")
        data = f.read(max_bytes + 1)  # a file that grows while read still stops at the cap
    if len(data) > max_bytes:
        raise error(f"{path}: grew past the {limit_name} limit while being read")
    if not data:
        raise error(f"{path}: empty file")
    return data


def check_writable_target(path, make_folder: bool = False) -> Path:
    """`path` as given (not resolved: the suffix the user typed decides the format), refused if it
    is a folder or a symbolic link, or its folder does not exist (and is not to be made)."""
    path = Path(os.path.abspath(path))
    if make_folder:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"{path}: cannot write here ({err.strerror or err})") from None
    if path.is_symlink():
        raise InputError(f"{path}: is a symbolic link; mcdrop does not write through links "
                         "(remove it or choose another name)")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    if not path.parent.is_dir():
        problem = "is not a folder" if os.path.lexists(path.parent) else "does not exist"
        raise InputError(f"{path}: folder {path.parent} {problem}")
    return path


@contextlib.contextmanager
def atomic_writer(path):
    """Yield a binary file object; on success it replaces `path`, on any error (KeyboardInterrupt
    and SystemExit too: the CLI turns SIGTERM into SystemExit) it is removed.

    A path that cannot be written (a folder, a link, a missing or read-only folder) is an InputError.
    A write that fails on the way (disk full, quota, I/O error) raises its OSError with `path` as
    the filename, not the temporary's name or none, so the message names the user's file.
    """
    given = os.fspath(path)
    path = check_writable_target(path, make_folder=True)
    remove_stale_temporaries(path)
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                         suffix=TEMP_SUFFIX)
    except OSError as err:
        raise InputError(f"{path}: cannot write here ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before its name says it is complete (a power cut: old or new)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        if path.is_symlink():  # planted while we wrote: os.replace would swap the link, refuse anyway
            raise InputError(f"{path}: became a symbolic link while being written; not replaced")
        os.replace(temporary, path)
        sync_folder(path.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(err, OSError) and err.filename in (None, temporary):
            raise OSError(err.errno, err.strerror or first_line(err), given) from err
        raise


def sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power cut (where the OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(path: Path) -> None:
    """Remove `.NAME.PID.*.tmp` files beside `path` whose process no longer runs."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                entry = path.parent / name
                if entry.is_file() and not entry.is_symlink():
                    entry.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Characters a spreadsheet reads as the start of a formula (OWASP "CSV Injection"): a cell that
# begins with one of them is prefixed with ' so it stays text.
_FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe_cell(text: str) -> str:
    """A text cell (a name, id or label, never a number we wrote) safe to open in a spreadsheet:
    a leading = + - @ tab or CR gets a ' prefix, and control characters (C0, DEL, C1) become the
    text \\xNN, so no escape sequence reaches a terminal."""
    prefix = "'" if text.startswith(_FORMULA_LEADS) else ""
    return prefix + "".join(f"\\x{ord(char):02x}" if _is_control(char) else char for char in text)


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0


class ExclusiveLock:
    """An exclusive lock held through the file `path` for as long as this object lives (until
    release()), so that two processes never write the same output; the file names its owner
    (pid and host) for the refusal message.

    Where the OS has flock (Linux, macOS, BSD; NFS through its lock manager), the kernel drops the
    lock when its process dies, so a lock left by a killed job is simply taken. Elsewhere (or where
    flock is refused), the owner's pid decides: a lock file from a pid that no longer runs on this
    host is taken over; one from another host is trusted to be live."""

    def __init__(self, path, busy: str):
        self.path = Path(path)
        self._fd = None
        for _ in range(8):  # another owner may remove the file between our open and our lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as err:
                raise InputError(f"{self.path}: cannot lock ({err.strerror or err})") from None
            if not self._locked(fd, busy):
                continue
            self._fd = fd
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {_host()}\n".encode())
            except OSError as err:  # a full disk: the lock holds, only its owner goes unnamed
                if err.errno != errno.ENOSPC:
                    self.release()
                    raise InputError(f"{self.path}: cannot lock ({err.strerror or err})") from None
            return
        raise InputError(f"{busy} (its lock {self.path} keeps changing)")

    def _locked(self, fd: int, busy: str) -> bool:
        """True when `fd` now holds the lock; False to retry; InputError(busy) when it is taken."""
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, host = _lock_owner(fd)
            os.close(fd)
            raise InputError(busy + (f" (pid {pid} on {host})" if pid else "")) from None
        except (ImportError, OSError):  # no flock here (or on this file system): the owner's pid decides
            pid, host = _lock_owner(fd)
            if pid and pid != os.getpid() and (host != _host() or _alive(pid)):
                os.close(fd)
                raise InputError(f"{busy} (pid {pid} on {host})") from None
        try:  # the file we locked must still be the one at the path (not unlinked by its last owner)
            same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
        return same

    def release(self, remove: bool = True) -> None:
        """Give the lock up (removing its file first when `remove`, so no stale owner is shown)."""
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _lock_owner(fd: int):
    """(pid, host) written in a lock file, (None, "") when it names none."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid, _, host = os.read(fd, 256).decode("utf-8", "replace").strip().partition(" ")
    except OSError:
        return None, ""
    return (int(pid), host) if pid.isdigit() else (None, "")


def _host() -> str:
    import socket

    return socket.gethostname() or "localhost"


def shown_path(path) -> str:
    """The path as the user would type it: relative to the working folder when it lies inside."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive, on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative
