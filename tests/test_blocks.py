import pytest
import torch

from fbnet_building_blocks.blocks import InvertedResidual, Skip
from fbnet_building_blocks.registry import OPS, build_block
from fbnet_building_blocks.search_space import CANDIDATE_OPS

EXTENDED = ["ir_k7_e6", "ir_k3_s4", "ir_k5_e3_se"]


def _input(channels, hw=8, batch=2):
    # deterministic, mobile-vision style
    n = batch * channels * hw * hw
    return (torch.arange(n, dtype=torch.float32).reshape(batch, channels, hw, hw) % 7 - 3) / 3


@pytest.mark.parametrize("op", list(CANDIDATE_OPS) + EXTENDED)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("out_channels", [16, 24])
def test_op_shape_finite_and_gradients(op, stride, out_channels):
    block = build_block(op, 16, out_channels, stride).train()
    x = _input(16).requires_grad_()
    y = block(x)
    assert y.shape == (2, out_channels, 8 // stride, 8 // stride)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    identity = op == "skip" and stride == 1 and out_channels == 16
    assert (len(list(block.parameters())) == 0) == identity


def test_residual_only_when_shapes_match():
    assert InvertedResidual(16, 16, 1, 3, 6).has_skip
    assert not InvertedResidual(16, 16, 2, 3, 6).has_skip
    assert not InvertedResidual(16, 24, 1, 3, 6).has_skip
    block = InvertedResidual(16, 16, 1, 3, 1).eval()
    x = _input(16)
    with torch.no_grad():
        inner = block.conv_pwl(block.conv_dw(block.shuffle(block.conv_pw(x))))
        torch.testing.assert_close(block(x), inner + x)


def test_block_structure_matches_paper():
    block = InvertedResidual(16, 32, 2, kernel_size=5, expansion=1, groups=2)
    assert block.conv_pw[0].groups == 2 and block.conv_pwl[0].groups == 2
    assert isinstance(block.conv_dw[2], torch.nn.ReLU)  # BN + ReLU after the depthwise conv
    assert block.conv_dw[0].kernel_size == (5, 5) and block.conv_dw[0].stride == (2, 2)
    assert len(block.conv_pwl) == 2  # conv + BN, no ReLU
    assert OPS["ir_k5_s2"].groups == 2


def test_channel_shuffle_interleaves():
    x = torch.arange(4.0).view(1, 4, 1, 1)
    block = InvertedResidual(4, 4, groups=2)
    assert block.shuffle(x).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]


def test_skip_is_identity_or_projection():
    x = _input(16)
    assert Skip(16, 16, 1)(x) is x
    proj = Skip(16, 24, 2)
    assert proj(x).shape == (2, 24, 4, 4)
