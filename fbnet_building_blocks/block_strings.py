"""Block strings: one short string holds the whole spec of a candidate op (as timm's block strings do).

Grammar (tokens joined by ``_``)::

    skip                       identity, or 1x1 conv + BN + ReLU where stride or width change
    ir_k<K>_e<E>[_g<G>][_se]   inverted residual: depthwise kernel K, expansion E,
                               G groups in both 1x1 convs (+ channel shuffle when G > 1),
                               optional squeeze-and-excitation

Examples: ``ir_k3_e6`` (k=3, e=6), ``ir_k5_e1_g2`` (paper's k5_e1_g2), ``ir_k7_e4_g4_se``.
The paper's and the original reproduction's short names (``ir_k3_s2`` = ``ir_k3_e1_g2``) are aliases
kept in :mod:`fbnet_building_blocks.registry`; this module only knows the canonical grammar.
Stride and widths are not part of the string: they belong to the layer of the search space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BlockArgs", "decode_block_str", "encode_block_str"]

_IR_RE = re.compile(r"^ir_k(?P<k>\d+)_e(?P<e>\d+)(?:_g(?P<g>\d+))?(?P<se>_se)?$")


@dataclass(frozen=True)
class BlockArgs:
    """Decoded block string. ``kind`` is ``"ir"`` or ``"skip"``; other fields apply to ``"ir"``."""

    kind: str
    kernel_size: int = 0
    expansion: int = 0
    groups: int = 1
    se: bool = False


def decode_block_str(block_str: str) -> BlockArgs:
    """Parse a canonical block string (see the module docstring); raise ``ValueError`` if malformed."""
    if block_str == "skip":
        return BlockArgs(kind="skip")
    match = _IR_RE.match(block_str)
    if match is None:
        raise ValueError(
            f"malformed block string {block_str!r}: expected 'skip' or 'ir_k<K>_e<E>[_g<G>][_se]'"
        )
    kernel, expansion = int(match["k"]), int(match["e"])
    groups = int(match["g"] or 1)
    if kernel % 2 == 0 or kernel < 1:
        raise ValueError(f"block string {block_str!r}: kernel must be odd and positive")
    if expansion < 1 or groups < 1:
        raise ValueError(f"block string {block_str!r}: expansion and groups must be >= 1")
    return BlockArgs("ir", kernel, expansion, groups, bool(match["se"]))


def encode_block_str(args: BlockArgs) -> str:
    """Inverse of :func:`decode_block_str` (canonical form: ``_g1`` is omitted)."""
    if args.kind == "skip":
        return "skip"
    if args.kind != "ir":
        raise ValueError(f"unknown block kind {args.kind!r}")
    text = f"ir_k{args.kernel_size}_e{args.expansion}"
    if args.groups > 1:
        text += f"_g{args.groups}"
    return text + ("_se" if args.se else "")
