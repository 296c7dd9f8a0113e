"""The stochastic supernet: mixing, expected latency, the two parameter sets, alternating updates."""

import json
import math

import pytest
import torch
from torch import nn

from fbnet_building_blocks.arch_specs import load_arch
from fbnet_building_blocks.search_space import CANDIDATE_OPS, get_search_space
from supernet_functions.config_for_supernet import SupernetConfig
from supernet_functions.latency.table import LatencyLookupTable
from supernet_functions.loss import SupernetLoss
from supernet_functions.model_supernet import MixedOperation, StochasticSuperNet
from supernet_functions.sampling import sample_and_save, sample_ops
from supernet_functions.training_functions_supernet import (
    temperature_at,
    train_thetas_epoch,
    train_weights_epoch,
)

OPS = list(CANDIDATE_OPS)


pytestmark = pytest.mark.usefixtures("one_thread")


def _lut(space: str = "tiny", slow_op: str | None = None, factor: float = 100.0):
    """Layer i, op j costs 0.1 * (1 + i) + 0.01 * j ms; ``slow_op`` costs ``factor`` times the rest."""
    n = get_search_space(space).num_layers
    rows = []
    for i in range(n):
        row = {op: 0.1 * (1 + i) + 0.01 * j for j, op in enumerate(OPS)}
        if slow_op:
            row = {op: (factor if op == slow_op else 1.0) * 0.1 for op in OPS}
        rows.append(row)
    return LatencyLookupTable.from_latencies(space, rows, fixed_ms={"stem": 0.05, "head": 0.1})


def _batches(n_batches: int = 2, batch: int = 4, seed: int = 0):
    """Small 16x16 batches: the supernet's convolutions take any input side."""
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, 16, 16, generator=gen), torch.randint(10, (batch,), generator=gen))
        for _ in range(n_batches)
    ]


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, x):
        return x * self.factor


# --------------------------------------------------------------------------- MixedOperation
def test_mixed_operation_accepts_any_modules_and_mixes_by_its_weights():
    layer = MixedOperation([nn.Identity(), _Scale(3.0)], latency=torch.tensor([1.0, 4.0]))
    assert torch.equal(layer.thetas.detach(), torch.zeros(2))  # uniform start
    x = torch.randn(5, 4)
    torch.manual_seed(1)
    w = layer.mixing_weights(2.0)
    torch.manual_seed(1)
    out, latency = layer(x, 2.0)
    assert torch.allclose(out, w[0] * x + w[1] * 3.0 * x)
    assert latency.item() == pytest.approx((w[0] * 1.0 + w[1] * 4.0).item())
    assert "latency" in dict(layer.named_buffers())


def test_gumbel_weights_are_distributions_and_softmax_is_deterministic():
    layer = MixedOperation([nn.Identity()] * 4)
    with torch.no_grad():
        layer.thetas.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    w = layer.mixing_weights(5.0)
    assert w.shape == (4,) and w.sum().item() == pytest.approx(1.0) and (w > 0).all()
    assert not torch.equal(w, layer.mixing_weights(5.0))  # fresh noise each call
    per = MixedOperation([nn.Identity()] * 4, per_sample=True)
    wb = per.mixing_weights(1.0, batch_size=6)
    assert wb.shape == (6, 4) and torch.allclose(wb.sum(1), torch.ones(6))
    soft = MixedOperation([nn.Identity()] * 4, mixing="softmax")
    with torch.no_grad():
        soft.thetas.copy_(layer.thetas)
    expected = torch.softmax(layer.thetas.detach(), 0)
    assert torch.allclose(soft.mixing_weights(0.1), expected)
    assert torch.equal(soft.mixing_weights(0.1), soft.mixing_weights(7.0))


def test_per_sample_mixing_gives_one_latency_per_example():
    layer = MixedOperation([nn.Identity(), _Scale(2.0)], torch.tensor([1.0, 3.0]), per_sample=True)
    x = torch.randn(3, 2)
    torch.manual_seed(4)
    w = layer.mixing_weights(1.0, batch_size=3)
    torch.manual_seed(4)
    out, latency = layer(x, 1.0)
    assert out.shape == (3, 2) and latency.shape == (3,)
    # each example mixes with its own weights: its output and its latency, computed by hand
    assert torch.allclose(out, w[:, :1] * x + w[:, 1:] * 2.0 * x)
    assert torch.allclose(latency, w[:, 0] * 1.0 + w[:, 1] * 3.0)
    assert not torch.allclose(w[0], w[1])  # not one draw for the batch


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="mixing"):
        MixedOperation([nn.Identity()], mixing="hard")
    with pytest.raises(ValueError, match="entries"):
        MixedOperation([nn.Identity()] * 2, latency=torch.ones(3))


