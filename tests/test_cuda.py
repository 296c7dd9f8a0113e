"""The CUDA paths: the same code on a GPU computes what it computes on the CPU.

Marked ``gpu``: skipped where CUDA is absent (CI), run on a machine with an NVIDIA GPU with
``python -m pytest -q -m gpu``. Each test compares the GPU against the CPU or checks the real
behaviour (finite losses, checkpoints that load on the CPU), not only that nothing crashed.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import pytest
import torch

from architecture_functions.config_for_arch import ArchTrainConfig
from architecture_functions.training_functions import run as train_arch
from architecture_functions.training_functions import train_one_epoch
from fbnet_building_blocks.arch_specs import ARCHS, ArchSpec
from fbnet_building_blocks.fbnet_builder import get_model
from fbnet_building_blocks.search_space import CANDIDATE_OPS
from general_functions.checkpoint import load_checkpoint
from general_functions.config_utils import config_from_dict
from general_functions.dataloaders import make_fake_data, make_loader
from supernet_functions.config_for_supernet import PRESETS, SupernetConfig
from supernet_functions.latency.measure import (
    LatencyLookupTable,
    build_lut,
    network_parts,
    time_parts,
)
from supernet_functions.latency.validate import validate_lut
from supernet_functions.model_supernet import StochasticSuperNet
from supernet_functions.speed import prepare_supernet
from supernet_functions.training_functions_supernet import run as search

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
OPS = list(CANDIDATE_OPS)


class _Costs:
    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers

    def latency_vector(self, layer: int, ops) -> torch.Tensor:
        return 0.02 + 0.01 * torch.arange(len(ops), dtype=torch.float32) + 0.005 * layer


def test_tensor_loader_on_cuda_gives_the_cpu_batches_up_to_the_random_draws():
    data = make_fake_data(64, 32)
    cpu = list(make_loader(data.test, 16, train=False, device="cpu"))
    gpu = list(make_loader(data.test, 16, train=False, device=CUDA))
    assert all(xg.is_cuda for xg, _ in gpu)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)
    # training batches: augmented on the device, same shapes and label multiset per epoch
    labels = torch.cat([y.cpu() for _, y in make_loader(data.train, 16, train=True, device=CUDA)])
    assert torch.equal(labels.sort().values, data.train.labels.sort().values)


@pytest.fixture
def no_tf32():
    """cuDNN convolutions default to TF32 (10-bit mantissa); compare with the CPU in float32."""
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = allowed


@pytest.mark.parametrize("channels_last", [False, True])
def test_supernet_forward_and_backward_on_cuda_match_the_cpu(channels_last, no_tf32):
    """Deterministic softmax mixing over random thetas: the same logits, latency and gradients."""
    torch.manual_seed(0)
    cpu = StochasticSuperNet("tiny", _Costs(4), 10, 16, mixing="softmax")
    with torch.no_grad():
        for layer in cpu.stages:
            layer.thetas.copy_(torch.randn_like(layer.thetas))
    gpu = StochasticSuperNet("tiny", _Costs(4), 10, 16, mixing="softmax")
    gpu.load_state_dict(cpu.state_dict())
    prepare_supernet(gpu, CUDA, channels_last=channels_last, trim_kernels=True)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    outs = []
    for model, dev in ((cpu, torch.device("cpu")), (gpu, CUDA)):
        model.train()
        xd = x.to(dev)
        if channels_last and dev == CUDA:
            xd = xd.contiguous(memory_format=torch.channels_last)
        logits, latency = model(xd, 1.0)
        loss = torch.nn.functional.cross_entropy(logits, y.to(dev)) * latency.mean()
        loss.backward()
        outs.append((logits.detach().cpu(), latency.detach().cpu()))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1])
    grads = dict(gpu.named_parameters())
    for name, p in cpu.named_parameters():
        assert grads[name].grad is not None, name
        torch.testing.assert_close(grads[name].grad.cpu(), p.grad, rtol=1e-2, atol=1e-4, msg=name)


@pytest.fixture
def keep_determinism():
    """``deterministic=True`` switches deterministic algorithms on for the whole process."""
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


@pytest.mark.parametrize("amp", [False, True])
def test_search_runs_on_cuda_and_resumes(tmp_path, amp, keep_determinism):
    rows = [{op: 0.2 + 0.1 * i + 0.03 * j for j, op in enumerate(OPS)} for i in range(4)]
    lut = LatencyLookupTable.from_latencies("tiny", rows, fixed_ms={"stem": 0.1, "head": 0.2})
    lut_path = tmp_path / "lut.json"
    lut_path.write_text(json.dumps(lut.to_dict()))
    values = {**PRESETS["smoke"], "fake_train_size": 80, "batch_size": 20, "epochs": 3}
    # deterministic: cuDNN's fastest weight-gradient kernels add in a varying order, and Adam's first
    # steps (about lr * sign(gradient)) turn such last-bit differences into visible ones
    values.update(lut_path=str(lut_path), log_dir=str(tmp_path), device="cuda", amp=amp)
    values.update(deterministic=True, progress=False)
    full = search(config_from_dict(SupernetConfig, {**values, "run_name": "full"}))
    part = search(
        config_from_dict(SupernetConfig, {**values, "run_name": "part", "stop_after_epoch": 2})
    )
    resumed = search(
        config_from_dict(SupernetConfig, {**values, "resume": f"{part['run_dir']}/last.pth"})
    )
    thetas = [json.loads((Path(r["run_dir"]) / "thetas.json").read_text()) for r in (full, resumed)]
    for a, b in zip(thetas[0]["thetas"], thetas[1]["thetas"]):
        torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)
    state = load_checkpoint(Path(full["run_dir"]) / "last.pth", stage="supernet")  # CPU map
    assert all(t.device.type == "cpu" for t in state["model"].values())


@pytest.mark.parametrize("amp", [False, True])
def test_architecture_training_on_cuda_learns(amp):
    """Repeated epochs over 32 fixed images on the GPU (bfloat16 autocast with ``amp``)."""
    torch.manual_seed(0)
    data = make_fake_data(32, 8, seed=1)
    model = get_model(ArchSpec("t", OPS[:4], "tiny"), cnt_classes=10).to(CUDA)
    loader = make_loader(data.train, 32, train=False, device=CUDA)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    history = [
        train_one_epoch(model, loader, criterion, optimizer, CUDA, e, amp=amp, progress=False)
        for e in range(1, 31)
    ]
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"] and history[-1]["top1"] > 50


def test_architecture_run_on_cuda_writes_a_checkpoint_that_loads_on_the_cpu(tmp_path):
    arch = tmp_path / "a.json"
    arch.write_text(json.dumps({"name": "a", "ops": OPS[:4], "search_space": "tiny"}))
    values = {"architecture_name": str(arch), "dataset": "fake", "fake_train_size": 128}
    values.update(fake_test_size=64, batch_size=64, epochs=1, device="cuda", amp=True)
    values.update(progress=False, log_dir=str(tmp_path), run_name="r")
    summary = train_arch(config_from_dict(ArchTrainConfig, values))
    state = load_checkpoint(tmp_path / "r" / "best.pth", stage="architecture")
    assert all(t.device.type == "cpu" for t in state["model"].values())
    model = get_model(ArchSpec("a", OPS[:4], "tiny"), cnt_classes=10)
    model.load_state_dict(state["model"])
    assert summary["epochs"] == 1 and state["config"]["device"] == "cuda"


def test_cuda_parts_add_up_to_the_pass():
    """Events between the parts, one synchronisation: the parts' sum is the network's own time.

    FBNet-A at 224x224, batch 1 (26 parts). Each event between parts costs about one launch, which
    a launch-bound GPU waits for, so the sum exceeds the whole (by the same for every architecture of
    the space, which all have 26 parts): by less than 15% on a first H200 host; on a second one, whose
    host CPU changed speed 1.5x within minutes, 5 of 8 runs went over 15% (1.24, 1.18 and 1.19 where
    printed). The upper bound, 1.3, comes from those runs. The two are timed alternately, so a change
    in the host's speed touches both alike.
    """
    model = get_model(ARCHS["fbnet_a"], cnt_classes=1000).to(CUDA).eval()
    fixed, blocks = network_parts(model)
    parts = [fixed["stem"], *blocks, fixed["head"], fixed["pool"], fixed["classifier"]]
    x = torch.randn(1, 3, 224, 224, device=CUDA)
    with torch.inference_mode():
        for _ in range(10):
            time_parts(parts, x, CUDA, time.perf_counter)
        by_parts, whole = [], []
        for _ in range(50):
            by_parts.append(sum(time_parts(parts, x, CUDA, time.perf_counter)))
            whole.append(time_parts([model], x, CUDA, time.perf_counter)[0])
    ratio = statistics.median(by_parts) / statistics.median(whole)
    assert 0.9 < ratio < 1.3, ratio


def test_cuda_lut_predicts_networks_measured_on_cuda():
    lut = build_lut("tiny", input_size=32, device="cuda", rounds=20, progress=False)
    assert lut.meta["device"] == "cuda"
    assert lut.meta["device_name"] == torch.cuda.get_device_name()
    assert all(e["median"] > 0 for row in lut.layers for e in row.values())
    report = validate_lut(lut, num_archs=8, rounds=10, progress=False)  # the table's device
    assert report["validation"]["device"] == "cuda"
    assert report["mape_percent"] < 25.0, report["mape_percent"]
