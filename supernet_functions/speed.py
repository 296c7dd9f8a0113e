"""Making supernet steps fast without changing what they compute (``bench/bench_supernet.py`` measures it).

A profile of a supernet step on 32x32 inputs (``torch.profiler``, README "Performance") showed where the
time goes, and each point below answers one finding:

- **The idle parameter set.** The original computes every gradient in both steps. Here the set that is
  not being trained has ``requires_grad`` off (:func:`trainable_only`), so a theta step computes no
  weight gradient (only the input gradients it needs to reach earlier thetas) and a weight step no theta
  gradient. The optimizer of the idle set is not stepped either way, so results are the same.
- **Memory layout.** CPU depthwise convolutions in the default (NCHW) layout are very slow on the
  small maps of the last stages; channels_last runs them one to two orders of magnitude faster.
  :func:`prepare_supernet` puts the model in channels_last and :func:`to_model_format` the batches.
  The arithmetic is the same; only the order of floating-point additions may differ.
- **Kernels larger than the map.** A 5x5 depthwise kernel on a 1x1 or 2x2 map multiplies padding with
  most of its taps. :func:`prepare_supernet` swaps such convolutions for
  :class:`~architecture_functions.trim_kernels.TrimmedConv2d` (same parameters, same values, only the
  taps that touch the map), which the architecture trainer uses for the same reason.

GPU-only settings are here too: :func:`autocast` (mixed precision, off by default: it changes the
numerics) and ``cudnn.benchmark``; on a CPU both are no-ops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import torch
from torch import nn

__all__ = [
    "autocast",
    "make_grad_scaler",
    "prepare_supernet",
    "supernet_step",
    "to_model_format",
    "trainable_only",
]

logger = logging.getLogger(__name__)


def prepare_supernet(
    model: nn.Module,
    device: torch.device,
    channels_last: bool = True,
    trim_kernels: bool = True,
    cudnn_benchmark: bool = False,
) -> nn.Module:
    """Move ``model`` to ``device`` and apply the exact speed-ups asked for, in place; returns it."""
    model.to(device)
    if trim_kernels:
        from architecture_functions.trim_kernels import trim_depthwise_convs

        trim_depthwise_convs(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.channels_last = channels_last
    if device.type == "cuda" and cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    return model


def to_model_format(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` in the memory format of ``model`` (channels_last after :func:`prepare_supernet`)."""
    if getattr(model, "channels_last", False) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def trainable_only(trainable: Iterable[nn.Parameter], frozen: Iterable[nn.Parameter]) -> Iterator:
    """``requires_grad`` off for ``frozen`` and on for ``trainable`` inside the block, restored after."""
    trainable, frozen = list(trainable), list(frozen)
    before = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(frozen, before):
            p.requires_grad_(flag)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision (float16 autocast) on CUDA when ``enabled``; a no-op context on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def make_grad_scaler(device: torch.device, enabled: bool):
    """A ``torch.amp.GradScaler`` for float16 on CUDA, or ``None`` (CPU, or AMP off)."""
    if enabled and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def supernet_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    temperature: float,
    scaler=None,
    amp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step of whichever set ``optimizer`` holds; returns ``(loss, ce, latency, logits)``.

    Call it inside :func:`trainable_only` so that only that set's gradients are computed. The returned
    tensors are detached. A non-finite loss raises ``FloatingPointError`` before any update.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(x.device, amp):
        logits, latency = model(to_model_format(x, model), temperature)
        loss, ce, _ = criterion(logits.float(), y, latency.float())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss.item()}")
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), ce.detach(), latency.detach(), logits.detach()
