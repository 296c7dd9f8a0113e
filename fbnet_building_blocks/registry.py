"""The registry of candidate ops: op name -> :class:`BlockArgs`, and one builder for all of them.

Every op is built through one signature, ``build_block(op, in_channels, out_channels, stride)``, so the
builder of a fixed network and the supernet build any op by name (mobile-vision's ``PRIMITIVES`` idea).
Names are the ones users of the original CIFAR-10 reproduction know (``ir_k3_s2``...), plus an extended
family (7x7 kernels, expansion 4, 4-group shuffles, squeeze-excitation) for larger search spaces.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .block_strings import BlockArgs, decode_block_str
from .blocks import InvertedResidual, Skip

__all__ = ["OPS", "register_op", "get_op_args", "check_ops", "build_block", "known_ops"]


def _extended_names() -> dict[str, str]:
    """Name -> canonical block string for the whole registered family."""
    names = {"skip": "skip"}
    for k in (3, 5, 7):
        for e in (1, 3, 4, 6):
            names[f"ir_k{k}_e{e}"] = f"ir_k{k}_e{e}"
        names[f"ir_k{k}_s2"] = f"ir_k{k}_e1_g2"  # paper: k*_e1_g2 (Table 2)
        names[f"ir_k{k}_s4"] = f"ir_k{k}_e4_g4"  # mobile-vision's 4-group shuffle op
    for name, canonical in list(names.items()):
        if name != "skip":
            names[f"{name}_se"] = f"{canonical}_se"
    return names


OPS: dict[str, BlockArgs] = {name: decode_block_str(s) for name, s in _extended_names().items()}


def register_op(name: str, block_str: str, overwrite: bool = False) -> None:
    """Add an op under ``name``; ``block_str`` follows :mod:`block_strings`' grammar."""
    if name in OPS and not overwrite:
        raise ValueError(f"op {name!r} is already registered")
    OPS[name] = decode_block_str(block_str)


def known_ops() -> list[str]:
    return sorted(OPS)


def get_op_args(op: str) -> BlockArgs:
    try:
        return OPS[op]
    except KeyError:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(known_ops())}") from None


def check_ops(ops: Iterable[str]) -> None:
    """Raise ``KeyError`` naming the first unknown op of ``ops``."""
    for op in ops:
        get_op_args(op)


def build_block(
    op: str, in_channels: int, out_channels: int, stride: int = 1, dw_bn_relu: bool = True
) -> nn.Module:
    """Build the registered op ``op`` for a layer of the given widths and stride.

    ``dw_bn_relu`` applies to inverted-residual ops: see :class:`~.blocks.InvertedResidual`.
    """
    args = get_op_args(op)
    if args.kind == "skip":
        return Skip(in_channels, out_channels, stride)
    return InvertedResidual(
        in_channels,
        out_channels,
        stride=stride,
        kernel_size=args.kernel_size,
        expansion=args.expansion,
        groups=args.groups,
        se=args.se,
        dw_bn_relu=dw_bn_relu,
    )
