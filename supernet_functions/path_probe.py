"""Do the supernet's weights still serve single paths? The per-epoch diagnostic of a search.

A search ends by keeping one op per layer (the argmax of the thetas), so its thetas are only as good as
the supernet's weights are for single paths. Weights trained under a soft mixture can serve the average
op and no path: the mixture's accuracy then rises while every one-op network through the same weights is
at chance, and the theta gradient no longer tells good ops from bad ones. This module measures it: the
top-1 of fixed paths through the supernet's current weights, on images the weights never train on.

- the argmax path (every layer's most likely op), and
- ``samples`` paths drawn from softmax(thetas) with a generator of their own (seeded by the epoch, so
  the search's random stream and its exact resume are untouched); their mean top-1 is reported.

Each path runs with batch-norm in training mode, i.e. on the batch's own statistics (the running
statistics follow the mixture, not the path, as single-path NAS recalibrates BN before evaluating);
every BN buffer is restored afterwards, so probing changes nothing in the search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from general_functions.distributed import reduce_meters, unwrap
from general_functions.utils import AverageMeter, accuracy

__all__ = ["probe_paths", "sample_paths"]


def sample_paths(probabilities: torch.Tensor, samples: int, seed: int) -> list[list[int]]:
    """``samples`` paths (one op index per layer) drawn from ``probabilities`` ``[layers, ops]``."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(probabilities.float(), samples, replacement=True, generator=gen)
    return draws.t().tolist()


@torch.no_grad()
def _path_top1(model, path: Sequence[int], loader, max_batches: int) -> float:
    meter = AverageMeter()
    for step, (x, y) in enumerate(loader):
        if max_batches and step >= max_batches:
            break
        meter.update(accuracy(model.forward_path(x, path), y)[0], y.shape[0])
    return reduce_meters({"top1": meter})["top1"]


def probe_paths(model, loader, samples: int = 5, seed: int = 0, max_batches: int = 0) -> dict:
    """Top-1 (%) of the argmax path and of ``samples`` drawn paths through ``model``'s weights.

    Returns ``{"argmax_top1", "sampled_top1_mean", "sampled_top1_min", "sampled_top1_max"}``; the
    model's mode and every BN buffer are as they were before.
    """
    net = unwrap(model)
    probabilities = net.probabilities()
    argmax = probabilities.argmax(dim=1).tolist()
    paths = [argmax, *sample_paths(probabilities, samples, seed)] if samples else [argmax]
    was_training = net.training
    saved = {name: buf.clone() for name, buf in net.named_buffers() if _is_bn_buffer(net, name)}
    net.train()  # batch statistics; the buffers the passes update are restored below
    try:
        top1 = [_path_top1(net, path, loader, max_batches) for path in paths]
    finally:
        buffers = dict(net.named_buffers())
        for name, value in saved.items():
            buffers[name].copy_(value)
        net.train(was_training)
    drawn = top1[1:] or [float("nan")]
    return {
        "argmax_top1": top1[0],
        "sampled_top1_mean": sum(drawn) / len(drawn),
        "sampled_top1_min": min(drawn),
        "sampled_top1_max": max(drawn),
    }


def _is_bn_buffer(net: nn.Module, name: str) -> bool:
    module_name = name.rpartition(".")[0]
    return isinstance(net.get_submodule(module_name), nn.modules.batchnorm._BatchNorm)
