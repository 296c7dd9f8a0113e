"""Small helpers: meters, accuracy, seeding, RNG state and device selection."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

__all__ = [
    "AverageMeter",
    "accuracy",
    "get_rng_state",
    "resolve_device",
    "set_rng_state",
    "set_seed",
]

logger = logging.getLogger(__name__)


class AverageMeter:
    """Running average weighted by the number of samples."""

    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)


@torch.no_grad()
def accuracy(logits: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """Top-k accuracies in percent."""
    maxk = min(max(topk), logits.size(1))
    pred = logits.topk(maxk, dim=1).indices
    correct = pred.eq(target[:, None])
    return [correct[:, : min(k, maxk)].any(1).float().mean().item() * 100.0 for k in topk]


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def get_rng_state() -> dict:
    """Every RNG's state, in types that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU.

    ``cuda`` without a GPU, or a name torch does not know, is a :class:`ValueError` whose message is
    the one line an entry script prints.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unsupported device {name!r}: use auto, cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: torch sees no CUDA device here (torch {torch.__version__}); "
            "use --device cpu or auto"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    return device


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (0 = leave torch's default).

    More than the machine's cores is a ``ValueError`` (OpenMP crashes or hangs starting thousands).
    """
    cores = os.cpu_count() or 1
    if threads > cores:
        raise ValueError(
            f"--threads {threads} is more than this machine's {cores} cores: use 1 to {cores} "
            "(or 0 for torch's default)"
        )
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
