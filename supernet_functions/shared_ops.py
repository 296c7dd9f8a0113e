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

Tied weights also mean that a soft mixture of the ops (the theta steps) computes the same channels
several times when the ops run one by one: :class:`SharedMixture` computes each once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.blocks import channel_unshuffle
from fbnet_building_blocks.registry import get_op_args
from fbnet_building_blocks.structure import Structure
from supernet_functions.speed import conv1x1_matrix

__all__ = ["SharedInvertedResiduals", "SharedMixture", "SharedOp"]


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


def _dense_matrix(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The ``[out, in]`` matrix of the grouped 1x1 convolution made of ``weight``'s diagonal blocks."""
    return conv1x1_matrix(weight if groups == 1 else _diagonal_blocks(weight, groups), groups)


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


@dataclass
class _Branch:
    """Ops of a layer whose expansions share their channels. ``groups == 1``: every dense op, op ``i``
    using the first ``expansion_i * in`` of ``hidden`` channels; else the ops of one grouped expansion,
    all ``hidden`` channels each, held in the order before the channel shuffle (``unshuffle``)."""

    groups: int
    ops: list[int]  # indices into the layer's candidates
    hidden: int
    unshuffle: torch.Tensor | None


class SharedMixture:
    """``sum_i m_i * op_i(x)`` over a layer whose ops share their weights, each shared channel once.

    Built by :func:`~supernet_functions.speed.prepare_supernet` (``--fuse_ops``) for a layer with
    ``--weight_sharing``. In training mode BN normalises with the batch's statistics, so channels
    made from the same input with the same weights are equal whichever op computes them:

    - the dense ops' expansions are prefixes of one ``[e_max * in, in]`` GEMM, and their BN + ReLU
      outputs prefixes of one BN + ReLU call; the 2-group ops share another expansion (stacked into
      the same GEMM and BN call);
    - the depthwise convolution of kernel ``k`` runs once over those channels (the dense ops of
      kernel ``k`` use its first ``e * in`` channels); a channel shuffle is folded into the depthwise
      weights and the projection's columns; on maps where a larger kernel's outer taps see only
      padding (5x5 on 2x2 and 1x1 maps), its ops take the smaller kernel's outputs
      (:meth:`_kernel_groups`);
    - the dense projections are prefix sums over column chunks: ``P_3 = P_1 + (chunk 2)``, and so on;
    - each op's projection keeps its own BN statistics; one BN call normalises them side by side,
      with the mixing weights folded into its affine part, and a sum mixes them.

    Every op's running statistics are updated as its own forward would update them (its rows of the
    shared buffers, from the same batch statistics). It applies (:meth:`applies`) in training mode,
    to one mixing weight per candidate, outside autocast; in evaluation mode each op normalises with
    its own running statistics, so the ops run one by one. Activations are kept for the backward pass
    (``--recompute`` does not act here; the mixture keeps fewer than the ops one by one).
    Only the order of floating-point additions differs (``tests/test_fused_candidates.py``).
    """

    def __init__(self, ops: list[nn.Module], shared: SharedInvertedResiduals) -> None:
        self.ops, self.shared = ops, shared
        self.in_channels = shared.pw.shape[1]
        mine = [i for i, op in enumerate(ops) if isinstance(op, SharedOp) and op.shared is shared]
        self.others = [i for i in range(len(ops)) if i not in mine]
        by_key: dict[tuple[int, int], list[int]] = {}
        for i in mine:  # dense ops together; grouped ones by (expansion, groups)
            key = (0, 1) if ops[i].groups == 1 else (ops[i].expansion, ops[i].groups)
            by_key.setdefault(key, []).append(i)
        self.branches = []
        for (_, groups), members in by_key.items():
            hidden = max(ops[i].expansion for i in members) * self.in_channels
            unshuffle = None
            if groups > 1:
                unshuffle = channel_unshuffle(hidden, groups).to(shared.pw.device)
            self.branches.append(_Branch(groups, members, hidden, unshuffle))
        self.kernels = sorted({ops[i].kernel for i in mine})
        self.order = [i for k in self.kernels for b in self.branches for i in self._of(b, (k,))]
        self.rows = torch.tensor([ops[i].index for i in self.order], device=shared.pw.device)

    def _of(self, branch: _Branch, kernels: tuple[int, ...]) -> list[int]:
        """The ops of ``branch`` whose depthwise kernel size is in ``kernels``, by expansion."""
        ops = [i for i in branch.ops if self.ops[i].kernel in kernels]
        return sorted(ops, key=lambda i: self.ops[i].expansion)

    def _kernel_groups(self, height: int, width: int) -> list[tuple[int, ...]]:
        """Kernel sizes that compute the same convolution on a ``height`` x ``width`` map, grouped.

        With padding ``k // 2``, a tap at offset ``d`` from a kernel's centre sees the map only where
        ``|d|`` is less than its side, so on maps of side at most ``k0 // 2 + 1`` a larger kernel's
        taps beyond the centre ``k0`` x ``k0`` see only padding: the shared ``k`` x ``k`` kernel
        computes what its ``k0`` x ``k0`` centre does (3x3 and 5x5 on 2x2 and 1x1 maps).
        """
        groups: list[tuple[int, ...]] = []
        for k in self.kernels:  # ascending
            if groups and max(height, width) <= groups[-1][0] // 2 + 1:
                groups[-1] += (k,)
            else:
                groups.append((k,))
        return groups

    def _width(self, i: int, branch: _Branch) -> int:
        return self.ops[i].expansion * self.in_channels if branch.groups == 1 else branch.hidden

    def applies(self, x: torch.Tensor, weights: torch.Tensor) -> bool:
        return (
            weights.dim() == 1
            and x.dim() == 4
            and self.shared.bn_pw.training
            and not torch.is_autocast_enabled(x.device.type)
        )

    def __call__(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        s = self.shared
        expand = torch.cat([_dense_matrix(s.pw[: b.hidden], b.groups) for b in self.branches])
        h = s.conv1x1(x, expand[:, :, None, None], None, 1)
        h = self._batch_norm(h, s.bn_pw, self.branches).relu_()
        starts = [0]
        for b in self.branches:
            starts.append(starts[-1] + b.hidden)
        projections = {}
        for kernels in self._kernel_groups(*x.shape[-2:]):  # one depthwise conv per group
            k = kernels[0]  # the smallest: its taps are all that see the map
            used = [(b, start) for b, start in zip(self.branches, starts) if self._of(b, kernels)]
            widths = [max(self._width(i, b) for i in self._of(b, kernels)) for b, _ in used]
            trim = (s.kernel_size - k) // 2
            dw = s.dw[:, :, trim : s.kernel_size - trim, trim : s.kernel_size - trim]
            dw = torch.cat(
                [
                    dw[:w] if b.unshuffle is None else dw[b.unshuffle]
                    for (b, _), w in zip(used, widths)
                ]
            )
            every = len(used) == len(self.branches) and widths == [b.hidden for b, _ in used]
            hk = h if every else torch.cat([h[:, a : a + w] for (_, a), w in zip(used, widths)], 1)
            d = s.depthwise(hk, dw, (s.stride, s.stride), (k // 2, k // 2))
            if s.bn_dw is not None:
                d = self._batch_norm(d, s.bn_dw, [b for b, _ in used], widths, kernels).relu_()
            parts = d.permute(0, 2, 3, 1).split(widths, dim=-1)  # [B, H, W, C] each
            for (b, _), part in zip(used, parts):
                pwl = _dense_matrix(s.pwl[:, : b.hidden], b.groups)
                if b.groups > 1:
                    y = F.linear(part, pwl[:, b.unshuffle])
                    projections.update(dict.fromkeys(self._of(b, kernels), y))
                    continue
                ops = self._of(b, kernels)  # by expansion: prefix sums over column chunks
                ends = sorted({self._width(i, b) for i in ops})
                sums = {}
                chunks = part.split([hi - lo for lo, hi in zip([0, *ends], ends)], dim=-1)
                for start, end, chunk in zip([0, *ends], ends, chunks):
                    y = F.linear(chunk, pwl[:, start:end])
                    sums[end] = y if not sums else sums[start] + y
                projections.update({i: sums[self._width(i, b)] for i in ops})
        return self._mix(x, weights, projections)

    def _mix(self, x: torch.Tensor, weights: torch.Tensor, projections: dict) -> torch.Tensor:
        """``sum_i m_i * BN_i(projection_i)`` (one BN call, each op's own statistics), skip added."""
        s, bn = self.shared, self.shared.bn_pwl
        order, rows = self.order, self.rows
        m = weights[order]
        n, out_channels = len(order), bn.weight.shape[0]
        p = torch.cat([projections[i] for i in order], dim=-1).permute(0, 3, 1, 2)
        scale = m.repeat_interleave(out_channels)
        mean, var = bn.running_mean[rows].flatten(), bn.running_var[rows].flatten()
        z = F.batch_norm(
            p,
            mean,
            var,
            bn.weight.repeat(n) * scale,
            bn.bias.repeat(n) * scale,
            True,
            bn.momentum,
            bn.eps,
        )
        with torch.no_grad():
            bn.running_mean.index_copy_(0, rows, mean.view(n, -1))
            bn.running_var.index_copy_(0, rows, var.view(n, -1))
        out = z.permute(0, 2, 3, 1).unflatten(-1, (n, out_channels)).sum(-2).permute(0, 3, 1, 2)
        if s.has_skip:
            out = out + m.sum() * x
        for i in self.others:
            out = out + weights[i] * self.ops[i](x)
        return out

    def _batch_norm(
        self, x, bn: _SharedBN, branches: list[_Branch], widths=None, kernels=None
    ) -> torch.Tensor:
        """``bn`` on the stacked channels of ``branches`` (``widths`` of each) with this batch's
        statistics, which update the running statistics of every op that uses them. ``kernels=None``:
        the expansion's BN (every op, channels before the shuffle); else the depthwise BN of the ops
        of those kernel sizes (grouped branches' channels held before the shuffle, the BN's after it)."""
        widths = widths or [b.hidden for b in branches]
        after_dw = kernels is not None

        def channels(t: torch.Tensor, b: _Branch, w: int) -> torch.Tensor:
            return t[b.unshuffle] if after_dw and b.unshuffle is not None else t[:w]

        weight = torch.cat([channels(bn.weight, b, w) for b, w in zip(branches, widths)])
        bias = torch.cat([channels(bn.bias, b, w) for b, w in zip(branches, widths)])
        mean, var = x.new_zeros(x.shape[1]), x.new_ones(x.shape[1])
        y = F.batch_norm(x, mean, var, weight, bias, True, 1.0, bn.eps)  # mean, var: the batch's
        with torch.no_grad():
            offset = 0
            for b, w in zip(branches, widths):
                stats = mean[offset : offset + w], var[offset : offset + w]
                if after_dw and b.unshuffle is not None:  # in the op's channel order
                    stats = tuple(t[torch.argsort(b.unshuffle)] for t in stats)
                for i in b.ops if kernels is None else self._of(b, kernels):
                    row, width = self.ops[i].index, self._width(i, b)
                    for running, batch in zip((bn.running_mean, bn.running_var), stats):
                        running[row, :width].mul_(1 - bn.momentum).add_(
                            batch[:width], alpha=bn.momentum
                        )
                offset += w
        return y
