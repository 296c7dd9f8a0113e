"""Exporting a trained network: BN folding, every format loaded back and compared with the checkpoint,
the table's prediction, int8, and one-line refusals.

A tiny network (the 4-layer ``tiny`` space, synthetic data) is trained for 2 steps once per module; each
export then takes a second or two.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import architecture_main_file
from architecture_functions import export
from architecture_functions.config_for_arch import ArchTrainConfig
from architecture_functions.export import fold_batchnorm
from architecture_functions.training_functions import run
from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.fbnet_builder import get_model
from general_functions.checkpoint import save_checkpoint
from general_functions.config_utils import config_from_dict
from general_functions.dataloaders import ORIGINAL_CIFAR10_STD, make_fake_data
from supernet_functions.latency.table import LatencyLookupTable

REPO = Path(__file__).resolve().parent.parent
OPS = ["ir_k3_s2", "ir_k5_e3", "skip", "ir_k3_e1"]  # a grouped shuffle block and a residual one
FAKE = {"fake_train_size": 96, "fake_test_size": 80, "seed": 3}
# the tests load TorchScript files themselves; torch 2.14 deprecates torch.jit.load
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
ONNX_MISSING = [
    p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """best.pth of a 2-step training run of a tiny network with the trainer's default structure."""
    folder = tmp_path_factory.mktemp("export_run")
    arch = folder / "tiny_export.json"
    arch.write_text(json.dumps({"name": "tiny_export", "ops": OPS, "search_space": "tiny"}))
    values = {
        "architecture_name": str(arch),
        "dataset": "fake",
        **FAKE,
        "batch_size": 32,
        "epochs": 1,
        "max_steps_per_epoch": 2,
        "threads": 1,
        "progress": False,
        "log_dir": str(folder / "runs"),
        "run_name": "r",
    }
    threads = torch.get_num_threads()
    run(config_from_dict(ArchTrainConfig, values))
    torch.set_num_threads(threads)
    return folder / "runs" / "r" / "best.pth"


def _checkpoint_network(path: Path) -> nn.Module:
    """The checkpoint's network in eval mode, built here without the exporter's code."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = state["config"]
    model = get_model(
        ArchSpec.from_dict(state["arch_spec"]),
        cnt_classes=10,
        head_channels=cfg["head_channels"] or None,
        dropout=cfg["dropout"],
        head=cfg["head"],
        dw_bn_relu=cfg["dw_bn_relu"],
    )
    model.load_state_dict(state["model"])
    return model.eval()


def _test_images(n: int = 80) -> torch.Tensor:
    """The synthetic test images the run used, normalised as the trainer normalises them."""
    data = make_fake_data(FAKE["fake_train_size"], FAKE["fake_test_size"], seed=FAKE["seed"])
    x = data.test.images[:n].float() / 255
    mean = torch.tensor(data.mean)[:, None, None]
    return (x - mean) / torch.tensor(ORIGINAL_CIFAR10_STD)[:, None, None]


def _export(capsys, *args: str) -> dict:
    """Run the command line in this process; its last stdout line as JSON."""
    architecture_main_file.main(["--export", *args, "--rounds", "2", "--progress", "False"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _refusal(capsys, argv: list[str]) -> str:
    """The one line a refused command prints (no traceback)."""
    with pytest.raises(SystemExit) as info:
        architecture_main_file.main(argv)
    message = info.value.code if isinstance(info.value.code, str) else capsys.readouterr().err
    lines = message.strip().splitlines()
    assert len(lines) == 1, message
    assert lines[0].startswith("error:") or ": error:" in lines[0], message
    return lines[0]


def _random_bn_stats(model: nn.Module) -> None:
    """BN statistics and affine parameters far from their initial values, so folding has work."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen))


