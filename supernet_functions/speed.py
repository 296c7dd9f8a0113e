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
  call at batch 32 for a few kilobytes of work), and of 5x5 kernels on 4x4 maps.
  :class:`SmallMapDepthwiseConv2d` computes that weight gradient as a multiply-and-sum per kernel tap
  over the shifted input instead; the input gradient and the forward pass stay with the library's
  convolution.
- **1x1 convolutions on small maps.** After that, the costliest calls of a weight step were the
  backward passes of the 1x1 (expansion and projection) convolutions on 8x8 maps and smaller: a few
  milliseconds each for a GEMM of microseconds. In channels_last memory a 1x1 convolution is a matrix
  product over ``[pixels, channels]``, so on a CPU :func:`prepare_supernet` swaps them for
  :class:`PointwiseConv2d`, which runs it as ``F.linear`` (one BLAS GEMM per group, forward and
  backward).
- **Many small calls** (``fuse_ops``). On small outputs (4x4 at batch 128) a layer's inverted-residual
  candidates run together, in fewer and larger calls (:mod:`supernet_functions.fused_candidates`).
- **Memory** (``recompute``). The backward pass needs the activations of all nine ops of every
  layer. The outputs of BN + ReLU and of the expansion convolutions are computed again in the
  backward pass instead of kept (:mod:`supernet_functions.recompute`): less than half the live
  activation memory of a weight step, for about a tenth of its speed (docs/performance.md).

Two settings that change the numerics or are CUDA's own are here too: mixed precision (``--amp``,
bfloat16 autocast on the run's device, off by default; :mod:`general_functions.precision`) and
``cudnn.benchmark`` (a no-op on a CPU).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.trim_kernels import TrimmedConv2d, padded, trimmed_conv2d, used_taps
from general_functions.precision import autocast
from supernet_functions.recompute import fuse_bn_relu, remember

__all__ = [
    "PointwiseConv2d",
    "SmallMapDepthwiseConv2d",
    "depthwise_conv2d",
    "pointwise_conv2d",
    "prepare_supernet",
    "to_model_format",
]

logger = logging.getLogger(__name__)


def prepare_supernet(
    model: nn.Module,
    device: torch.device,
    channels_last: bool = True,
    trim_kernels: bool = True,
    cudnn_benchmark: bool = False,
    amp: bool = False,
    pointwise_gemm: bool = True,
    recompute: bool = True,
    fuse_ops: bool = True,
) -> nn.Module:
    """Move ``model`` to ``device`` and apply the speed-ups asked for, in place; returns it.

    ``channels_last`` and ``trim_kernels`` are exact; with ``channels_last`` and ``pointwise_gemm``
    on a CPU the 1x1 convolutions become :class:`PointwiseConv2d` (exact too).
    ``recompute``: BN + ReLU pairs become :class:`~supernet_functions.recompute.BatchNormReLU2d`, and
    weight steps (``model.recompute_activations``) save their outputs and those of the expansion
    GEMMs as recipes, computed again in the backward pass (:mod:`supernet_functions.recompute`).
    ``fuse_ops`` (with ``channels_last`` and ``pointwise_gemm``, on a CPU): each layer's
    inverted-residual candidates run together, in fewer and larger calls
    (:mod:`supernet_functions.fused_candidates`; exact). With ``--weight_sharing`` it acts on any
    device: a soft mixture computes each shared channel once
    (:class:`~supernet_functions.shared_ops.SharedMixture`; exact).
    ``cudnn_benchmark`` acts on CUDA only;
    ``amp`` runs the forward pass under bfloat16 autocast on ``device``
    (:func:`general_functions.precision.autocast`) and hands float32 outputs to the loss.
    """
    from supernet_functions.shared_ops import SharedInvertedResiduals

    model.to(device)
    shared = [m for m in model.modules() if isinstance(m, SharedInvertedResiduals)]
    if trim_kernels:
        from fbnet_building_blocks.trim_kernels import trim_depthwise_convs

        trim_depthwise_convs(model)
        for module in model.modules():
            if type(module) is TrimmedConv2d and module.bias is None:
                module.__class__ = SmallMapDepthwiseConv2d  # same object, parameters and names
        for module in shared:  # --weight_sharing: the layer's convolutions are functions
            module.depthwise = depthwise_conv2d
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if pointwise_gemm and device.type == "cpu":  # measured on CPUs only (docs/performance.md)
            for module in model.modules():
                if type(module) is nn.Conv2d and PointwiseConv2d.applies_to(module):
                    module.__class__ = PointwiseConv2d  # same object, parameters and names
            for module in shared:
                module.conv1x1 = pointwise_conv2d
    model.channels_last = channels_last
    if recompute:
        for conv in fuse_bn_relu(model):  # recompute the expansion GEMMs too: their outputs are
            if type(conv) is PointwiseConv2d:  # the fused BNs' inputs, so the chain keeps neither
                conv.recompute = True
    model.recompute_activations = recompute
    if fuse_ops:
        from supernet_functions.fused_candidates import fuse_candidates
        from supernet_functions.model_supernet import MixedOperation
        from supernet_functions.shared_ops import SharedMixture

        merge = channels_last and pointwise_gemm and device.type == "cpu"  # measured on CPUs
        for layer in (m for m in model.modules() if isinstance(m, MixedOperation)):
            if hasattr(layer, "shared"):  # less arithmetic, not only fewer calls: every device
                layer.fused = SharedMixture(list(layer.ops), layer.shared)
            elif merge:
                layer.fused = fuse_candidates(
                    list(layer.ops), pointwise_conv2d, depthwise_conv2d if trim_kernels else None
                )
    if device.type == "cuda" and cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if amp:
        model.forward = _AutocastForward(model.forward, device)
    return model


