"""``--amp`` has one meaning in both trainers: bfloat16 autocast of the forward pass on the run's
device, float32 weights and loss, no loss scaling. Checked on the CPU, where autocast runs the same
code path as on CUDA."""

from __future__ import annotations

import pytest
import torch

from architecture_functions.training_functions import train_one_epoch
from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.fbnet_builder import get_model
from general_functions.dataloaders import make_fake_data, make_loader
from general_functions.precision import AMP_DTYPE
from supernet_functions.model_supernet import StochasticSuperNet
from supernet_functions.speed import prepare_supernet

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


class _Costs:
    num_layers = 4  # the tiny space

    def latency_vector(self, layer: int, ops) -> torch.Tensor:
        return 0.02 + 0.01 * torch.arange(len(ops), dtype=torch.float32) + 0.005 * layer


def _dtype_of_classifier(model: torch.nn.Module, seen: list) -> None:
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    classifier.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_amp_search_forward_is_bfloat16_and_trimmed_kernels_follow_it():
    """The prepared supernet (channels_last, trimmed kernels, the small-map weight gradient) under
    --amp: the classifier runs in bfloat16, the loss gets float32 outputs, and logits and gradients
    agree with the plain supernet under the same autocast (they used to fail in the backward pass:
    the small-map gradient mixed a bfloat16 input with a float32 weight)."""
    torch.manual_seed(0)
    plain = StochasticSuperNet("tiny", _Costs(), 10, 8, mixing="softmax")
    with torch.no_grad():
        for layer in plain.stages:
            layer.thetas.copy_(torch.randn_like(layer.thetas))
    fast = StochasticSuperNet("tiny", _Costs(), 10, 8, mixing="softmax")
    fast.load_state_dict(plain.state_dict())
    prepare_supernet(fast, CPU, channels_last=True, trim_kernels=True, amp=True)
    seen = []
    _dtype_of_classifier(fast, seen)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)
    outs = []
    for model, inputs in ((plain, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        model.train()
        if model is plain:
            with torch.autocast("cpu", dtype=AMP_DTYPE):
                logits, latency = model(inputs, 1.0)
        else:
            logits, latency = model(inputs, 1.0)
        (torch.nn.functional.cross_entropy(logits.float(), y) * latency.float().mean()).backward()
        outs.append((logits, _grads(model)))
    assert seen == [AMP_DTYPE]
    assert outs[1][0].dtype == torch.float32  # handed to the loss in float32
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    torch.testing.assert_close(outs[1][0], outs[0][0].float(), rtol=0.02, atol=0.02)
    (g_plain, g_fast) = outs[0][1], outs[1][1]
    assert g_fast.shape == g_plain.shape
    assert (g_fast - g_plain).norm() < 0.05 * g_plain.norm()


def test_amp_training_step_is_bfloat16_forward_float32_update():
    """train_one_epoch with amp: a bfloat16 classifier output, float32 weights that move, a finite
    float32 loss; without amp the same step runs in float32."""
    data = make_fake_data(16, 8, seed=1)
    for amp, dtype in ((True, AMP_DTYPE), (False, torch.float32)):
        torch.manual_seed(0)
        model = get_model(ArchSpec("t", ["ir_k3_e3", "skip", "ir_k5_e1", "ir_k3_e1"], "tiny"), 10)
        seen = []
        _dtype_of_classifier(model, seen)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        metrics = train_one_epoch(
            model, make_loader(data.train, 8, train=False), torch.nn.CrossEntropyLoss(),
            optimizer, CPU, 1, amp=amp, progress=False,
        )  # fmt: skip
        assert set(seen) == {dtype}
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        assert torch.isfinite(torch.tensor(metrics["loss"]))
