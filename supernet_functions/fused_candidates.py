"""A searched layer's inverted-residual candidates computed together: the same mixture, fewer calls.

The soft supernet runs every candidate of a layer on the same input and mixes the outputs (paper Eq. 6).
Run one by one, a layer of the ``fbnet`` space makes eight expansion GEMMs, eight BN and ReLU calls,
eight depthwise convolutions, eight projections, eight more BN calls and a weighted sum. On the small
maps of the later layers each call costs more in overhead than in arithmetic (docs/performance.md), and
most of these calls can be merged without changing what is computed:

- The expansion 1x1 convolutions read the same input: one GEMM with their weight matrices stacked (a
  grouped convolution as its block-diagonal matrix).
- BN is per channel, so the stacked expansion outputs take one BN call with the ops' scales, shifts and
  running statistics stacked, and one ReLU.
- The depthwise convolutions of equal kernel size are one depthwise convolution over the stacked
  channels; ops with different kernels make separate groups.
- A channel shuffle (the ``_g2`` ops) is a fixed permutation of channels. It is folded into the
  depthwise weights (and the BN after them, if any) and the columns of the projection matrix, so no
  shuffle runs.
- Each projection is one GEMM on its op's slice of the channels, written side by side; one BN call
  normalises all of them, with the mixing weight folded into its affine part
  (``m * (gamma * x_hat + beta) = (m * gamma) * x_hat + m * beta``), and a sum over the ops mixes them.

The parameters, buffers and ``state_dict`` stay in the ops: :class:`FusedCandidates` only holds references
to them and gathers their tensors at every call, so gradients reach each op's own parameters, and the
running statistics are written back to each op's BN after the call. Only the order of floating-point
additions differs from running the ops one by one (``tests/test_fused_candidates.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.blocks import ChannelShuffle, InvertedResidual, channel_unshuffle
from supernet_functions.recompute import BatchNormReLU2d, batch_norm_relu, is_recomputing
from supernet_functions.speed import conv1x1_matrix

__all__ = ["FusedCandidates", "fuse_candidates"]


@dataclass
class _Group:
    """The inverted-residual ops of one depthwise kernel size, in the order their channels are stacked."""

    ops: list[int]  # indices into the layer's candidates
    pw: list[nn.Conv2d]
    bn_pw: list[nn.BatchNorm2d]
    dw: list[nn.Conv2d]
    bn_dw: list[nn.BatchNorm2d] | None  # None: bare depthwise convolutions
    pwl: list[nn.Conv2d]
    unshuffle: list[torch.Tensor | None]  # per op: the inverse of its channel shuffle, or None

    @property
    def hidden(self) -> list[int]:
        return [conv.out_channels for conv in self.pw]


class FusedCandidates:
    """``sum_i m_i * op_i(x)`` over a layer's candidate ops, the inverted-residual ones together.

    Use :func:`fuse_candidates` to build one. It applies (:meth:`applies`) to one mixing weight per
    candidate (not per example), channels_last inputs, outside autocast, where the batch times the
    output pixels (the rows of the projection GEMMs) is at most ``max_rows``;
    :class:`~supernet_functions.model_supernet.MixedOperation` runs its ops one by one otherwise.
    Merging saves per-call overhead, which matters where a call has little work: measured layer by
    layer on this project's CPU (``bench/bench_fused_layers.py``), it was faster at 2048 rows and
    fewer (4x4 outputs at batch 128, 8x8 at batch 32), slower at 8192 (16x16 at batch 32), and gained
    little or nothing at 8192 on 8x8 outputs at batch 128, where its larger stacked tensors also
    raised the peak RSS (docs/performance.md).
    """

    max_rows = 2048

    def __init__(
        self, ops: list[nn.Module], groups: list[_Group], pointwise: Callable, depthwise: Callable
    ) -> None:
        self.ops = ops
        self.groups = groups
        self.order = [i for g in groups for i in g.ops]
        self.others = [i for i in range(len(ops)) if i not in self.order]
        self.has_skip = ops[self.order[0]].has_skip
        self.out_channels = groups[0].pwl[0].out_channels
        self.bn_pwl = [ops[i].conv_pwl[1] for i in self.order]
        self.pointwise, self.depthwise = pointwise, depthwise
        self.stride = groups[0].dw[0].stride

    def applies(self, x: torch.Tensor, weights: torch.Tensor) -> bool:
        return (
            weights.dim() == 1
            and x.dim() == 4
            and x.shape[0] * -(-x.shape[2] // self.stride[0]) * -(-x.shape[3] // self.stride[1])
            <= self.max_rows
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled(x.device.type)
        )

    def __call__(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        projections = [p for g in self.groups for p in self._group(g, x)]  # [B, H, W, C_out] each
        p = torch.cat(projections, dim=-1).permute(0, 3, 1, 2)  # [B, n * C_out, H, W]
        m = weights[self.order]
        scale = m.repeat_interleave(self.out_channels)
        z = _batch_norm(p, self.bn_pwl, scale=scale)  # m_i * BN_i(projection_i), side by side
        out = z.permute(0, 2, 3, 1).unflatten(-1, (len(self.order), -1)).sum(-2)
        out = out.permute(0, 3, 1, 2)  # [B, C_out, H, W], channels_last
        if self.has_skip:
            out = out + m.sum() * x
        for i in self.others:
            out = out + weights[i] * self.ops[i](x)
        return out

    def _group(self, g: _Group, x: torch.Tensor) -> list[torch.Tensor]:
        """The projections (before their BN) of one group's ops, each ``[B, H, W, C_out]``."""
        expand = torch.cat([_matrix(conv) for conv in g.pw])  # [sum hidden, C_in]
        c = self.pointwise(x, expand[:, :, None, None], recompute=is_recomputing())
        y = _batch_norm(c, g.bn_pw, relu=True)
        dw = torch.cat(
            [conv.weight if u is None else conv.weight[u] for conv, u in zip(g.dw, g.unshuffle)]
        )
        d = self.depthwise(y, dw, g.dw[0].stride, g.dw[0].padding)
        if g.bn_dw is not None:
            d = _batch_norm(d, g.bn_dw, relu=True, index=g.unshuffle)
        parts = d.permute(0, 2, 3, 1).split(g.hidden, dim=-1)
        return [
            F.linear(part, _matrix(conv, u)) for part, conv, u in zip(parts, g.pwl, g.unshuffle)
        ]


