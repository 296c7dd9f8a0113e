"""The building blocks of FBNet (Wu et al., CVPR 2019, Sec. 3.2 and Fig. 3).

Every candidate op of a searched layer is either an inverted-residual block or a skip:

    InvertedResidual  = 1x1 conv (groups g) + BN + ReLU
                        [channel shuffle, if g > 1]
                        kxk depthwise conv (stride s) + BN + ReLU
                        1x1 conv (groups g) + BN            (no ReLU: a linear bottleneck)
                        [+ input, if stride 1 and in_channels == out_channels]
    Skip              = identity, or 1x1 conv + BN + ReLU where the layer changes stride or width

The block follows the paper and the authors' code, which keep BN + ReLU after the depthwise conv and keep
the first 1x1 conv even when the expansion is 1 (the published parameter and multiply-add counts of
FBNet-A/B/C include it). ``dw_bn_relu=False`` gives the original CIFAR-10 reproduction's retrained block,
whose depthwise conv has neither (its builder's ``dw_skip_bn``/``dw_skip_relu``). Squeeze-and-excitation
(Hu et al., 2018) is an option of the block, used by the extended op family only.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBNReLU", "ChannelShuffle", "SqueezeExcite", "InvertedResidual", "Skip"]


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional ReLU, with 'same' padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle (Zhang et al., 2018): interleave the channels of ``groups`` groups."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def channel_unshuffle(channels: int, groups: int) -> torch.Tensor:
    """Where each channel goes in :class:`ChannelShuffle`: channel ``i`` before the shuffle is channel
    ``channel_unshuffle(...)[i]`` after it (the inverse of the shuffle's order)."""
    shuffle = torch.arange(channels).view(groups, channels // groups).t().reshape(-1)
    return torch.argsort(shuffle)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 reduce + ReLU, 1x1 expand + sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = torch.sigmoid(self.expand(torch.relu(self.reduce(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """FBNet's inverted-residual block (paper Fig. 3; MobileNetV2 with grouped 1x1 convs and shuffle).

    Args:
        in_channels, out_channels: widths of the block's input and output.
        stride: stride of the depthwise conv (1 or 2).
        kernel_size: depthwise kernel (3, 5 or 7).
        expansion: hidden width = in_channels * expansion.
        groups: groups of both 1x1 convs; a channel shuffle follows the first one when > 1.
        se: add squeeze-and-excitation after the depthwise conv.
        dw_bn_relu: BN + ReLU after the depthwise conv (paper); False: a plain depthwise conv
            (the original CIFAR-10 reproduction's retrained networks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        expansion: int = 1,
        groups: int = 1,
        se: bool = False,
        dw_bn_relu: bool = True,
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        for name, width in (("in_channels", in_channels), ("out_channels", out_channels)):
            if width % groups:
                raise ValueError(f"{name}={width} is not divisible by groups={groups}")
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_pw = ConvBNReLU(in_channels, hidden, 1, groups=groups)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.conv_dw = (
            ConvBNReLU(hidden, hidden, kernel_size, stride=stride, groups=hidden)
            if dw_bn_relu
            else _depthwise_conv(hidden, kernel_size, stride)
        )
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.conv_pwl = ConvBNReLU(hidden, out_channels, 1, groups=groups, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.se(self.conv_dw(self.shuffle(self.conv_pw(x)))))
        return out + x if self.has_skip else out


def _depthwise_conv(channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """A bare depthwise conv, kept in a Sequential so its weight is named ``conv_dw.0.weight`` either way."""
    conv = nn.Conv2d(
        channels, channels, kernel_size, stride, kernel_size // 2, groups=channels, bias=False
    )
    return nn.Sequential(conv)


class Skip(nn.Module):
    """The 'skip' candidate: identity, or a 1x1 conv + BN + ReLU where stride or width change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.is_identity = stride == 1 and in_channels == out_channels
        self.proj = (
            nn.Identity()
            if self.is_identity
            else ConvBNReLU(in_channels, out_channels, 1, stride=stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
