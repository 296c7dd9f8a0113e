"""A plain reference supernet: the straightforward way, kept to measure and check the fast one against.

This is how the original CIFAR-10 reproduction (github AnnaAraslanova/FBNet) evaluates a searched layer:
draw ``m = GumbelSoftmax(thetas)`` (paper Eq. 5), run every candidate op on the layer's input in a Python
loop and sum ``m_i * op_i(x)`` (Eq. 6) and ``m_i * LAT_i`` (Eq. 7); in a training step every parameter
keeps ``requires_grad``, so both the weight step and the theta step compute every gradient and then
step one optimizer. Nothing here is tuned.

:class:`ReferenceSuperNet` has the same submodule names as
:class:`~supernet_functions.model_supernet.StochasticSuperNet` (``stem``, ``stages.<l>.ops.<i>``,
``stages.<l>.thetas``, ``head``, ``classifier``), so ``reference.load_state_dict(fast.state_dict())``
gives both the same weights, and both draw their Gumbel noise in the same order (one
``F.gumbel_softmax`` call per layer), so after the same ``torch.manual_seed`` they see the same noise.
``bench/bench_supernet.py`` times it side by side with the fast supernet and
``tests/test_supernet_speed_equivalence.py`` checks outputs and gradients against it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.blocks import ConvBNReLU
from fbnet_building_blocks.fbnet_builder import init_weights, make_head
from fbnet_building_blocks.registry import build_block
from fbnet_building_blocks.search_space import SearchSpace, get_search_space
from fbnet_building_blocks.structure import DEFAULT_STRUCTURE, Structure

__all__ = ["ReferenceMixedOperation", "ReferenceSuperNet", "reference_train_step"]


class ReferenceMixedOperation(nn.Module):
    """Every candidate op on ``x``, summed with Gumbel-softmax weights in a Python loop (Eq. 5-7)."""

    def __init__(
        self, candidates: Sequence[nn.Module], latency: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleList(candidates)
        self.thetas = nn.Parameter(torch.zeros(len(candidates)))
        if latency is None:
            latency = torch.zeros(len(candidates))
        self.register_buffer("latency", torch.as_tensor(latency, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        m = F.gumbel_softmax(self.thetas, tau=float(temperature), hard=False, dim=-1)
        out = sum(m[i] * op(x) for i, op in enumerate(self.ops))
        latency = sum(m[i] * self.latency[i] for i in range(len(self.ops)))
        return out, latency


class ReferenceSuperNet(nn.Module):
    """Stem, one :class:`ReferenceMixedOperation` per searched layer, head, pool, classifier."""

    def __init__(
        self,
        search_space: str | SearchSpace = "fbnet",
        lut=None,
        cnt_classes: int = 10,
        input_size: int | None = None,
        candidate_ops: Sequence[str] | None = None,
        structure: Structure = DEFAULT_STRUCTURE,
    ) -> None:
        super().__init__()
        space = get_search_space(search_space)
        input_size = input_size or space.input_size
        ops = tuple(candidate_ops or space.candidate_ops)
        shapes = space.layer_shapes(input_size)
        self.stem = ConvBNReLU(3, space.stem_out(), 3, stride=space.stem_stride)
        self.stages = nn.ModuleList(
            ReferenceMixedOperation(
                [
                    build_block(op, s.in_channels, s.out_channels, s.stride, structure.dw_bn_relu)
                    for op in ops
                ],
                None if lut is None else lut.latency_vector(i, ops),
            )
            for i, s in enumerate(shapes)
        )
        head = space.head_out(structure.head_channels)
        self.head = make_head(shapes[-1].out_channels, head, structure.head)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, cnt_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        latency = 0.0
        for layer in self.stages:
            x, layer_latency = layer(x, temperature)
            latency = latency + layer_latency
        return self.classifier(self.pool(self.head(x)).flatten(1)), latency

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.stages:
            yield layer.thetas

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)


def reference_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """One step as the original takes it: every gradient computed, then ``optimizer`` steps its set.

    The weight step and the theta step differ only in the optimizer passed in.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    logits, latency = model(x, temperature)
    loss = criterion(logits, y, latency)[0]
    loss.backward()
    optimizer.step()
    return loss.detach()
