"""Checkpoints: one dict, written atomically, loaded with ``weights_only=True`` onto the CPU.

Layout (``format_version`` 2)::

    {"format_version", "stage", "epoch", "model", "optimizers", "schedulers", "config",
     "arch_spec" | "lut_meta", "best_top1", "best_epoch", "rng", ...}

``epoch`` is the number of epochs done and ``best_epoch`` counts from 1, in both stages. Format 1
differed in one point: a search ("supernet") checkpoint held the last epoch counted from 0 (and its
``best_epoch`` too); loading one gives it in format 2's terms.

Each checkpoint ``NAME`` gets a sidecar ``NAME.sha256`` (``sha256sum`` format) holding the digest of
its bytes, and loading checks it, so a file damaged after it was written (flipped bytes would still
unpickle, with wrong values) is refused naming the file. The sidecar is written twice, atomically:
before the checkpoint is replaced it lists the new digest and the old one, after it only the new; a
kill between the writes leaves a checkpoint whose digest the sidecar lists. A checkpoint without a
sidecar (written by older code, or copied alone) loads unchecked.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .io_utils import atomic_write, atomic_write_text

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "checksum_path",
    "copy_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, of another format or of another model."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, with its checksum sidecar (module docstring)."""
    state = {"format_version": FORMAT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _write_checked(Path(path), buffer.getvalue())


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the checkpoint ``src`` to ``dst`` (atomically, with its sidecar), once it is verified."""
    _write_checked(Path(dst), _read_checked(Path(src)))


def checksum_path(path: str | os.PathLike) -> Path:
    """The sidecar that records the sha256 of the checkpoint ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _write_checked(path: Path, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    sidecar = checksum_path(path)
    old = _recorded(sidecar)[:1]
    atomic_write_text(sidecar, "".join(f"{d}  {path.name}\n" for d in [digest, *old]))
    atomic_write(path, lambda f: f.write(data))
    atomic_write_text(sidecar, f"{digest}  {path.name}\n")


def _recorded(sidecar: Path) -> list[str]:
    """The digests a sidecar lists (none when it is absent or unreadable)."""
    try:
        return [line.split()[0] for line in sidecar.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


def _read_checked(path: Path) -> bytes:
    """The bytes of ``path``, checked against its sidecar when it has one."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read: {err.strerror or err}") from None
    sidecar = checksum_path(path)
    if sidecar.exists() and hashlib.sha256(data).hexdigest() not in _recorded(sidecar):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its sha256 is not the one {sidecar} recorded when it "
            "was written (damaged or changed since); use another checkpoint"
        )
    return data


def load_checkpoint(path: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely; ``stage`` ("supernet" | "architecture") is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = _read_checked(path)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint ({_short_reason(err)})"
        ) from None
    if isinstance(state, dict) and state.get("format_version") == 1:
        state = _from_format_1(state)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state.get('format_version') if isinstance(state, dict) else None!r}; "
            f"this code reads formats 1 and {FORMAT_VERSION}"
        )
    if stage is not None and state.get("stage") != stage:
        raise CheckpointError(
            f"checkpoint {path} is a {state.get('stage')!r} checkpoint, not a {stage!r} one"
        )
    return state


def _from_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint in format 2's terms (module docstring)."""
    state = {**state, "format_version": 2}
    if state.get("stage") == "supernet" and isinstance(state.get("epoch"), int):
        state["epoch"] += 1
        if isinstance(state.get("best_epoch"), int):
            state["best_epoch"] += 1
    return state


def _short_reason(err: BaseException) -> str:
    """The error's type, with its message when that is one line (torch.load's unpickling errors
    run over many lines of advice about ``weights_only``)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text and "\n" not in text else type(err).__name__