class _DepthwiseSmallMap(torch.autograd.Function):
    """Depthwise ``conv2d`` of ``F.pad(x, pads)`` whose weight gradient is a multiply-and-sum per tap.

    It keeps ``x`` (which the layer before keeps anyway), not its padded copy, for the backward pass,
    and sums each tap over the outputs whose input under it is on the map.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, pads):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.pads = stride, pads
        xin, padding = padded(x, pads)
        return F.conv2d(xin, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        sh, sw = ctx.stride
        left, _, top, _ = ctx.pads
        channels, _, kh, kw = weight.shape
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            xin, padding = padded(x, ctx.pads)
            grad_x = torch.ops.aten.convolution_backward(
                grad, xin, weight, None, ctx.stride, padding, (1, 1), False, (0, 0), channels,
                (True, False, False),
            )[0]  # fmt: skip
            if xin is not x:  # the gradient of the padded copy: crop it to x
                grad_x = grad_x[:, :, top : top + x.shape[2], left : left + x.shape[3]]
        if ctx.needs_input_grad[1]:
            _, _, ho, wo = grad.shape
            x_hw = x.permute(0, 2, 3, 1)  # [B, H, W, C]
            grad_hw = grad.permute(0, 2, 3, 1)  # [B, ho, wo, C]
            rows = [_on_map(u, top, sh, ho, x.shape[2]) for u in range(kh)]
            cols = [_on_map(v, left, sw, wo, x.shape[3]) for v in range(kw)]
            # One tap at a time (no [taps, B, ho, wo, C] copy), over the outputs whose input under
            # the tap is on the map: no padded copy, and no products with padding.
            taps = []
            for u, (i0, i1) in enumerate(rows):
                for v, (j0, j1) in enumerate(cols):
                    if i0 >= i1 or j0 >= j1:
                        taps.append(x.new_zeros(channels))
                        continue
                    r0, c0 = i0 * sh + u - top, j0 * sw + v - left
                    under = x_hw[
                        :,
                        r0 : r0 + sh * (i1 - i0 - 1) + 1 : sh,
                        c0 : c0 + sw * (j1 - j0 - 1) + 1 : sw,
                    ]
                    taps.append((under * grad_hw[:, i0:i1, j0:j1]).sum(dim=(0, 1, 2)))  # [C]
            grad_w = torch.stack(taps, dim=1).reshape(channels, 1, kh, kw)
        return grad_x, grad_w, None, None


def _on_map(tap: int, pad_before: int, stride: int, outputs: int, length: int) -> tuple[int, int]:
    """``(first, end)``: the outputs ``i`` whose input ``i * stride + tap - pad_before`` lies in
    ``[0, length)`` (the others read padding, whose product with the gradient is zero)."""
    first = max(0, -(-(pad_before - tap) // stride))
    end = min(outputs, (length - 1 + pad_before - tap) // stride + 1)
    return first, max(first, end)


class SmallMapDepthwiseConv2d(TrimmedConv2d):
    """:class:`TrimmedConv2d` that computes the weight gradient itself on small outputs.

    Where the library's depthwise weight gradient was measured slow on a CPU (docs/performance.md):
    outputs of at most 2x2 pixels, and 4x4 outputs of a 5x5 kernel at stride 1 (its 3x3 kernels and
    strided convolutions there were faster in the library). The same convolution, parameters and
    ``state_dict``; only the order of additions in the weight gradient differs from the library's.
    """

    max_out_pixels = 4
    max_out_pixels_5x5 = 16  # stride 1, all 25 taps on the map

    @classmethod
    def direct_weight_grad(cls, out_pixels: int, taps: int, stride: tuple[int, int]) -> bool:
        """Whether the weight gradient of this output size, kernel taps and stride is computed here."""
        if out_pixels <= cls.max_out_pixels:
            return True
        return out_pixels <= cls.max_out_pixels_5x5 and taps >= 25 and stride == (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            return super().forward(x)
        return depthwise_conv2d(x, self.weight, self.stride, self.padding)


def pointwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    groups: int = 1,
    recompute: bool = False,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, groups=groups)`` for a 1x1 ``weight``, as a GEMM where that is faster.

    In channels_last memory ``x`` is ``[batch, height, width, channels]`` underneath, so the
    convolution is one matrix product ``x @ W^T`` (a grouped one with the block-diagonal matrix of
    its groups' weights): one BLAS GEMM forward and two backward, where the library's convolution
    spends milliseconds outside the arithmetic on small maps. Measured per shape on a CPU, the GEMM
    was faster on maps of up to 8x8 pixels and the library's convolution on 16x16 maps at batch 128
    (docs/performance.md), so larger maps, and inputs that are not channels_last, take
    ``F.conv2d``. Only the order of additions differs. ``recompute``: the output is computed again
    in the backward pass (the same call) rather than kept (:func:`~supernet_functions.recompute.remember`).
    """
    if (
        x.dim() != 4
        or x.shape[2] * x.shape[3] > PointwiseConv2d.max_pixels
        or not x.is_contiguous(memory_format=torch.channels_last)
    ):
        y = _conv1x1(x, weight, bias, groups)
        if recompute:
            remember(y, _conv1x1, x, weight, bias, groups)
        return y
    matrix = conv1x1_matrix(weight, groups)
    y = _gemm(x, matrix, bias)  # [B, H, W, C_out]
    if recompute:
        remember(y, _gemm, x, matrix, bias)
    return y.permute(0, 3, 1, 2)  # [B, C_out, H, W] in channels_last memory