# --------------------------------------------------------------------------- the supernet
@pytest.mark.parametrize("space", ["tiny", "fbnet"])
def test_parameter_sets_are_disjoint_and_cover_everything(space):
    net = StochasticSuperNet(space, _lut(space), input_size=32)
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert arch.isdisjoint(weights)
    assert arch | weights == {id(p) for p in net.parameters()}
    assert len(arch) == get_search_space(space).num_layers
    if space == "fbnet":  # build the full 22-layer supernet once and run it
        with torch.no_grad():  # eval: the last map of fbnet at 32x32 is 1x1
            logits, latency = net.eval()(torch.randn(1, 3, 32, 32), 5.0)
        assert logits.shape == (1, 10) and latency.dim() == 0


@pytest.mark.parametrize("mixing", ["gumbel", "softmax"])
def test_one_hot_thetas_give_the_lut_sum(mixing):
    lut = _lut("tiny")
    net = StochasticSuperNet("tiny", lut, mixing=mixing)
    gen = torch.Generator().manual_seed(3)
    chosen = torch.randint(len(OPS), (len(net.stages),), generator=gen).tolist()
    with torch.no_grad():
        for layer, j in zip(net.stages, chosen):
            layer.thetas.fill_(-1e4)
            layer.thetas[j] = 1e4
    with torch.no_grad():
        _, latency = net(torch.randn(1, 3, 8, 8), 1.0)
    expected = lut.predict([OPS[j] for j in chosen], include_fixed=False)
    assert latency.item() == pytest.approx(expected, rel=1e-6)


def test_backward_reaches_every_parameter():
    net = StochasticSuperNet("tiny", _lut("tiny"))
    logits, latency = net(torch.randn(4, 3, 16, 16), 5.0)
    loss, _, _ = SupernetLoss()(logits, torch.arange(4), latency)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for p in net.arch_parameters())


def _optimizers(net):
    w = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    t = torch.optim.Adam(net.arch_parameters(), lr=0.01, weight_decay=5e-4)
    return w, t


def _snapshot(params):
    return [p.detach().clone() for p in params]


def test_weight_step_leaves_thetas_and_theta_step_leaves_weights_unchanged():
    net = StochasticSuperNet("tiny", _lut("tiny"))
    w_opt, t_opt = _optimizers(net)
    criterion = SupernetLoss()
    with torch.no_grad():  # non-zero thetas, so weight decay would show if it touched them
        for p in net.arch_parameters():
            p.normal_()
    thetas, weights = _snapshot(net.arch_parameters()), _snapshot(net.weight_parameters())
    train_weights_epoch(net, _batches(), criterion, w_opt, 5.0)
    assert all(torch.equal(a, b) for a, b in zip(thetas, net.arch_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(weights, net.weight_parameters()))
    assert all(p.grad is None for p in net.arch_parameters())  # none was ever computed

    weights = _snapshot(net.weight_parameters())
    train_thetas_epoch(net, _batches(seed=1), criterion, t_opt, 5.0)
    assert all(torch.equal(a, b) for a, b in zip(weights, net.weight_parameters()))
    assert all(p.grad is None for p in net.weight_parameters())
    assert not all(torch.equal(a, b) for a, b in zip(thetas, net.arch_parameters()))
    assert all(p.requires_grad for p in net.parameters())  # restored after each phase


def test_theta_steps_avoid_a_100x_slower_op_in_every_layer():
    slow = "ir_k5_e6"
    net = StochasticSuperNet("tiny", _lut("tiny", slow_op=slow))
    _, t_opt = _optimizers(net)
    train_thetas_epoch(net, _batches(n_batches=5, seed=2), SupernetLoss(), t_opt, 5.0)
    probs = net.probabilities()
    j = OPS.index(slow)
    assert (probs[:, j] < 1.0 / len(OPS) - 1e-3).all(), probs[:, j]
    assert (probs[:, j] == probs.min(dim=1).values).all()


def test_temperature_is_annealed_after_the_warm_up():
    cfg = SupernetConfig(warmup_epochs=10)
    assert temperature_at(0, cfg) == temperature_at(10, cfg) == 5.0
    assert temperature_at(11, cfg) == pytest.approx(5.0 * math.exp(-0.045))
    assert temperature_at(30, cfg) == pytest.approx(5.0 * math.exp(-0.045 * 20))


# --------------------------------------------------------------------------- sampling
def test_sample_ops_argmax_and_draws_follow_softmax():
    thetas = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, -1.0]])
    assert sample_ops(thetas, ["a", "b", "c"], "argmax") == ["b", "a"]
    gen = torch.Generator().manual_seed(0)
    draws = sample_ops(thetas[:1].expand(4000, 3), ["a", "b", "c"], "sample", gen)  # 4000 layers
    p_b = torch.softmax(thetas[0], 0)[1].item()
    assert draws.count("b") / 4000 == pytest.approx(p_b, abs=0.03)


