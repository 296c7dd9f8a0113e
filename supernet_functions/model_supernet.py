"""The stochastic supernet of FBNet (Wu et al., CVPR 2019, Sec. 3.3).

Every searched layer is a :class:`MixedOperation`: its candidate ops, a learnable vector ``thetas`` and
the ops' costs from the lookup table. In a forward pass the layer mixes its candidates with weights

    m_l = GumbelSoftmax(thetas_l | temperature)                                        (paper Eq. 5)
    x_{l+1} = sum_i m_{l,i} * b_{l,i}(x_l)                                              (paper Eq. 6)

and reports its expected latency ``sum_i m_{l,i} * LAT(b_{l,i})`` (paper Eq. 7), which the network
accumulates layer by layer into ``LAT(a)`` for the loss (paper Eq. 2, :mod:`supernet_functions.loss`).

The weights of the candidate ops are ``weight_parameters()`` (trained with SGD); the ``thetas`` are
``arch_parameters()`` (trained with Adam), as DARTS keeps its alphas apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.blocks import ConvBNReLU
from fbnet_building_blocks.fbnet_builder import init_weights, make_head
from fbnet_building_blocks.registry import build_block, get_op_args
from fbnet_building_blocks.search_space import SearchSpace, get_search_space
from fbnet_building_blocks.structure import DEFAULT_STRUCTURE, Structure
from supernet_functions.shared_ops import SharedInvertedResiduals, SharedOp

__all__ = ["MIXING_MODES", "MixedOperation", "StochasticSuperNet", "mix_outputs", "run_sampled"]

logger = logging.getLogger(__name__)

MIXING_MODES = ("gumbel", "softmax", "hard_gumbel")


class MixedOperation(nn.Module):
    """One searched layer: candidate ops mixed by ``GumbelSoftmax(thetas)`` (paper Eq. 5-7).

    Args:
        candidates: the layer's candidate ops; any modules that map the same input to outputs of one shape.
        latency: the cost of each candidate (one value per op, in the table's unit), or ``None`` for zeros.
        mixing: ``"gumbel"``: soft weights from ``F.gumbel_softmax(thetas, temperature)`` (FBNet);
            ``"softmax"``: deterministic ``softmax(thetas)`` (DARTS-style; the temperature is ignored);
            ``"hard_gumbel"``: a one-hot Gumbel sample with the straight-through estimator: only the
            sampled op runs (output ``1 * op_k(x)``); gradients reach the thetas through the soft
            sample's ``k``-th weight (and, for the latency, through every op's weight). Much cheaper,
            but the thetas learn from one op's output per step instead of all (a departure from the
            paper; see TRAINING_DETAILS.md).
        per_sample: with ``"gumbel"``, draw one Gumbel sample per example instead of one for the whole
            batch (the original reproduction shares one sample across the batch). The layer's expected
            latency then has one value per example.

    ``thetas`` start at zeros, i.e. a uniform distribution over the candidates.
    """

    def __init__(
        self,
        candidates: Sequence[nn.Module],
        latency: torch.Tensor | None = None,
        mixing: str = "gumbel",
        per_sample: bool = False,
    ) -> None:
        super().__init__()
        if len(candidates) == 0:
            raise ValueError("MixedOperation needs at least one candidate op")
        if mixing not in MIXING_MODES:
            raise ValueError(f"unknown mixing {mixing!r}; use one of {', '.join(MIXING_MODES)}")
        n = len(candidates)
        if latency is None:
            latency = torch.zeros(n)
        latency = torch.as_tensor(latency, dtype=torch.float32).flatten()
        if latency.numel() != n:
            raise ValueError(f"latency has {latency.numel()} entries for {n} candidate ops")
        self.ops = nn.ModuleList(candidates)
        self.thetas = nn.Parameter(torch.zeros(n))
        self.register_buffer("latency", latency.clone())
        self.mixing = mixing
        self.per_sample = per_sample
        self.fused = None  # speed.prepare_supernet: its ops computed together (exact), or None

    def mixing_weights(
        self, temperature: float | torch.Tensor, batch_size: int | None = None
    ) -> torch.Tensor:
        """The weights ``m`` the layer mixes its ops with: ``[n_ops]``, or ``[batch, n_ops]`` per sample.

        ``gumbel``: ``softmax((thetas + g) / temperature)`` with ``g ~ Gumbel(0, 1)`` (paper Eq. 5);
        ``softmax``: ``softmax(thetas)``; ``hard_gumbel``: the one-hot of the ``gumbel`` weights' argmax
        in value, with their gradient (straight-through).
        """
        if self.mixing == "softmax":
            return F.softmax(self.thetas, dim=-1)
        logits = self.thetas
        if self.per_sample and batch_size is not None:
            logits = logits.expand(batch_size, -1)
        hard = self.mixing == "hard_gumbel"
        return F.gumbel_softmax(logits, tau=float(temperature), hard=hard, dim=-1)

    def forward(
        self, x: torch.Tensor, temperature: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i m_i * op_i(x), sum_i m_i * LAT_i)`` (paper Eq. 6 and 7).

        With ``hard_gumbel`` only the sampled op of each example runs: ``m_k * op_k(x)``.
        """
        weights = self.mixing_weights(temperature, x.shape[0])
        if self.mixing == "hard_gumbel":
            return run_sampled(weights, self.ops, x), weights @ self.latency
        if self.fused is not None and self.fused.applies(x, weights):
            return self.fused(x, weights), weights @ self.latency
        return mix_outputs(weights, [op(x) for op in self.ops]), weights @ self.latency

    def probabilities(self) -> torch.Tensor:
        """``softmax(thetas)``: the learned distribution over the candidates (no noise)."""
        return F.softmax(self.thetas.detach(), dim=-1)