def _matrix(conv: nn.Conv2d, columns: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution's ``[C_out, C_in]`` matrix (block-diagonal for groups), columns reordered."""
    matrix = conv1x1_matrix(conv.weight, conv.groups)
    return matrix if columns is None else matrix[:, columns]


def _batch_norm(
    x: torch.Tensor,
    bns: list[nn.BatchNorm2d],
    relu: bool = False,
    scale: torch.Tensor | None = None,
    index: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """``bns`` applied to their stacked channels of ``x`` in one call (then ReLU); ``scale``
    multiplies the affine part; ``index[i]``: BN ``i``'s channels in the order ``x`` holds them.

    In training mode the batch statistics update each BN's running statistics, as its forward would.
    """
    index = index or [None] * len(bns)

    def stacked(name: str) -> torch.Tensor:
        return torch.cat(
            [getattr(bn, name) if i is None else getattr(bn, name)[i] for bn, i in zip(bns, index)]
        )

    weight, bias = stacked("weight"), stacked("bias")
    if scale is not None:
        weight, bias = weight * scale, bias * scale
    mean, var = stacked("running_mean"), stacked("running_var")
    bn = bns[0]
    if not bn.training:
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, bn.eps)
        return y.relu_() if relu else y
    if relu and is_recomputing():
        y = batch_norm_relu(x, weight, bias, mean, var, bn.momentum, bn.eps)
    else:
        y = F.batch_norm(x, mean, var, weight, bias, True, bn.momentum, bn.eps)
        y = y.relu_() if relu else y
    with torch.no_grad():
        sizes = [b.num_features for b in bns]
        for b, i, m, v in zip(bns, index, mean.split(sizes), var.split(sizes)):
            if i is None:
                b.running_mean.copy_(m)
                b.running_var.copy_(v)
            else:
                b.running_mean.index_copy_(0, i, m)
                b.running_var.index_copy_(0, i, v)
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return y


def fuse_candidates(
    ops: list[nn.Module], pointwise: Callable, depthwise: Callable | None = None
) -> FusedCandidates | None:
    """A :class:`FusedCandidates` for a layer's candidate ``ops``, or None when fewer than two of them
    are plain inverted-residual blocks that can be merged (no squeeze-excitation, BN with running
    statistics and a momentum).

    ``pointwise(x, weight, recompute=...)`` computes the stacked expansion (a 1x1 convolution), and
    ``depthwise(x, weight, stride, padding)`` the stacked depthwise convolution (default: the
    library's). :func:`~supernet_functions.speed.prepare_supernet` passes its own, so the
    merged ops run the same kernels as the ops they replace.
    """
    parts = {i: _parts(op) for i, op in enumerate(ops)}
    parts = {i: p for i, p in parts.items() if p is not None}
    if len(parts) < 2:
        return None
    bns = [
        bn for i, p in parts.items() for bn in (p[1], p[4], ops[i].conv_pwl[1]) if bn is not None
    ]
    if len({(bn.eps, bn.momentum) for bn in bns}) != 1:
        return None
    groups: dict[tuple, _Group] = {}
    for i, (pw, bn_pw, unshuffle, dw, bn_dw, pwl) in parts.items():
        key = (dw.kernel_size, dw.stride, dw.padding, bn_dw is None)
        g = groups.setdefault(key, _Group([], [], [], [], None if bn_dw is None else [], [], []))
        g.ops.append(i)
        g.pw.append(pw)
        g.bn_pw.append(bn_pw)
        g.dw.append(dw)
        if bn_dw is not None:
            g.bn_dw.append(bn_dw)
        g.pwl.append(pwl)
        g.unshuffle.append(unshuffle)
    return FusedCandidates(ops, list(groups.values()), pointwise, depthwise or _depthwise)


def _depthwise(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> torch.Tensor:
    return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])


