"""The initialisation, head and block structure the retraining defaults promise (TRAINING_DETAILS.md)."""

import math

import pytest
import torch
from torch import nn

from architecture_functions.config_for_arch import ArchTrainConfig
from architecture_functions.training_functions import build_model
from fbnet_building_blocks.arch_specs import load_arch
from fbnet_building_blocks.blocks import InvertedResidual
from fbnet_building_blocks.fbnet_builder import get_model


def _convs(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _expected_std(conv: nn.Conv2d, scheme: str) -> float:
    """The std each scheme gives a conv, from the layer's shape alone (not torch's fan helpers)."""
    k = conv.kernel_size[0] * conv.kernel_size[1]
    if (
        scheme == "fan_out"
    ):  # normal(0, sqrt(2 / fan_out)), fan_out = out_channels * k (torch's convention)
        return math.sqrt(2.0 / (conv.out_channels * k))
    # uniform(-b, b), b = sqrt(2) * sqrt(3 / fan_in), fan_in = in_channels / groups * k; std = b / sqrt(3)
    return math.sqrt(2.0 / (conv.in_channels // conv.groups * k))


@pytest.mark.parametrize("scheme", ["fan_out", "original"])
def test_conv_weights_have_the_scheme_std(scheme):
    torch.manual_seed(0)
    model = get_model("fbnet_b", cnt_classes=10, init=scheme)
    checked = 0
    for name, conv in _convs(model):
        w = conv.weight.detach()
        if w.numel() < 2000:  # too few draws for a tight check of the std
            continue
        expected = _expected_std(conv, scheme)
        assert w.std().item() == pytest.approx(expected, rel=0.08), name
        assert abs(w.mean().item()) < 4 * expected / math.sqrt(w.numel()), name
        if scheme == "original":  # uniform: nothing beyond the bound sqrt(3) * std
            assert w.abs().max().item() <= math.sqrt(3) * expected * (1 + 1e-6), name
        checked += 1
    assert checked > 40
    fc = model.classifier
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(fc.bias) == 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_the_two_schemes_differ_most_on_depthwise_convs():
    """Fan-out counts every output channel of a depthwise conv; fan-in counts one input channel."""
    a = get_model("fbnet_b", cnt_classes=10, init="fan_out")
    b = get_model("fbnet_b", cnt_classes=10, init="original")
    dw_a = a.blocks[21].conv_dw[0].weight  # ir_k3_e6 after 184 channels: 1104 channels, 3x3
    dw_b = b.blocks[21].conv_dw[0].weight
    assert (dw_b.std() / dw_a.std()).item() == pytest.approx(math.sqrt(1104), rel=0.1)


@pytest.mark.parametrize(
    "head, modules",
    [
        ("conv_bn_relu", (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)),
        ("conv_bn", (nn.Conv2d, nn.BatchNorm2d)),
        ("conv_bias", (nn.Conv2d,)),
    ],
)
def test_head_structures(head, modules):
    model = get_model("fbnet_a", cnt_classes=10, head=head, head_channels=640)
    parts = list(model.head) if isinstance(model.head, nn.Sequential) else [model.head]
    assert tuple(type(p) for p in parts) == modules
    conv = parts[0]
    assert conv.out_channels == 640 and model.classifier.in_features == 640
    assert (conv.bias is not None) == (head == "conv_bias")


def test_bare_depthwise_conv_keeps_parameter_names_and_drops_bn():
    paper = InvertedResidual(16, 24, stride=2, kernel_size=5, expansion=3)
    bare = InvertedResidual(16, 24, stride=2, kernel_size=5, expansion=3, dw_bn_relu=False)
    assert "conv_dw.0.weight" in dict(bare.named_parameters())
    assert [type(m) for m in bare.conv_dw] == [nn.Conv2d]
    assert [type(m) for m in paper.conv_dw] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    x = torch.randn(2, 16, 8, 8)
    assert bare(x).shape == paper(x).shape == (2, 24, 4, 4)


def test_trainer_defaults_build_the_original_reproductions_network():
    """The CIFAR-10 defaults: head conv with bias 1504 wide, dropout 0.2, bare depthwise convs,
    Kaiming-uniform (fan-in) convs, BN scales from U(0, 1) (PyTorch <= 1.1), FC normal(0, 0.01)."""
    cfg = ArchTrainConfig(channels_last="off", trim_kernels=False)
    torch.manual_seed(0)
    model = build_model(cfg, load_arch("fbnet_b"), 10, 32, torch.device("cpu"))
    assert isinstance(model.head, nn.Conv2d) and model.head.bias is not None
    assert model.head.out_channels == 1504 == model.classifier.in_features  # not the authors' 1984
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.2
    for block in model.blocks:
        if isinstance(block, InvertedResidual):
            assert [type(m) for m in block.conv_dw] == [nn.Conv2d]
    for name, conv in _convs(model):
        w = conv.weight.detach()
        bound = math.sqrt(3) * _expected_std(conv, "original")
        assert w.abs().max().item() <= bound * (1 + 1e-6), name
        if w.numel() >= 2000:
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.08), name
    scales = torch.cat(
        [m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    )
    assert scales.min() >= 0 and scales.max() < 1
    # U(0, 1): mean 1/2 and std 1/sqrt(12) over the network's thousands of BN channels
    assert scales.mean().item() == pytest.approx(0.5, abs=0.02)
    assert scales.std().item() == pytest.approx(1 / math.sqrt(12), rel=0.05)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_head_channels_zero_takes_the_architectures_own_width():
    cfg = ArchTrainConfig(head_channels=0, channels_last="off", trim_kernels=False)
    model = build_model(cfg, load_arch("fbnet_b"), 10, 32, torch.device("cpu"))
    assert model.head.out_channels == 1984
