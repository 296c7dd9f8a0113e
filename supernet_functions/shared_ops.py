"""One layer's inverted-residual candidates as views of one set of weights (``--weight_sharing True``).

FBNet's supernet gives every candidate op of a layer its own weights. Trained on single paths (one op per
layer, ``--w_mixing sampled``), such a supernet does not learn on CIFAR-10 at this project's budgets: each
op's output channels mean something different, so a layer sees a different input code at every step
(docs/experiments.md, "Which supernet keeps serving paths"). Here the eight inverted-residual ops of a
layer share their convolutions, as once-for-all (Cai et al., ICLR 2020) and FBNetV2 (Wan et al., CVPR
2020) share theirs:

- the expansion conv is one ``[6 * in, in]`` matrix: expansion ``e`` uses its first ``e * in`` rows;
  a 2-group op uses the two diagonal blocks of the first ``in`` rows (a grouped conv), then the shuffle;
- the depthwise conv is one 5x5 kernel per channel: a 3x3 op uses its centre;
- the projection conv is one ``[out, 6 * in]`` matrix: expansion ``e`` uses its first ``e * in``
  columns (2-group: the diagonal blocks);
- each BN shares its scale and shift (sliced like the convs) and keeps running statistics per op, since
  every op's activations have their own statistics.

So every op's channel ``c`` means the same thing, whichever op runs. Each op still computes exactly the
block of :class:`~fbnet_building_blocks.blocks.InvertedResidual` (same structure, same shapes), only with
weights tied to its neighbours'; a searched network is retrained from scratch with its own weights. The
``skip`` op keeps its own module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.registry import get_op_args
from fbnet_building_blocks.structure import Structure

__all__ = ["SharedInvertedResiduals", "SharedOp"]


def _diagonal_blocks(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The grouped-conv weight made of the ``groups`` diagonal blocks of a dense ``[out, in]`` one."""
    out_ch, in_ch = weight.shape[:2]
    o, i = out_ch // groups, in_ch // groups
    return torch.cat([weight[g * o : (g + 1) * o, g * i : (g + 1) * i] for g in range(groups)])


class _SharedBN(nn.Module):
    """BatchNorm with a shared scale and shift (the first ``n`` channels) and per-op running stats."""

    def __init__(self, channels: int, ops: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(ops, channels))
        self.register_buffer("running_var", torch.ones(ops, channels))
        self.eps, self.momentum = eps, momentum

    def forward(self, x: torch.Tensor, op: int) -> torch.Tensor:
        n = x.shape[1]
        return F.batch_norm(
            x,
            self.running_mean[op, :n],
            self.running_var[op, :n],
            self.weight[:n],
            self.bias[:n],
            self.training,
            self.momentum,
            self.eps,
        )


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias=None, groups: int = 1) -> torch.Tensor:
    return F.conv2d(x, weight, bias, groups=groups)


def _depthwise(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> torch.Tensor:
    return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])


class SharedInvertedResiduals(nn.Module):
    """The shared weights of every inverted-residual op of one layer; :class:`SharedOp` runs one op.

    ``conv1x1`` and ``depthwise`` compute its convolutions (``F.conv2d``);
    :func:`~supernet_functions.speed.prepare_supernet` replaces them with the exact fast forms of
    :mod:`supernet_functions.speed`, as it does for the modules of unshared ops.
    """

    conv1x1 = staticmethod(_conv1x1)
    depthwise = staticmethod(_depthwise)

    def __init__(
        self,
        ops: list[str],
        in_channels: int,
        out_channels: int,
        stride: int,
        structure: Structure,
    ) -> None:
        super().__init__()
        args = [get_op_args(op) for op in ops]
        self.expansion = max(a.expansion for a in args)
        self.kernel_size = max(a.kernel_size for a in args)
        hidden = in_channels * self.expansion
        k = self.kernel_size
        self.pw = nn.Parameter(torch.empty(hidden, in_channels, 1, 1))
        self.dw = nn.Parameter(torch.empty(hidden, 1, k, k))
        self.pwl = nn.Parameter(torch.empty(out_channels, hidden, 1, 1))
        self.bn_pw = _SharedBN(hidden, len(ops))
        self.bn_dw = _SharedBN(hidden, len(ops)) if structure.dw_bn_relu else None
        self.bn_pwl = _SharedBN(out_channels, len(ops))
        self.stride = stride
        self.has_skip = stride == 1 and in_channels == out_channels
        for w in (self.pw, self.dw, self.pwl):  # fan-out Kaiming, as init_weights gives the convs
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")

    def run(self, x: torch.Tensor, index: int, kernel: int, expansion: int, groups: int):
        """The block of op ``index`` (its kernel, expansion and groups) on ``x``."""
        in_ch = x.shape[1]
        hidden = in_ch * expansion
        pw = self.pw[:hidden]
        if groups > 1:
            pw = _diagonal_blocks(pw, groups)
        h = F.relu(self.bn_pw(self.conv1x1(x, pw, None, groups), index))
        if groups > 1:
            h = F.channel_shuffle(h, groups)
        trim = (self.kernel_size - kernel) // 2
        dw = self.dw[:hidden, :, trim : self.kernel_size - trim, trim : self.kernel_size - trim]
        h = self.depthwise(h, dw, (self.stride, self.stride), (kernel // 2, kernel // 2))
        if self.bn_dw is not None:
            h = F.relu(self.bn_dw(h, index))
        pwl = self.pwl[:, :hidden]
        if groups > 1:
            pwl = _diagonal_blocks(pwl, groups)
        out = self.bn_pwl(self.conv1x1(h, pwl, None, groups), index)
        return out + x if self.has_skip else out


class SharedOp(nn.Module):
    """One candidate op of a layer, computed with the layer's :class:`SharedInvertedResiduals`."""

    def __init__(self, shared: SharedInvertedResiduals, index: int, op: str) -> None:
        super().__init__()
        args = get_op_args(op)
        # kept out of the module tree: the shared weights belong to the layer, not to each op
        self.__dict__["shared"] = shared
        self.index, self.kernel, self.expansion, self.groups = (
            index,
            args.kernel_size,
            args.expansion,
            args.groups,
        )
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.run(x, self.index, self.kernel, self.expansion, self.groups)

    def extra_repr(self) -> str:
        return f"{self.op}, shared weights"