def _parts(op: nn.Module):
    """``(pw, bn_pw, unshuffle, dw, bn_dw, pwl)`` of a block that :class:`FusedCandidates` can merge
    (``bn_pw``/``bn_dw`` are followed by a ReLU, the projection's BN is ``op.conv_pwl[1]``), else None."""
    if type(op) is not InvertedResidual or not isinstance(op.se, nn.Identity):
        return None
    pw, bn_pw, *relu = op.conv_pw
    dw, *dw_rest = op.conv_dw
    pwl, *pwl_rest = op.conv_pwl
    groups = pw.groups
    bns = [bn_pw, *dw_rest[:1], *pwl_rest[:1]]
    plain = (
        all(_is_pointwise(c) and c.groups == groups for c in (pw, pwl))
        and dw.groups == dw.in_channels == dw.out_channels == pw.out_channels
        and dw.bias is None
        and dw.padding_mode == "zeros"
        and dw.dilation == (1, 1)
        and len(relu) == 1
        and _relu_follows(bn_pw, relu[0])
        and (not dw_rest or (len(dw_rest) == 2 and _relu_follows(*dw_rest)))
        and len(pwl_rest) == 1
        and all(
            isinstance(bn, nn.BatchNorm2d)
            and bn.affine
            and bn.track_running_stats
            and bn.momentum is not None
            for bn in bns
        )
        and (
            groups == 1 or (isinstance(op.shuffle, ChannelShuffle) and op.shuffle.groups == groups)
        )
        and (groups > 1 or isinstance(op.shuffle, nn.Identity))
    )
    if not plain:
        return None
    unshuffle = None
    if groups > 1:
        unshuffle = channel_unshuffle(pw.out_channels, groups).to(pw.weight.device)
    return pw, bn_pw, unshuffle, dw, dw_rest[0] if dw_rest else None, pwl


def _relu_follows(bn: nn.Module, after: nn.Module) -> bool:
    """A ReLU, or the ``nn.Identity`` left by :func:`~supernet_functions.recompute.fuse_bn_relu`."""
    return isinstance(after, nn.ReLU) or (
        isinstance(bn, BatchNormReLU2d) and isinstance(after, nn.Identity)
    )


def _is_pointwise(conv: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and conv.bias is None
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
    )