def mix_outputs(weights: torch.Tensor, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i weights[..., i] * outputs[i]``; ``weights`` is ``[n_ops]`` or ``[batch, n_ops]``."""
    out = None
    for i, y in enumerate(outputs):
        w = weights[..., i]
        if w.dim() == 1:  # one weight per example
            w = w.view(-1, *([1] * (y.dim() - 1)))
        out = w * y if out is None else out + w * y
    return out


def run_sampled(weights: torch.Tensor, ops: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``weights[..., k] * ops[k](x)`` for one-hot ``weights`` (``[n_ops]`` or ``[batch, n_ops]``).

    Only the sampled ops run. Per-example samples run each sampled op once, on the examples that drew
    it (so batch-norm statistics come from those examples only).
    """
    chosen = weights.detach().argmax(dim=-1)
    if weights.dim() == 1:
        k = int(chosen)
        return weights[k] * ops[k](x)
    out = None
    for k in chosen.unique().tolist():
        rows = (chosen == k).nonzero().squeeze(1)
        y = ops[k](x.index_select(0, rows))
        y = weights[rows, k].view(-1, *([1] * (y.dim() - 1))) * y
        if out is None:
            out = y.new_zeros((x.shape[0], *y.shape[1:]))
        out = out.index_copy(0, rows, y)
    return out


def _candidates(ops, shape, structure: Structure, weight_sharing: bool):
    """A layer's candidate modules, and the module of their shared weights (or None)."""
    if not weight_sharing:
        blocks = [
            build_block(
                op, shape.in_channels, shape.out_channels, shape.stride, structure.dw_bn_relu
            )
            for op in ops
        ]
        return blocks, None
    args = {op: get_op_args(op) for op in ops}
    if any(a.se for a in args.values()):
        raise ValueError("--weight_sharing does not cover squeeze-excitation ops")
    ir = [op for op in ops if args[op].kind != "skip"]
    shared = SharedInvertedResiduals(
        ir, shape.in_channels, shape.out_channels, shape.stride, structure
    )
    blocks = [
        build_block(op, shape.in_channels, shape.out_channels, shape.stride)
        if args[op].kind == "skip"
        else SharedOp(shared, ir.index(op), op)
        for op in ops
    ]
    return blocks, shared


class StochasticSuperNet(nn.Module):
    """Stem, one :class:`MixedOperation` per searched layer, head, pool and classifier.

    ``forward(x, temperature)`` returns ``(logits, expected latency)``, the latency summed over the
    searched layers in the lookup table's unit (paper Eq. 4 with Eq. 7's expectation per layer).

    Args:
        search_space: a name from ``SEARCH_SPACES`` or a :class:`SearchSpace`.
        lut: a :class:`~supernet_functions.latency.table.LatencyLookupTable` for the layers'
            costs, or ``None`` for zeros (no latency term).
        cnt_classes: classifier outputs.
        input_size: the side of the input images (sets the layers' input maps; default: the space's).
        candidate_ops: the ops searched at every layer (default: the search space's).
        mixing, per_sample: see :class:`MixedOperation`.
        bn_init: BN scales ``ones`` or ``uniform`` (U(0, 1), as the original ran on PyTorch <= 1.1);
            :func:`~fbnet_building_blocks.fbnet_builder.init_weights`.
        structure: the block and head variant (:mod:`fbnet_building_blocks.structure`): the same as
            the latency table priced and the trainer builds, so a path through the supernet is the
            network that is priced and trained.
    """

    def __init__(
        self,
        search_space: str | SearchSpace = "fbnet",
        lut=None,
        cnt_classes: int = 10,
        input_size: int | None = None,
        candidate_ops: Sequence[str] | None = None,
        mixing: str = "gumbel",
        per_sample: bool = False,
        bn_init: str = "ones",
        structure: Structure = DEFAULT_STRUCTURE,
        weight_sharing: bool = False,
    ) -> None:
        super().__init__()
        space = get_search_space(search_space)
        self.structure = structure
        self.weight_sharing = weight_sharing
        self.recompute_activations = False  # weight steps: speed.prepare_supernet sets it
        self.space = space
        self.input_size = input_size or space.input_size
        self.candidate_ops = tuple(candidate_ops or space.candidate_ops)
        shapes = space.layer_shapes(self.input_size)
        if lut is not None and lut.num_layers != len(shapes):
            raise ValueError(
                f"the lookup table has {lut.num_layers} layers, search space {space.name!r} has "
                f"{len(shapes)}"
            )
        self.stem = ConvBNReLU(3, space.stem_out(), 3, stride=space.stem_stride)
        self.stages = nn.ModuleList()
        for i, s in enumerate(shapes):
            candidates, shared = _candidates(self.candidate_ops, s, structure, weight_sharing)
            layer = MixedOperation(
                candidates,
                latency=None if lut is None else lut.latency_vector(i, self.candidate_ops),
                mixing=mixing,
                per_sample=per_sample,
            )
            if shared is not None:
                layer.shared = shared  # the ops' weights, registered once per layer
            self.stages.append(layer)
        head = space.head_out(structure.head_channels)
        self.head = make_head(shapes[-1].out_channels, head, structure.head)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, cnt_classes)
        init_weights(self, bn_init=bn_init)
        if weight_sharing and bn_init == "uniform":  # the shared BNs' scales, as init_weights's
            for m in self.modules():
                if isinstance(m, SharedInvertedResiduals):
                    for bn in (m.bn_pw, m.bn_dw, m.bn_pwl):
                        if bn is not None:
                            nn.init.uniform_(bn.weight, 0.0, 1.0)

    def forward(
        self, x: torch.Tensor, temperature: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        latency = x.new_zeros(())
        for layer in self.stages:
            x, layer_latency = layer(x, temperature)
            latency = latency + layer_latency
        logits = self.classifier(self.pool(self.head(x)).flatten(1))
        return logits, latency

    def forward_path(self, x: torch.Tensor, path: Sequence[int]) -> torch.Tensor:
        """Logits of one fixed path: op ``path[l]`` alone at every layer ``l`` (no mixing, no thetas)."""
        if len(path) != len(self.stages):
            raise ValueError(f"a path names one op per layer: {len(self.stages)}, got {len(path)}")
        x = self.stem(x)
        for layer, k in zip(self.stages, path):
            x = layer.ops[k](x)
        return self.classifier(self.pool(self.head(x)).flatten(1))

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        """The thetas of every searched layer, in layer order."""
        for layer in self.stages:
            yield layer.thetas

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter that is not a theta (the ops, stem, head and classifier)."""
        arch = {id(p) for p in self.arch_parameters()}
        for p in self.parameters():
            if id(p) not in arch:
                yield p

    def thetas_matrix(self) -> torch.Tensor:
        """``[layers, ops]`` thetas (a detached copy)."""
        return torch.stack([layer.thetas.detach() for layer in self.stages]).cpu()

    def probabilities(self) -> torch.Tensor:
        """``[layers, ops]`` softmax(thetas): the learned distribution of every layer."""
        return torch.stack([layer.probabilities() for layer in self.stages]).cpu()

    def latency_matrix(self) -> torch.Tensor:
        """``[layers, ops]`` costs the layers were built with."""
        return torch.stack([layer.latency for layer in self.stages]).cpu()