def conv1x1_matrix(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """A 1x1 convolution's weight as its ``[C_out, C_in]`` matrix: block-diagonal for ``groups``
    (zeros between the groups)."""
    matrix = weight.flatten(1)  # [C_out, C_in / groups]
    return matrix if groups == 1 else torch.block_diag(*matrix.chunk(groups, dim=0))


def _gemm(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.permute(0, 2, 3, 1), matrix, bias)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int):
    return F.conv2d(x, weight, bias, groups=groups)


def depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, groups=channels)``, trimmed and with the weight
    gradient computed by hand where :class:`SmallMapDepthwiseConv2d` says so."""
    h, w = x.shape[-2:]
    (kh, kw), (sh, sw), (ph, pw) = weight.shape[-2:], stride, padding
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    lo_h, hi_h, bh, ah = used_taps(h, kh, sh, ph)
    lo_w, hi_w, bw, aw = used_taps(w, kw, sw, pw)
    taps = (hi_h - lo_h) * (hi_w - lo_w)
    if torch.is_grad_enabled() and SmallMapDepthwiseConv2d.direct_weight_grad(
        out_h * out_w, taps, (sh, sw)
    ):
        weight = weight[:, :, lo_h:hi_h, lo_w:hi_w]
        if torch.is_autocast_enabled(x.device.type):  # the dtype a library conv gets
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        y = _DepthwiseSmallMap.apply(x, weight, (sh, sw), (bw, aw, bh, ah))
        return y[:, :, :out_h, :out_w]
    return trimmed_conv2d(x, weight, None, stride, padding, weight.shape[0])


class PointwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` 1x1 (stride 1, no padding) computed by :func:`pointwise_conv2d`.

    The same parameters, ``state_dict`` and output layout as the convolution it replaces.
    """

    max_pixels = 64  # maps of up to 8x8 pixels run as a GEMM
    recompute = False  # prepare_supernet: True before a BN + ReLU (an expansion conv)

    @staticmethod
    def applies_to(conv: nn.Conv2d) -> bool:
        """True for the convolutions this class computes: 1x1, stride 1, no padding or dilation."""
        return (
            conv.kernel_size == (1, 1)
            and conv.stride == (1, 1)
            and conv.padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv2d(x, self.weight, self.bias, self.groups, self.recompute)


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
