"""Build a fixed FBNet from an :class:`ArchSpec` and a search space, and summarise it.

    stem (conv3x3 + BN + ReLU) -> one block per searched layer -> head -> global average pool
    -> dropout -> FC

Global pooling (not a fixed 7x7 pool) lets one definition serve any input size. Two heads:

- ``conv_bn_relu``: 1x1 conv + BN + ReLU, the paper's (Table 1) and the authors' code;
- ``conv_bn``: 1x1 conv + BN without the ReLU (zero-mean features; see TRAINING_DETAILS.md);
- ``conv_bias``: a plain 1x1 conv with a bias, the original CIFAR-10 reproduction's retrained head.

Two initialisations (:func:`init_weights`): ``fan_out`` (MobileNetV2 / torchvision) and ``original``
(the original reproduction's ``weights_init``: Kaiming-uniform, fan in, on every conv).

Usage::

    model = get_model("fbnet_a", cnt_classes=10, search_space="fbnet_cifar")
"""

from __future__ import annotations

import torch
from torch import nn

from .arch_specs import ArchSpec, load_arch
from .blocks import ConvBNReLU
from .registry import build_block
from .search_space import SearchSpace, get_search_space
from .structure import HEADS

__all__ = ["FBNet", "get_model", "init_weights", "make_head", "HEADS", "INITS", "BN_INITS"]

INITS = ("fan_out", "original")
BN_INITS = ("ones", "uniform")


class FBNet(nn.Module):
    """A fixed network of the FBNet family; ``blocks[i]`` is the op chosen for searched layer ``i``."""

    def __init__(
        self,
        spec: ArchSpec,
        space: SearchSpace,
        cnt_classes: int = 1000,
        input_size: int | None = None,
        width_mult: float = 1.0,
        head_channels: int | None = None,
        dropout: float = 0.0,
        head: str = "conv_bn_relu",
        dw_bn_relu: bool = True,
        init: str = "fan_out",
        bn_init: str = "ones",
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
        spec.validate(space.name)
        self.spec = spec
        self.space = space
        self.input_size = input_size or space.input_size
        shapes = space.layer_shapes(self.input_size, width_mult)
        self.stem = ConvBNReLU(3, space.stem_out(width_mult), 3, stride=space.stem_stride)
        self.blocks = nn.Sequential(
            *(
                build_block(op, s.in_channels, s.out_channels, s.stride, dw_bn_relu=dw_bn_relu)
                for op, s in zip(spec.ops, shapes)
            )
        )
        width = space.head_out(head_channels, width_mult)
        self.head = make_head(shapes[-1].out_channels, width, head)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(width, cnt_classes)
        init_weights(self, init, bn_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def make_head(in_channels: int, out_channels: int, head: str) -> nn.Module:
    """The 1x1 head conv after the last block: ``conv_bias``, ``conv_bn`` or ``conv_bn_relu``."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
    if head == "conv_bias":
        return nn.Conv2d(in_channels, out_channels, 1, bias=True)
    return ConvBNReLU(in_channels, out_channels, 1, relu=head == "conv_bn_relu")


def init_weights(model: nn.Module, scheme: str = "fan_out", bn_init: str = "ones") -> None:
    """Initialise every conv, BN and linear layer of ``model``.

    ``scheme`` sets the convs: ``fan_out``, Kaiming-normal with std sqrt(2 / (out_channels * k * k))
    (MobileNetV2, torchvision); ``original``, Kaiming-uniform with bound
    sqrt(6 / (in_channels / groups * k * k)), the original reproduction's ``weights_init``. Conv biases 0.
    ``bn_init`` sets the BN scales: ``ones`` (PyTorch since 1.2) or ``uniform``, U(0, 1), the default of
    PyTorch up to 1.1, which the original's ``weights_init`` left in place. BN biases 0, FC
    normal(0, 0.01) with bias 0.
    """
    if scheme not in INITS:
        raise ValueError(f"unknown initialisation {scheme!r}; choose from {', '.join(INITS)}")
    if bn_init not in BN_INITS:
        raise ValueError(
            f"unknown BN initialisation {bn_init!r}; choose from {', '.join(BN_INITS)}"
        )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if scheme == "fan_out":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            if bn_init == "ones":
                nn.init.ones_(m.weight)
            else:
                nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def get_model(
    arch: str | ArchSpec,
    cnt_classes: int = 1000,
    search_space: str | None = None,
    input_size: int | None = None,
    width_mult: float | None = None,
    head_channels: int | None = None,
    dropout: float = 0.0,
    head: str = "conv_bn_relu",
    dw_bn_relu: bool = True,
    init: str = "fan_out",
    bn_init: str = "ones",
) -> FBNet:
    """Build a named architecture, a saved one, or a spec loaded from a JSON path.

    Arguments left as ``None`` take the architecture's own value, then the search space's default;
    ``head``, ``dw_bn_relu``, ``init`` and ``bn_init`` are described in :class:`FBNet` and
    :func:`init_weights`.
    """
    spec = load_arch(arch)
    space = get_search_space(search_space or spec.search_space)
    return FBNet(
        spec,
        space,
        cnt_classes=cnt_classes,
        input_size=input_size or spec.input_size or space.input_size,
        width_mult=width_mult if width_mult is not None else spec.width_mult,
        head_channels=head_channels or spec.head_channels,
        dropout=dropout,
        head=head,
        dw_bn_relu=dw_bn_relu,
        init=init,
        bn_init=bn_init,
    )