# ----------------------------------------------------------------------------------- BN folding
def test_fold_batchnorm_equals_torch_fusion_and_eval_outputs():
    conv = nn.Conv2d(6, 6, 5, stride=2, padding=2, groups=6, bias=False)
    seq = nn.Sequential(conv, nn.BatchNorm2d(6), nn.ReLU()).eval()
    _random_bn_stats(seq)
    expected = fuse_conv_bn_eval(conv, seq[1])  # torch's own fusion, for the parameters
    x = torch.randn(3, 6, 9, 9)
    before = seq(x)
    assert fold_batchnorm(seq) == 1
    assert [type(m) for m in seq] == [nn.Conv2d, nn.ReLU]
    torch.testing.assert_close(seq[0].weight, expected.weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(seq[0].bias, expected.bias, rtol=1e-6, atol=1e-6)
    assert (seq(x) - before).abs().max() < 1e-5


@pytest.mark.parametrize("structure", ["trainer", "paper"])
def test_fold_batchnorm_keeps_a_whole_network(structure):
    kw = {"head": "conv_bias", "dw_bn_relu": False} if structure == "trainer" else {}
    model = get_model(ArchSpec("t", tuple(OPS), "tiny"), cnt_classes=10, **kw).eval()
    _random_bn_stats(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    assert fold_batchnorm(model) == n_bn > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (model(x) - before).abs().max() < 1e-4


# ----------------------------------------------------------------------------------- formats
FORMAT_CASES = [
    ("exported_program", "net.pt2"),
    ("torchscript", "net.pt"),
    pytest.param(
        "onnx",
        "net.onnx",
        marks=pytest.mark.skipif(
            bool(ONNX_MISSING),
            reason=f"optional ONNX packages missing ({', '.join(ONNX_MISSING)}): "
            "pip install -r requirements-export.txt",
        ),
    ),
]


def _load_file(fmt: str, path: Path):
    if fmt == "exported_program":
        return torch.export.load(str(path)).module()
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


@pytest.mark.parametrize("fmt,name", FORMAT_CASES)
def test_export_loads_back_equal_to_the_checkpoint(trained, tmp_path, capsys, fmt, name):
    out = tmp_path / name
    summary = _export(capsys, str(trained), "--format", fmt, "--out", str(out))
    assert out.is_file() and summary["path"] == str(out) and summary["format"] == fmt
    assert 0 <= summary["max_abs_diff"] <= 1e-4
    assert summary["measured_latency_ms"] > 0
    assert summary["size_bytes"] == out.stat().st_size
    assert out.stat().st_mode & 0o777 == (tmp_path / f"{name}.json").stat().st_mode & 0o777
    # no committed table for the tiny space: no prediction, and the report says why
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert (
        summary["predicted_latency_ms"] is None
        and "no committed latency table" in (report["prediction_note"])
    )
    assert report["measured_latency_ms"] == summary["measured_latency_ms"]
    assert report["inference_form"]["batchnorms_folded"] > 0
    assert report["timing"]["threads"] == 1 and report["timing"]["batch_size"] == 1
    # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}.json"])
    # the file alone, loaded here, computes the checkpoint's network on every batch size
    reference = _checkpoint_network(trained)
    loaded = _load_file(fmt, out)
    x = _test_images()
    with torch.inference_mode():
        for batch in (x, x[:1], x[:3]):
            assert (loaded(batch) - reference(batch)).abs().max() < 1e-4
    if fmt == "exported_program":  # no BatchNorm or dropout left in the exported graph
        graph = str(torch.export.load(str(out)).graph)
        assert "aten.conv2d" in graph
        assert "batch_norm" not in graph and "dropout" not in graph


def test_prediction_is_the_tables_sum_for_the_architecture(trained, tmp_path, capsys):
    model = _checkpoint_network(trained)
    per_op = {op: 0.5 + i for i, op in enumerate(sorted(set(OPS)))}
    lut = LatencyLookupTable.from_latencies(
        "tiny",
        [dict(per_op) for _ in OPS],
        fixed_ms={"stem": 0.25, "head": 0.125},
        input_size=32,
        batch_size=1,
        threads=1,
        device="cpu",
        cnt_classes=10,
        head_channels=model.classifier.in_features,
        num_layers=len(OPS),
    )
    lut.save(tmp_path / "tiny_lut.json")
    summary = _export(
        capsys,
        str(trained),
        "--out",
        str(tmp_path / "net.pt2"),
        "--lut_path",
        str(tmp_path / "tiny_lut.json"),
    )
    assert summary["predicted_latency_ms"] == pytest.approx(sum(per_op[op] for op in OPS) + 0.375)


def test_int8_reports_the_top1_of_its_own_file(trained, tmp_path, capsys):
    out = tmp_path / "int8.pt"
    summary = _export(
        capsys, str(trained), "--format", "torchscript", "--out", str(out), "--quantize", "int8"
    )
    report = json.loads((tmp_path / "int8.pt.json").read_text())
    int8 = report["int8"]
    assert int8["calibration_images"] == FAKE["fake_train_size"]  # all there is (< 512)
    assert summary["int8_top1"] == int8["top1"] and summary["fp32_latency_ms"] > 0
    assert int8["fp32_size_bytes"] > summary["size_bytes"] == out.stat().st_size
    loaded = torch.jit.load(str(out))
    assert "quantized::conv2d" in str(loaded.inlined_graph)
    x = _test_images()
    labels = make_fake_data(
        FAKE["fake_train_size"], FAKE["fake_test_size"], seed=FAKE["seed"]
    ).test.labels
    with torch.inference_mode():
        top1 = (loaded(x).argmax(1) == labels).float().mean().item() * 100
        fp32_top1 = (
            _checkpoint_network(trained)(x).argmax(1) == labels
        ).float().mean().item() * 100
    assert int8["top1"] == pytest.approx(top1, abs=1e-3)
    assert int8["fp32_top1"] == pytest.approx(fp32_top1, abs=1e-3)


def test_int8_in_exported_program_is_written_or_refused_in_one_line(trained, tmp_path, capsys):
    """torch 2.14's torch.export cannot trace the int8 engine's packed weights: one line says so."""
    out = tmp_path / "int8.pt2"
    argv = ["--export", str(trained), "--out", str(out), "--quantize", "int8", "--rounds", "2"]
    try:
        architecture_main_file.main([*argv, "--progress", "False"])
    except SystemExit as refused:
        line = str(refused.code)
        assert "\n" not in line and line.startswith("error: the int8 network cannot be saved")
        assert "--format torchscript can save it" in line and not out.exists()
    else:
        assert out.is_file() and json.loads(capsys.readouterr().out.splitlines()[-1])["quantize"]


def test_int8_keeps_the_last_blocks_in_float32_when_asked():
    model = get_model(ArchSpec("t", tuple(OPS), "tiny"), cnt_classes=10, head="conv_bias").eval()
    fold_batchnorm(model)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    with export._quantized_engine() as engine:
        quantized, kept = export.quantize_int8(model, batches, engine, fp32_last=2)
        out = quantized(batches[0])
    assert kept == ["blocks.2", "blocks.3", "head", "classifier"]
    float_convs = {n for n, m in quantized.named_modules() if type(m) is nn.Conv2d}
    int8 = {n for n, m in quantized.named_modules() if ".quantized." in type(m).__module__}
    assert float_convs == {
        "blocks.3.conv_pw.0.0",
        "blocks.3.conv_dw.0.0",
        "blocks.3.conv_pwl.0",
        "head",
    }  # block 2 is an identity skip
    assert "stem.0" in int8 and {n.split(".")[1] for n in int8 if n.startswith("blocks.")} == {
        "0",
        "1",
    }
    assert type(quantized.classifier) is nn.Linear
    assert not out.is_quantized and out.shape == (8, 10)


# ----------------------------------------------------------------------------------- refusals
def test_refusals_are_one_line(trained, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "net.pt2")
    supernet = tmp_path / "supernet.pth"
    save_checkpoint(supernet, {"stage": "supernet", "epoch": 1, "model": {}})
    garbage = tmp_path / "random.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    assert "'supernet' checkpoint" in _refusal(capsys, ["--export", str(supernet), "--out", out])
    assert "not a checkpoint" in _refusal(capsys, ["--export", str(garbage), "--out", out])
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(trained.read_bytes()[:4000])
    assert "not a checkpoint" in _refusal(capsys, ["--export", str(truncated), "--out", out])
    assert "does not exist" in _refusal(
        capsys, ["--export", str(tmp_path / "no.pth"), "--out", out]
    )
    assert "format" in _refusal(
        capsys, ["--export", str(trained), "--format", "tflite", "--out", out]
    )
    assert "--out" in _refusal(capsys, ["--export", str(trained)])
    existing = tmp_path / "existing.pt2"
    existing.write_text("keep me")
    assert "already exists" in _refusal(capsys, ["--export", str(trained), "--out", str(existing)])
    assert existing.read_text() == "keep me"
    missing = export._Format(".onnx", export._save_onnx, export._load_onnx, ("fbnet_no_such_pkg",))
    monkeypatch.setitem(export.FORMATS, "onnx", missing)
    line = _refusal(capsys, ["--export", str(trained), "--format", "onnx", "--out", out])
    assert "fbnet_no_such_pkg" in line and "pip install -r requirements-export.txt" in line
    assert not (tmp_path / "net.pt2").exists()


def test_a_refusal_prints_no_traceback(tmp_path):
    garbage = tmp_path / "random.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    argv = ["--export", str(garbage), "--out", str(tmp_path / "x.pt2")]
    with pytest.raises(SystemExit) as exit_:  # a string: Python prints it alone, exit status 1
        architecture_main_file.main(argv)
    message = str(exit_.value.code)
    assert message.startswith("error: checkpoint") and "\n" not in message