def _fake_run(tmp_path, lut):
    import json

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    thetas = torch.zeros(lut.num_layers, len(OPS))
    thetas[:, OPS.index("skip")] = 1.0
    state = {
        "format": 2,
        "epoch": 4,
        "search_space": "tiny",
        "input_size": 32,
        "candidate_ops": OPS,
    }
    state.update(thetas=thetas.tolist(), lut_path="x.json", lut_device="cpu")
    (run / "thetas.json").write_text(json.dumps(state))
    lut.save(run / "lut.json")
    return run


def test_a_thetas_file_without_format_counted_epochs_from_0(tmp_path):
    from supernet_functions.sampling import read_thetas

    run = _fake_run(tmp_path, _lut("tiny"))
    assert read_thetas(run)["epoch"] == 4
    state = json.loads((run / "thetas.json").read_text())
    del state["format"]
    (run / "thetas.json").write_text(json.dumps(state))
    assert read_thetas(run)["epoch"] == 5  # epochs done


def test_sampled_architectures_are_saved_never_overwritten_and_load_by_name(tmp_path):
    lut = _lut("tiny")
    run = _fake_run(tmp_path, lut)
    reg = tmp_path / "archs"
    (record,) = sample_and_save(run, "picked", "argmax", arch_dir=reg)
    assert record["ops"] == ["skip"] * 4
    assert record["predicted_latency_ms"] == pytest.approx(lut.predict(record["ops"]))
    spec = load_arch("picked", arch_dir=reg)
    assert spec.ops == ("skip",) * 4 and spec.source["epoch"] == 4
    assert spec.source["predicted_latency_ms"] == pytest.approx(record["predicted_latency_ms"])
    with pytest.raises(FileExistsError):
        sample_and_save(run, "picked", "argmax", arch_dir=reg)
    with pytest.raises(ValueError, match="invalid architecture name"):
        sample_and_save(run, "../evil", "argmax", arch_dir=reg)
    records = sample_and_save(run, "draw", "sample", num_samples=3, seed=1, arch_dir=reg)
    assert [r["name"] for r in records] == ["draw_1", "draw_2", "draw_3"]
    assert all((reg / f"{r['name']}.json").is_file() for r in records)


def test_six_samples_are_the_argmax_and_five_distinct_draws(tmp_path):
    lut = _lut("tiny")
    # every layer: skip at p = e / (e + 8) = 0.25, the rest 0.09 each
    run = _fake_run(tmp_path, lut)
    reg = tmp_path / "archs"
    records = sample_and_save(run, "six", "argmax", num_samples=6, seed=3, arch_dir=reg)
    assert [r["name"] for r in records] == ["six_argmax"] + [f"six_{i}" for i in range(1, 6)]
    assert [r["sampling"] for r in records] == ["argmax"] + ["sample"] * 5
    assert records[0]["ops"] == ["skip"] * 4
    assert len({tuple(r["ops"]) for r in records}) == 6  # the draws skip the argmax and each other
    for r in records:
        assert load_arch(r["name"], arch_dir=reg).ops == tuple(r["ops"])
        p = torch.softmax(torch.tensor([1.0] + [0.0] * 8), 0)  # skip's thetas first
        want = math.prod(p[0] if op == "skip" else p[1] for op in r["ops"])
        assert r["probability"] == pytest.approx(float(want), rel=1e-6)
    again = sample_and_save(run, "six_again", "argmax", num_samples=6, seed=3, arch_dir=reg)
    assert [r["ops"] for r in again] == [r["ops"] for r in records]  # seeded


def test_a_peaked_distribution_saves_fewer_distinct_architectures_with_a_warning(tmp_path, caplog):
    import json

    lut = _lut("tiny")
    run = _fake_run(tmp_path, lut)
    state = json.loads((run / "thetas.json").read_text())
    thetas = torch.full((4, len(OPS)), -50.0)
    thetas[:, OPS.index("skip")] = 50.0
    thetas[0, 0] = 50.0  # layer 0: two ops at 1/2; every other layer: skip almost surely
    state["thetas"] = thetas.tolist()
    (run / "thetas.json").write_text(json.dumps(state))
    with caplog.at_level("WARNING"):
        records = sample_and_save(run, "few", "argmax", num_samples=6, arch_dir=tmp_path / "a")
    assert len(records) == 2 and records[0]["sampling"] == "argmax"
    assert {r["ops"][0] for r in records} == {OPS[0], "skip"}
    assert "saving 2 of 6" in caplog.text
