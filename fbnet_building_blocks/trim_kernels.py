"""Exact speed-up for depthwise convolutions whose kernel overhangs a small feature map.

With the ``fbnet`` macro on 32x32 images the last stages run 5x5 depthwise convolutions (padding 2) on 2x2
and 1x1 maps. Every kernel tap outside the central ``(min(k, ...))`` window only ever multiplies zero
padding, yet CPU convolution kernels still pay for all 25 taps, and oneDNN's depthwise kernels are slow
at these shapes (docs/performance.md measures the step with and without trimming).

:class:`TrimmedConv2d` computes the same convolution with only the taps that can touch the input: the
kernel is sliced at run time (``weight[..., lo:hi]``) and the padding reduced to match, so the parameters,
their names in ``state_dict`` and their gradients (exactly zero on the unused taps, as before) are
unchanged. Only the order of floating-point additions can differ from the full convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TrimmedConv2d", "padded", "trim_depthwise_convs", "trimmed_conv2d", "used_taps"]


def used_taps(length: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """``(lo, hi, pad_before, pad_after)``: taps ``lo..hi-1`` touch the input of size ``length``.

    Output ``i`` reads input positions ``i*stride - padding + u`` for taps ``u`` in ``[0, kernel)``;
    a tap is kept when some output reads a real (not padded) position with it.
    """
    out = (length + 2 * padding - kernel) // stride + 1
    lo = max(0, padding - (out - 1) * stride)
    hi = min(kernel, padding + length)
    before = padding - lo
    after = max(0, (out - 1) * stride + (hi - lo) - before - length)
    return lo, hi, before, after


def trimmed_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, 1, groups)``, with only the taps that touch ``x``."""
    h, w = x.shape[-2:]
    (kh, kw), (sh, sw), (ph, pw) = weight.shape[-2:], stride, padding
    lo_h, hi_h, bh, ah = used_taps(h, kh, sh, ph)
    lo_w, hi_w, bw, aw = used_taps(w, kw, sw, pw)
    if (lo_h, hi_h, lo_w, hi_w) == (0, kh, 0, kw):  # the map is large enough: every tap is used
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)
    out_h = (h + 2 * ph - kh) // sh + 1
    out_w = (w + 2 * pw - kw) // sw + 1
    x, padding = padded(x, (bw, aw, bh, ah))
    y = F.conv2d(x, weight[:, :, lo_h:hi_h, lo_w:hi_w], bias, (sh, sw), padding, 1, groups)
    return y[:, :, :out_h, :out_w]


def padded(x: torch.Tensor, pads: tuple[int, int, int, int]) -> tuple[torch.Tensor, tuple]:
    """``(input, padding)`` for a convolution with ``F.pad``'s ``pads`` (left, right, top, bottom):
    ``x`` and the convolution's own padding when it is symmetric, else a padded copy and 0."""
    left, right, top, bottom = pads
    if left == right and top == bottom:
        return x, (top, left)
    return F.pad(x, pads), (0, 0)


class TrimmedConv2d(nn.Conv2d):
    """A drop-in :class:`nn.Conv2d` (zero padding, dilation 1) that skips kernel taps on padding only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return trimmed_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)


def trim_depthwise_convs(model: nn.Module) -> int:
    """Turn every eligible depthwise ``nn.Conv2d`` of ``model`` into a :class:`TrimmedConv2d`, in place.

    The modules keep their identity, parameters and ``state_dict`` names. Returns how many changed.
    """
    count = 0
    for child in model.modules():
        if (
            type(child) is nn.Conv2d
            and child.groups == child.in_channels == child.out_channels
            and child.padding_mode == "zeros"
            and child.dilation == (1, 1)
            and isinstance(child.padding, tuple)
            and max(child.kernel_size) > 1
        ):
            child.__class__ = TrimmedConv2d  # same object: parameters, names, hooks all kept
            count += 1
    return count
