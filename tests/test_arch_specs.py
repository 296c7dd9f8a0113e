import json

import pytest
import torch

from fbnet_building_blocks.arch_specs import ARCHS, ArchSpec, load_arch, save_arch
from fbnet_building_blocks.fbnet_builder import get_model
from fbnet_building_blocks.search_space import SEARCH_SPACES, get_search_space, make_divisible
from fbnet_building_blocks.summary import model_summary

# Authors' published table (ImageNet, 224x224, 1000 classes): params, multiply-adds.
PUBLISHED = {"fbnet_a": (4.3e6, 249.4e6), "fbnet_b": (4.8e6, 295.6e6), "fbnet_c": (5.5e6, 383.0e6)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_madds_match_published_table(name):
    summary = model_summary(get_model(name, 1000, search_space="fbnet"), 224)
    params, macs = PUBLISHED[name]
    assert summary["params"] == pytest.approx(params, rel=0.02)
    assert summary["macs"] == pytest.approx(macs, rel=0.02)
    assert summary["output_shape"] == [1, 1000]


def test_summary_counts_multiply_adds_of_a_known_layer():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False))
    # 8 output channels * 3*3*3 weights * 32*32 positions
    assert model_summary(conv, 32)["macs"] == 8 * 27 * 32 * 32


def test_search_space_macro_is_paper_table_1():
    space = get_search_space("fbnet")
    shapes = space.layer_shapes(224)
    assert space.num_layers == 22 and space.stem_stride == 2
    assert [s.out_channels for s in shapes] == [16] + [24] * 4 + [32] * 4 + [64] * 4 + [112] * 4 + [
        184
    ] * 4 + [352]
    assert [s.index for s in shapes if s.stride == 2] == [1, 5, 9, 17]
    assert shapes[0].input_hw == 112 and shapes[-1].input_hw == 7
    cifar = get_search_space("fbnet_cifar").layer_shapes(32)
    assert [s.index for s in cifar if s.stride == 2] == [5, 9, 17]
    assert cifar[-1].input_hw == 4


@pytest.mark.parametrize("name", sorted(ARCHS))
@pytest.mark.parametrize("space", ["fbnet", "fbnet_cifar"])
def test_every_named_arch_runs_at_32(name, space):
    model = get_model(name, 10, search_space=space, input_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_named_arch_runs_at_its_own_size(name):
    model = get_model(name, 1000).eval()
    size = ARCHS[name].input_size or 224
    assert model.input_size == size
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 1000)


def test_width_multiplier_and_head():
    model = get_model("fbnet_96_035_1")
    assert model.stem[0].out_channels == make_divisible(16 * 0.35)
    assert model.classifier.in_features == 1504
    assert get_model("fbnet_c").classifier.in_features == 1984
    assert get_model("fbnet_a", head_channels=64).classifier.in_features == 64


def test_fbnet_a_layer_15_is_e3():
    assert ARCHS["fbnet_a"].ops[15] == "ir_k5_e3"
    assert all(len(spec.ops) == 22 for spec in ARCHS.values())


def test_bad_specs_raise_named_errors(tmp_path):
    ops = list(ARCHS["fbnet_a"].ops)
    with pytest.raises(ValueError, match="has 21 layers, but search space 'fbnet' has 22"):
        get_model(ArchSpec("short", ops[:-1]))
    with pytest.raises(KeyError, match="layer 3: unknown op 'ir_k3_e9'"):
        get_model(ArchSpec("bad", ops[:3] + ["ir_k3_e9"] + ops[4:]))
    with pytest.raises(KeyError, match="unknown architecture 'fbnet_z'"):
        get_model("fbnet_z")
    with pytest.raises(KeyError, match="unknown search space 'nope'"):
        get_model("fbnet_a", search_space="nope")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_arch(str(broken))
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"name": "x", "ops": ops, "colour": "red"}))
    with pytest.raises(ValueError, match="unknown architecture fields"):
        load_arch(str(extra))
    with pytest.raises(FileNotFoundError):
        load_arch(str(tmp_path / "absent.json"))


def test_save_and_load_by_name(tmp_path):
    spec = ArchSpec("my_net", ARCHS["fbnet_b"].ops, "fbnet_cifar", source={"run": "r1"})
    path = save_arch(spec, tmp_path)
    assert load_arch("my_net", tmp_path) == spec
    assert load_arch(str(path)).source == {"run": "r1"}
    before = path.read_text()
    with pytest.raises(FileExistsError, match="already exists"):
        save_arch(spec, tmp_path)
    assert path.read_text() == before
    with pytest.raises(FileExistsError, match="built-in"):
        save_arch(ArchSpec("fbnet_a", spec.ops), tmp_path)
    for bad in ("../evil", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="invalid architecture name"):
            save_arch(ArchSpec(bad, spec.ops), tmp_path)


def test_tiny_space_builds():
    space = SEARCH_SPACES["tiny"]
    spec = ArchSpec("t", ["ir_k3_e1"] * space.num_layers, "tiny")
    assert get_model(spec, 10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
