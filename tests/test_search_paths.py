"""One structure priced, searched and trained; the path diagnostic; the supernet's path mechanisms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fbnet_building_blocks.blocks import InvertedResidual
from fbnet_building_blocks.registry import get_op_args
from fbnet_building_blocks.search_space import CANDIDATE_OPS
from fbnet_building_blocks.structure import (
    DEFAULT_STRUCTURE,
    PAPER_STRUCTURE,
    Structure,
    structure_of_table,
)
from supernet_functions.config_for_supernet import SupernetConfig
from supernet_functions.latency.measure import build_cost_table
from supernet_functions.latency.table import LatencyLookupTable, LUTError
from supernet_functions.model_supernet import StochasticSuperNet
from supernet_functions.path_probe import probe_paths, sample_paths
from supernet_functions.shared_ops import SharedOp
from supernet_functions.training_functions_supernet import _weights_mixing, temperature_at

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- structure
def test_table_records_and_refuses_another_structure():
    paper = build_cost_table("params", "tiny", structure=PAPER_STRUCTURE)
    plain = build_cost_table("params", "tiny")
    assert plain.structure == DEFAULT_STRUCTURE and paper.structure == PAPER_STRUCTURE
    # the paper's block has a BN after the depthwise conv and a BN head: more parameters
    assert paper.predict(["ir_k3_e6"] * 4) > plain.predict(["ir_k3_e6"] * 4)
    plain.check_compatible("tiny", 32, structure=DEFAULT_STRUCTURE)
    with pytest.raises(LUTError, match="--dw_bn_relu True --head conv_bn_relu"):
        paper.check_compatible("tiny", 32, structure=DEFAULT_STRUCTURE)


def test_headers_without_a_structure_priced_the_papers_block():
    assert structure_of_table({"head_channels": 1984}) == Structure(True, "conv_bn_relu", 1984)
    with pytest.raises(ValueError, match="head"):
        Structure.from_dict({"dw_bn_relu": False, "head": "mlp", "head_channels": 8})
    with pytest.raises(ValueError, match="expected"):
        Structure.from_dict({"dw_bn_relu": False})


def test_search_refuses_a_table_of_another_structure(tmp_path):
    from fbnet_building_blocks.search_space import get_search_space
    from supernet_functions.search_setup import resolve_lut

    path = build_cost_table("flops", "tiny", structure=PAPER_STRUCTURE).save(tmp_path / "t.json")
    cfg = SupernetConfig(search_space="tiny", lut_path=str(path))
    with pytest.raises(LUTError, match="this search builds bare depthwise conv"):
        resolve_lut(cfg, get_search_space("tiny"), 32, torch.device("cpu"), tmp_path)
    cfg = SupernetConfig(search_space="tiny", lut_path=str(path), dw_bn_relu=True)
    cfg.head = "conv_bn_relu"
    lut, _ = resolve_lut(cfg, get_search_space("tiny"), 32, torch.device("cpu"), tmp_path)
    assert lut.structure == PAPER_STRUCTURE


def test_supernet_builds_the_structure():
    plain = StochasticSuperNet("tiny", None, 10, 16)
    assert isinstance(plain.head, nn.Conv2d) and plain.head.bias is not None
    assert plain.head.out_channels == DEFAULT_STRUCTURE.head_channels
    block = plain.stages[1].ops[CANDIDATE_OPS.index("ir_k3_e6")]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.conv_dw.modules())
    paper = StochasticSuperNet("tiny", None, 10, 16, structure=Structure(True, "conv_bn_relu", 40))
    block = paper.stages[1].ops[CANDIDATE_OPS.index("ir_k3_e6")]
    assert any(isinstance(m, nn.BatchNorm2d) for m in block.conv_dw.modules())
    assert paper.head[0].out_channels == 40


# ---------------------------------------------------------------------------- paths
@pytest.mark.parametrize("weight_sharing", [False, True])
def test_forward_path_is_the_one_hot_mixture(weight_sharing):
    torch.manual_seed(0)
    net = StochasticSuperNet("tiny", None, 10, 16, mixing="softmax", weight_sharing=weight_sharing)
    path = [3, 8, 7, 1]
    with torch.no_grad():
        for layer, k in zip(net.stages, path):
            layer.thetas.fill_(-60.0)
            layer.thetas[k] = 60.0
    x = torch.randn(6, 3, 16, 16)
    net.train()
    mixed, _ = net(x, 1.0)
    assert torch.allclose(net.forward_path(x, path), mixed, atol=1e-5)


def test_probe_restores_every_buffer_and_the_random_stream():
    torch.manual_seed(0)
    net = StochasticSuperNet("tiny", None, 10, 16)
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(2)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    net.eval()
    result = probe_paths(net, data, samples=3, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the argmax path's figure is that path's top-1 with batch statistics, computed here by hand
    path = net.probabilities().argmax(1).tolist()
    net.train()
    with torch.no_grad():
        hits = sum((net.forward_path(x, path).argmax(1) == y).sum().item() for x, y in data)
    assert math.isclose(result["argmax_top1"], 100.0 * hits / 16, abs_tol=1e-4)
    assert result["sampled_top1_min"] <= result["sampled_top1_mean"] <= result["sampled_top1_max"]


def test_sampled_paths_follow_the_probabilities():
    p = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    paths = sample_paths(p, 200, seed=0)
    assert all(path[0] == 1 and path[1] in (0, 2) for path in paths)
    assert 60 < sum(path[1] == 0 for path in paths) < 140
    assert sample_paths(p, 5, seed=3) == sample_paths(p, 5, seed=3)


def test_temperature_floor():
    cfg = SupernetConfig(init_temperature=5.0, temperature_decay=0.5, warmup_epochs=1)
    assert temperature_at(3, cfg) == 1.25
    cfg.min_temperature = 2.0
    assert temperature_at(0, cfg) == 5.0 and temperature_at(3, cfg) == 2.0


@pytest.mark.parametrize("weight_sharing", [False, True])
def test_sampled_weight_steps_train_one_op_per_layer(weight_sharing):
    torch.manual_seed(0)
    net = StochasticSuperNet("tiny", None, 10, 16, weight_sharing=weight_sharing)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    with _weights_mixing(net, "sampled"):
        logits, _ = net(x, 5.0)
    nn.functional.cross_entropy(logits, y).backward()
    assert all(layer.mixing == "gumbel" for layer in net.stages)  # restored
    for layer in net.stages:
        used = [
            i
            for i, op in enumerate(layer.ops)
            if isinstance(op, SharedOp)
            or any(p.grad is not None and p.grad.abs().sum() > 0 for p in op.parameters())
        ]
        if not weight_sharing:
            assert len(used) <= 1  # only the drawn op (none when it is a parameter-free skip)


# ---------------------------------------------------------------------------- shared ops
@pytest.mark.parametrize("op", [o for o in CANDIDATE_OPS if o != "skip"])
@pytest.mark.parametrize("stride,in_ch,out_ch", [(1, 8, 8), (2, 8, 16)])
def test_shared_op_computes_its_block_with_sliced_weights(op, stride, in_ch, out_ch):
    """Each shared op equals an ordinary block whose weights are the slices the docstring names."""
    from fbnet_building_blocks.search_space import LayerShape
    from supernet_functions.model_supernet import _candidates

    torch.manual_seed(0)
    blocks, shared = _candidates(
        CANDIDATE_OPS, LayerShape(0, in_ch, out_ch, stride, 8), DEFAULT_STRUCTURE, True
    )
    with torch.no_grad():
        for bn in (shared.bn_pw, shared.bn_pwl):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    args = get_op_args(op)
    ref = InvertedResidual(
        in_ch, out_ch, stride, args.kernel_size, args.expansion, args.groups, dw_bn_relu=False
    )
    hidden, g, k = in_ch * args.expansion, args.groups, args.kernel_size
    t = (shared.kernel_size - k) // 2

    def blocks_of(w):  # the diagonal blocks of a dense [out, in] matrix, stacked
        o, i = w.shape[0] // g, w.shape[1] // g
        return torch.cat([w[j * o : (j + 1) * o, j * i : (j + 1) * i] for j in range(g)])

    with torch.no_grad():
        ref.conv_pw[0].weight.copy_(blocks_of(shared.pw[:hidden]))
        ref.conv_pw[1].weight.copy_(shared.bn_pw.weight[:hidden])
        ref.conv_pw[1].bias.copy_(shared.bn_pw.bias[:hidden])
        ref.conv_dw[0].weight.copy_(shared.dw[:hidden, :, t : t + k, t : t + k])
        ref.conv_pwl[0].weight.copy_(blocks_of(shared.pwl[:, :hidden]))
        ref.conv_pwl[1].weight.copy_(shared.bn_pwl.weight)
        ref.conv_pwl[1].bias.copy_(shared.bn_pwl.bias)
    x = torch.randn(5, in_ch, 8, 8)
    mine = blocks[CANDIDATE_OPS.index(op)]
    assert torch.allclose(mine(x), ref(x), atol=1e-5)
    ref.eval(), shared.eval()  # running statistics too: one pass updated both the same way
    assert torch.allclose(mine(x), ref(x), atol=1e-5)


def test_shared_ops_are_views_of_one_set_of_weights():
    net = StochasticSuperNet("tiny", None, 10, 16, weight_sharing=True)
    names = [n for n, _ in net.named_parameters() if n.startswith("stages.1.")]
    assert not any(".ops." in n and "ops.8" not in n for n in names)  # only skip has its own
    layer = net.stages[2]
    x = torch.randn(2, *_input_of(net, 2))
    k3 = layer.ops[CANDIDATE_OPS.index("ir_k3_e6")]
    k3(x).sum().backward()
    grad = layer.shared.dw.grad
    assert grad[:, :, 1:4, 1:4].abs().sum() > 0
    assert grad[:, :, 0].abs().sum() == 0 and grad[:, :, :, 4].abs().sum() == 0  # 5x5 rim


def _input_of(net, layer: int) -> tuple[int, int, int]:
    shape = net.space.layer_shapes(net.input_size)[layer]
    return shape.in_channels, shape.input_hw, shape.input_hw


def test_hand_made_table_prices_the_default_structure():
    lut = LatencyLookupTable.from_latencies("tiny", [{"skip": 1.0}] * 4)
    assert lut.structure == DEFAULT_STRUCTURE
