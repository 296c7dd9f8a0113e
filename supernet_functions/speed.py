"""Making supernet steps fast without changing what they compute (``bench/bench_supernet.py`` measures it).

A profile of a supernet step on 32x32 inputs (``torch.profiler``, docs/performance.md) showed where the
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
  most of its taps. :func:`prepare_supernet` swaps such convolutions for :class:`SmallMapDepthwiseConv2d`,
  a :class:`~fbnet_building_blocks.trim_kernels.TrimmedConv2d` (same parameters, same values, only the
  taps that touch the map; the architecture trainer uses it for the same reason).
- **Depthwise weight gradients on tiny maps.** After trimming, the largest cost left in a weight step
  was ``convolution_backward`` of depthwise convolutions with outputs of at most 2x2 pixels (10-20 ms a
  call at batch 32 for a few kilobytes of work). :class:`SmallMapDepthwiseConv2d` computes that weight
  gradient as one multiply-and-sum over the (at most 25) shifted copies of the input instead; the input
  gradient and the forward pass stay with the library's convolution.

Two settings that change the numerics or are CUDA's own are here too: mixed precision (``--amp``,
bfloat16 autocast on the run's device, off by default; :mod:`general_functions.precision`) and
``cudnn.benchmark`` (a no-op on a CPU).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.trim_kernels import TrimmedConv2d, used_taps
from general_functions.precision import autocast

__all__ = ["SmallMapDepthwiseConv2d", "prepare_supernet", "to_model_format"]

logger = logging.getLogger(__name__)


def prepare_supernet(
    model: nn.Module,
    device: torch.device,
    channels_last: bool = True,
    trim_kernels: bool = True,
    cudnn_benchmark: bool = False,
    amp: bool = False,
) -> nn.Module:
    """Move ``model`` to ``device`` and apply the speed-ups asked for, in place; returns it.

    ``channels_last`` and ``trim_kernels`` are exact. ``cudnn_benchmark`` acts on CUDA only;
    ``amp`` runs the forward pass under bfloat16 autocast on ``device``
    (:func:`general_functions.precision.autocast`) and hands float32 outputs to the loss.
    """
    model.to(device)
    if trim_kernels:
        from fbnet_building_blocks.trim_kernels import trim_depthwise_convs

        trim_depthwise_convs(model)
        for module in model.modules():
            if type(module) is TrimmedConv2d and module.bias is None:
                module.__class__ = SmallMapDepthwiseConv2d  # same object, parameters and names
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.channels_last = channels_last
    if device.type == "cuda" and cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if amp:
        model.forward = _AutocastForward(model.forward, device)
    return model


class _DepthwiseSmallMap(torch.autograd.Function):
    """Depthwise ``conv2d`` whose weight gradient is a multiply-and-sum over shifted inputs."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (sh, sw), (ph, pw) = ctx.stride, ctx.padding
        channels, _, kh, kw = weight.shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), channels,
                (True, False, False),
            )[0]  # fmt: skip
        if ctx.needs_input_grad[1]:
            _, _, ho, wo = grad.shape
            xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # [B, H, W, C]
            shifted = torch.stack(
                [
                    xp[:, u : u + sh * (ho - 1) + 1 : sh, v : v + sw * (wo - 1) + 1 : sw, :]
                    for u in range(kh)
                    for v in range(kw)
                ]
            )  # [taps, B, ho, wo, C]
            grad_w = (shifted * grad.permute(0, 2, 3, 1)).sum(dim=(1, 2, 3))
            grad_w = grad_w.t().reshape(channels, 1, kh, kw)
        return grad_x, grad_w, None, None


class SmallMapDepthwiseConv2d(TrimmedConv2d):
    """:class:`TrimmedConv2d` that computes the weight gradient itself when the output has <= 4 pixels.

    The same convolution, parameters and ``state_dict``; only the order of additions in the weight
    gradient differs from the library's kernel.
    """

    max_out_pixels = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if out_h * out_w > self.max_out_pixels or not torch.is_grad_enabled():
            return super().forward(x)
        lo_h, hi_h, bh, ah = used_taps(h, kh, sh, ph)
        lo_w, hi_w, bw, aw = used_taps(w, kw, sw, pw)
        weight = self.weight[:, :, lo_h:hi_h, lo_w:hi_w]
        if torch.is_autocast_enabled(x.device.type):  # the dtype autocast gives a library conv
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        if bh != ah or bw != aw:
            x = F.pad(x, (bw, aw, bh, ah))
            bh = bw = 0
        y = _DepthwiseSmallMap.apply(x, weight, (sh, sw), (bh, bw))
        return y[:, :, :out_h, :out_w]


def to_model_format(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` in the memory format of ``model`` (channels_last after :func:`prepare_supernet`).

    Optional: a convolution with channels_last weights returns channels_last outputs for any input.
    """
    net = getattr(model, "module", model)  # DDP
    if getattr(net, "channels_last", False) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class _AutocastForward:
    """``forward`` under bfloat16 autocast on ``device``, with float32 outputs for the loss."""

    def __init__(self, forward, device: torch.device) -> None:
        self.forward, self.device = forward, device

    def __call__(self, *args, **kwargs):
        with autocast(self.device, True):
            out = self.forward(*args, **kwargs)
        return tuple(t.float() for t in out) if isinstance(out, tuple) else out.float()
