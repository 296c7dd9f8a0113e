"""Search spaces as data: the macro-architecture (paper Table 1) and the candidate ops (paper Table 2).

A search space fixes everything except the op of each searched layer: the stem, the width and stride of
each of the layers, the candidate ops, and the default head width and input size.

- ``fbnet``: the paper's macro for 224x224 inputs. Stem conv3x3, 16 channels, stride 2; 22 layers with
  widths 16 | 24x4 | 32x4 | 64x4 | 112x4 | 184x4 | 352 and stage strides 1,2,2,2,1,2,1; 1x1 head conv,
  global average pool, FC.
- ``fbnet_cifar``: the same widths for 32x32 inputs, with stem stride 1 and stage strides
  1,1,2,2,1,2,1 (as HW-NAS-Bench does), so the last map is 4x4 instead of 1x1.
- ``tiny``: 4 layers of small width, for tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CANDIDATE_OPS",
    "SearchSpace",
    "LayerShape",
    "SEARCH_SPACES",
    "get_search_space",
    "make_divisible",
]

# Paper Table 2, under the original CIFAR-10 reproduction's names.
CANDIDATE_OPS: tuple[str, ...] = (
    "ir_k3_e1",
    "ir_k3_s2",
    "ir_k3_e3",
    "ir_k3_e6",
    "ir_k5_e1",
    "ir_k5_s2",
    "ir_k5_e3",
    "ir_k5_e6",
    "skip",
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going below 90% of it (MobileNetV2)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class LayerShape:
    """Where one searched layer sits: its widths, stride and the side of its (square) input map."""

    index: int
    in_channels: int
    out_channels: int
    stride: int
    input_hw: int


@dataclass(frozen=True)
class SearchSpace:
    name: str
    stem_channels: int
    stem_stride: int
    stage_channels: tuple[int, ...]
    stage_repeats: tuple[int, ...]
    stage_strides: tuple[int, ...]
    candidate_ops: tuple[str, ...] = CANDIDATE_OPS
    head_channels: int = 1504  # the original reproduction's head for every model
    input_size: int = 224

    @property
    def num_layers(self) -> int:
        return sum(self.stage_repeats)

    def scaled(self, channels: int, width_mult: float) -> int:
        return channels if width_mult == 1.0 else make_divisible(channels * width_mult)

    def stem_out(self, width_mult: float = 1.0) -> int:
        return self.scaled(self.stem_channels, width_mult)

    def head_out(self, head_channels: int | None = None, width_mult: float = 1.0) -> int:
        """Head width; scaled up for width multipliers > 1 only (MobileNetV2's convention)."""
        head = head_channels or self.head_channels
        return self.scaled(head, width_mult) if width_mult > 1.0 else head

    def layer_shapes(
        self, input_size: int | None = None, width_mult: float = 1.0
    ) -> list[LayerShape]:
        """The in/out widths, stride and input map side of every searched layer, in order."""
        hw = _conv_out(input_size or self.input_size, self.stem_stride)
        in_ch = self.stem_out(width_mult)
        shapes = []
        for channels, repeats, stride in zip(
            self.stage_channels, self.stage_repeats, self.stage_strides
        ):
            out_ch = self.scaled(channels, width_mult)
            for r in range(repeats):
                s = stride if r == 0 else 1
                shapes.append(LayerShape(len(shapes), in_ch, out_ch, s, hw))
                hw = _conv_out(hw, s)
                in_ch = out_ch
        return shapes


def _conv_out(hw: int, stride: int) -> int:
    """Output side of a 'same'-padded odd-kernel conv."""
    return (hw - 1) // stride + 1


_FBNET_STAGES = dict(
    stage_channels=(16, 24, 32, 64, 112, 184, 352),
    stage_repeats=(1, 4, 4, 4, 4, 4, 1),
)

SEARCH_SPACES: dict[str, SearchSpace] = {
    "fbnet": SearchSpace(
        "fbnet", 16, 2, stage_strides=(1, 2, 2, 2, 1, 2, 1), input_size=224, **_FBNET_STAGES
    ),
    "fbnet_cifar": SearchSpace(
        "fbnet_cifar", 16, 1, stage_strides=(1, 1, 2, 2, 1, 2, 1), input_size=32, **_FBNET_STAGES
    ),
    "tiny": SearchSpace(
        "tiny",
        8,
        1,
        stage_channels=(8, 16, 24),
        stage_repeats=(1, 2, 1),
        stage_strides=(1, 2, 2),
        head_channels=32,
        input_size=32,
    ),
}


def get_search_space(name: str | SearchSpace) -> SearchSpace:
    if isinstance(name, SearchSpace):
        return name
    try:
        return SEARCH_SPACES[name]
    except KeyError:
        raise KeyError(
            f"unknown search space {name!r}; known: {', '.join(sorted(SEARCH_SPACES))}"
        ) from None
