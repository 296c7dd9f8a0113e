"""Checkpoints: one dict, written atomically, loaded with ``weights_only=True`` onto the CPU.

Layout (``format_version`` 1)::

    {"format_version", "stage", "epoch", "model", "optimizers", "schedulers", "config",
     "arch_spec" | "lut_meta", "best_top1", "rng", ...}
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .io_utils import atomic_write

__all__ = ["FORMAT_VERSION", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, of another format or of another model."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely; ``stage`` ("supernet" | "architecture") is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint ({_short_reason(err)})"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state.get('format_version') if isinstance(state, dict) else None!r}; "
            f"this code reads format {FORMAT_VERSION}"
        )
    if stage is not None and state.get("stage") != stage:
        raise CheckpointError(
            f"checkpoint {path} is a {state.get('stage')!r} checkpoint, not a {stage!r} one"
        )
    return state


def _short_reason(err: BaseException) -> str:
    """The error's type, with its message when that is one line (torch.load's unpickling errors
    run over many lines of advice about ``weights_only``)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text and "\n" not in text else type(err).__name__
