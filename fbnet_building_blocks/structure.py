"""What a network is built with besides its ops: the block and head variant. One value, every consumer.

A searched layer's op names its block (``ir_k5_e6``), but the block's cost also depends on whether its
depthwise conv carries BN + ReLU, and the network's on the head after the last block. A latency table
prices one such :class:`Structure`; the supernet builds its candidate ops with it, the trainer builds the
trained network with it, and an export starts from that network. So the table prices what is trained:

- :func:`~supernet_functions.latency.measure.build_lut` records ``structure`` in the table's header;
- the search refuses a table that priced another structure (``LatencyLookupTable.check_compatible``);
- ``evaluate_search`` trains and times every network with the table's structure.

The default is the network the original CIFAR-10 reproduction retrained, as ``architecture_main_file.py``
builds it by default: bare depthwise convs and a plain 1x1 head conv with bias, 1504 wide. The paper's
block and head (BN + ReLU after the depthwise conv, a 1x1 conv + BN + ReLU head) are
``Structure(dw_bn_relu=True, head="conv_bn_relu")``. Tables written before the header held the structure
were all built with the paper's block and head: :func:`structure_of_table` reads them so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["HEADS", "Structure", "DEFAULT_STRUCTURE", "PAPER_STRUCTURE", "structure_of_table"]

HEADS = ("conv_bn_relu", "conv_bn", "conv_bias")


@dataclass(frozen=True)
class Structure:
    """The block and head variant of a network of the FBNet family.

    Attributes:
        dw_bn_relu: BN + ReLU after every depthwise conv (paper Fig. 3); False: a bare depthwise conv.
        head: ``conv_bn_relu`` (paper Table 1), ``conv_bn`` or ``conv_bias`` (a plain 1x1 conv with a
            bias, the original reproduction's).
        head_channels: width of the 1x1 head conv.
    """

    dw_bn_relu: bool = False
    head: str = "conv_bias"
    head_channels: int = 1504

    def __post_init__(self) -> None:
        if not isinstance(self.dw_bn_relu, bool):
            raise ValueError(
                f"structure: dw_bn_relu must be true or false, got {self.dw_bn_relu!r}"
            )
        if self.head not in HEADS:
            raise ValueError(
                f"structure: unknown head {self.head!r}; choose from {', '.join(HEADS)}"
            )
        if (
            isinstance(self.head_channels, bool)
            or not isinstance(self.head_channels, int)
            or not 1 <= self.head_channels <= 65536
        ):
            raise ValueError(
                f"structure: head_channels must be an integer in [1, 65536], got "
                f"{self.head_channels!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Structure:
        if not isinstance(data, dict) or set(data) != {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(
                f"structure: expected {{dw_bn_relu, head, head_channels}}, got {data!r}"
            )
        return cls(**data)

    @classmethod
    def from_config(cls, cfg: Any) -> Structure:
        """The structure named by a config's ``dw_bn_relu``, ``head`` and ``head_channels`` fields."""
        return cls(bool(cfg.dw_bn_relu), cfg.head, int(cfg.head_channels))

    def describe(self) -> str:
        dw = "BN + ReLU after the depthwise conv" if self.dw_bn_relu else "bare depthwise conv"
        return f"{dw}, head {self.head} {self.head_channels} wide"

    def flags(self) -> str:
        """The command-line flags that select this structure."""
        return (
            f"--dw_bn_relu {self.dw_bn_relu} --head {self.head} "
            f"--head_channels {self.head_channels}"
        )


DEFAULT_STRUCTURE = Structure()
PAPER_STRUCTURE = Structure(dw_bn_relu=True, head="conv_bn_relu")


def structure_of_table(meta: dict[str, Any]) -> Structure:
    """The structure a table's header says it priced; headers without one priced the paper's."""
    if "structure" in meta:
        return Structure.from_dict(meta["structure"])
    return Structure(True, "conv_bn_relu", int(meta.get("head_channels") or 1504))
