"""Atomic file writes: a reader never sees a half-written file, and a crash never loses the old one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_JSON_BYTES",
    "DiskFullError",
    "disk_full_message",
    "is_disk_full",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "new_file_mode",
    "read_json",
]

# The largest JSON file read (architecture, configuration, latency table, thetas): the biggest the
# code writes is a latency table of a few tens of kB, so 1 MB leaves room and refuses junk unread.
MAX_JSON_BYTES = 1_000_000


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync it, then ``os.replace`` it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(err):
            raise DiskFullError(disk_full_message(path)) from None
        raise


class DiskFullError(RuntimeError):
    """No space was left to write a file; the message names it and the free space."""


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(path: str | os.PathLike) -> str:
    """One line: which file could not be written, and how much space is free beside it."""
    path = Path(path)
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return (
        f"no space left on the device to write {path} ({free} in {path.parent}); the previous "
        f"{path.name}, if any, is kept: free some space and resume the run"
    )


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file here (0o666 less the umask); ``mkstemp`` gives 0o600."""
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path``; ``what`` names the file in the one-line error.

    A missing file is a ``FileNotFoundError``; a folder, a file over ``max_bytes`` (refused before it
    is read), a binary file, invalid JSON or JSON nested too deep to parse is a ``ValueError``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{what} {path} is {size} bytes; at most {max_bytes} are read")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a text file (not UTF-8)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is nested too deeply to be JSON this code reads") from None
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read: {err.strerror or err}") from None
