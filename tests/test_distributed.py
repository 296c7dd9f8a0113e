"""Data-parallel training: 2 CPU processes (gloo, started with torch.multiprocessing) against 1 process.

Every multi-process scenario runs in one spawn (starting processes costs seconds); each test then checks
what the ranks reported. The processes set the variables torchrun sets, so the code path is the
torchrun one (``init_distributed`` reads them).

Batch norm: each rank normalises its share of the batch with that share's statistics, so a DDP step is
not the one-process step. The comparisons with one process therefore run with batch norm in eval mode
(running statistics, per-example maths), where the two agree up to float rounding (tolerance below);
with batch norm in training mode the test checks only that the ranks agree exactly.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.fbnet_builder import get_model
from general_functions.checkpoint import load_checkpoint
from general_functions.config_utils import config_from_dict
from general_functions.dataloaders import make_fake_data, make_loader, split_train
from general_functions.distributed import (
    DistContext,
    all_reduce_grads,
    broadcast_object,
    cleanup_distributed,
    env_rank,
    gather_rng_states,
    init_distributed,
    max_divergence,
    reduce_meters,
    restore_rng_states,
    sync_buffers,
    sync_rng_state,
    unwrap,
    wrap_model,
)
from general_functions.utils import AverageMeter

WORLD = 2
# float32 sums in another order (two half-batch gradients averaged vs one full-batch gradient),
# compounded over a few SGD/Adam steps
ATOL, RTOL = 2e-5, 1e-4


# ----------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _keep_threads():
    """The trainers' run(threads=1) sets torch's thread count; give the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def freeze_bn(model: nn.Module) -> nn.Module:
    """Keep every BatchNorm in eval mode even when the trainer calls ``model.train()``."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = lambda mode=True, m=m: nn.Module.train(m, False)
            m.eval()
    return model


def _untimed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if "wall" not in k and "time" not in k}


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


# ----------------------------------------------------------------------------------- scenarios
def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def scenario_small(ctx: DistContext, frozen_bn: bool = True, steps: int = 3) -> dict:
    """A few SGD steps of a small conv net on the sharded tensor loader."""
    data = make_fake_data(64, 16, seed=1)
    loader = make_loader(data.train, 16, True, seed=0, rank=ctx.rank, world_size=ctx.world_size)
    loader.set_epoch(1)
    model = _small_model()
    if frozen_bn:
        freeze_bn(model)
    model = wrap_model(model, ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
    params, divergence, meter = [], [], AverageMeter()
    model.train()
    for step, (x, y) in enumerate(loader):
        if step >= steps:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        meter.update(loss.item(), y.shape[0])
        params.append(_flat(unwrap(model).parameters()))
        divergence.append(max_divergence(unwrap(model).parameters()))
    sync_buffers(model)
    return {
        "params": params,
        "buffers": _flat(b for b in unwrap(model).buffers() if b.is_floating_point()),
        "divergence": divergence,
        "loss": reduce_meters({"loss": meter})["loss"],
    }


def scenario_collectives(ctx: DistContext) -> dict:
    out = {}
    torch.manual_seed(100 + ctx.rank)  # ranks drift apart...
    sync_rng_state()  # ...until rank 0's state is shared
    out["rand"] = torch.rand(4)
    out["object"] = broadcast_object({"run": f"run_of_rank{ctx.rank}"})
    torch.manual_seed(200 + ctx.rank)
    states = gather_rng_states()
    expected = torch.rand(2)
    torch.manual_seed(999)
    restore_rng_states(ctx, states[0], states)  # each rank gets its own stream back
    out["own_stream"] = torch.equal(torch.rand(2), expected)
    restore_rng_states(ctx, states[0], states[:1])  # a checkpoint of another world size
    out["after_resize"] = torch.rand(2)
    sync_rng_state(per_rank=True)
    out["per_rank"] = torch.rand(2)
    a, b, c = (nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.full((3,), float(ctx.rank + 1))  # 1 and 2 -> 1.5
    if ctx.rank == 1:
        b.grad = torch.full((3,), 4.0)  # missing on rank 0 -> (0 + 4) / 2
    all_reduce_grads([a, b, c])
    out["grads"] = (a.grad.clone(), b.grad.clone(), c.grad)
    m1, m2 = AverageMeter(), AverageMeter()
    m1.update(10.0 * (ctx.rank + 1), n=1 + 3 * ctx.rank)  # rank 0: 10 x1, rank 1: 20 x4 -> 18
    m2.update(1.0, n=2)
    out["meters"] = reduce_meters({"a": m1, "b": m2})
    # parameters DDP ignores are still broadcast from rank 0 when wrapping
    torch.manual_seed(ctx.rank)
    model = nn.Sequential(nn.Linear(3, 2))
    model.register_parameter("thetas", nn.Parameter(torch.randn(5)))
    ddp = wrap_model(model, ctx, ignore=[model.thetas])
    out["thetas"] = model.thetas.detach().clone()
    out["weight"] = unwrap(ddp)[0].weight.detach().clone()
    out["ignored_by_ddp"] = getattr(ddp, "parameters_to_ignore", set())
    return out


@contextlib.contextmanager
def frozen_bn_everywhere():
    """Every BatchNorm stays in eval mode while the block runs (trainers call ``model.train()``)."""
    cls = nn.modules.batchnorm._BatchNorm
    original = cls.train
    cls.train = lambda self, mode=True: nn.Module.train(self, False)
    try:
        yield
    finally:
        cls.train = original


# ---------------------------------------------------------------- architecture training
TINY_OPS = ["ir_k3_e3", "ir_k5_e1", "skip", "ir_k3_s2"]


def scenario_arch_steps(ctx: DistContext, frozen_bn: bool = True, steps: int = 3) -> dict:
    """``train_one_epoch`` one step at a time, then ``validate`` on uneven test shards."""
    from architecture_functions.training_functions import train_one_epoch, validate

    torch.manual_seed(ctx.rank)  # different initialisations: DDP must give rank 0's to all
    model = get_model(ArchSpec("t", TINY_OPS, "tiny"), cnt_classes=10)
    if frozen_bn:
        freeze_bn(model)
    data = make_fake_data(64, 26, seed=1)
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
    train = make_loader(data.train, 16, True, seed=0, **shard)
    test = make_loader(data.test, 10, False, **shard)  # 10 + 10 + 6 images: shares 5/5, 5/5, 3/3
    ddp = wrap_model(model, ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5)
    out = {"params": [], "divergence": [], "train": []}
    cpu = torch.device("cpu")
    for step in range(steps):
        train.set_epoch(step)
        stats = train_one_epoch(
            ddp, train, nn.CrossEntropyLoss(), opt, cpu, step, max_steps=1, progress=False
        )
        out["train"].append(stats)
        out["params"].append(_flat(model.parameters()))
        out["divergence"].append(max_divergence(model.parameters()))
    sync_buffers(ddp)
    out["buffers"] = _flat(b for b in model.buffers() if b.is_floating_point())
    out["test"] = validate(unwrap(ddp), test, nn.CrossEntropyLoss(), cpu, progress=False)
    return out


def arch_config(folder: Path, **kw):
    from architecture_functions.config_for_arch import ArchTrainConfig

    arch = folder / "tiny_a.json"
    if not arch.exists():
        arch.write_text(json.dumps({"name": "tiny_a", "ops": TINY_OPS, "search_space": "tiny"}))
    values = {
        "architecture_name": str(arch),
        "dataset": "fake",
        "fake_train_size": 64,
        "fake_test_size": 26,
        "batch_size": 16,
        "epochs": 2,
        "max_steps_per_epoch": 2,
        "threads": 1,
        "progress": False,
        "log_dir": str(folder / "runs"),
        "run_name": "",
        "channels_last": "off",
        "dropout": 0.0,  # each rank draws its own masks: no match with one process's draw
    }
    values.update(kw)
    return config_from_dict(ArchTrainConfig, values)


def scenario_arch_run(ctx: DistContext, folder: Path) -> dict:
    """``run()`` for one epoch, stopped, then resumed for the second (frozen batch norm)."""
    from architecture_functions.training_functions import run

    folder = folder / "arch_ddp"
    folder.mkdir(exist_ok=True)
    with frozen_bn_everywhere():
        first = run(arch_config(folder, stop_after_epoch=1))
        last = Path(first["run_dir"]) / "last.pth"
        second = run(arch_config(folder, resume=str(last)))
    return {"first": first, "second": second}


# ---------------------------------------------------------------- supernet search
def tiny_lut():
    from fbnet_building_blocks.search_space import get_search_space
    from supernet_functions.latency.table import LatencyLookupTable

    space = get_search_space("tiny")
    costs = [
        {op: 1.0 + 0.5 * layer + 0.25 * j for j, op in enumerate(space.candidate_ops)}
        for layer in range(space.num_layers)
    ]
    return LatencyLookupTable.from_latencies("tiny", costs)


def scenario_supernet_steps(
    ctx: DistContext, frozen_bn: bool = True, steps: int = 3, mixing: str = "gumbel"
) -> dict:
    """Alternating weight and theta steps through the trainer's phase functions, one batch each."""
    from supernet_functions.loss import SupernetLoss
    from supernet_functions.model_supernet import StochasticSuperNet
    from supernet_functions.training_functions_supernet import (
        train_thetas_epoch,
        train_weights_epoch,
    )

    torch.manual_seed(ctx.rank)  # different weights and thetas: rank 0's must reach every rank
    ops = ("ir_k3_e1", "ir_k5_e3", "ir_k3_s2", "skip")  # a few candidates keep the test short
    net = StochasticSuperNet("tiny", tiny_lut(), 10, 16, candidate_ops=ops, mixing=mixing)
    with torch.no_grad():
        for thetas in net.arch_parameters():
            thetas.normal_()
    if frozen_bn:
        freeze_bn(net)
    data = make_fake_data(64, 8, size=16, seed=1)
    w_data, t_data = split_train(data.train, 0.5, seed=0)
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
    w_loader = make_loader(w_data, 16, True, seed=0, **shard)
    t_loader = make_loader(t_data, 16, True, seed=1, **shard)
    # hard Gumbel runs the drawn op only: the others' weights get no gradient in a step
    unused = mixing == "hard_gumbel"
    ddp = wrap_model(net, ctx, ignore=list(net.arch_parameters()), find_unused_parameters=unused)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    t_opt = torch.optim.Adam(net.arch_parameters(), lr=0.01, weight_decay=5e-4)
    criterion = SupernetLoss()
    probe = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(ctx.rank))
    torch.manual_seed(7)  # the Gumbel stream (made equal at each phase under DDP)
    out = {k: [] for k in ("weights", "thetas", "divergence", "stats", "probe_latency")}

    def record(stats):
        out["weights"].append(_flat(net.weight_parameters()))
        out["thetas"].append(_flat(net.arch_parameters()))
        out["divergence"].append(max_divergence(net.parameters()))
        out["stats"].append(stats)

    for step in range(steps):
        w_loader.set_epoch(step)
        record(train_weights_epoch(ddp, w_loader, criterion, w_opt, 2.0, max_steps=1))
        t_loader.set_epoch(step)
        record(train_thetas_epoch(ddp, t_loader, criterion, t_opt, 2.0, max_steps=1))
        # the shared Gumbel sample: each rank's own images, the same expected latency
        sync_rng_state()
        with torch.no_grad():
            out["probe_latency"].append(float(net(probe, 2.0)[1]))
    return out


def supernet_config(folder: Path, **kw):
    from supernet_functions.config_for_supernet import SupernetConfig

    lut = folder / "tiny_lut.json"
    if not lut.exists():
        tiny_lut().save(lut)
    values = {
        "dataset": "fake",
        "fake_train_size": 96,
        "search_space": "tiny",
        "batch_size": 16,
        "epochs": 2,
        "warmup_epochs": 1,
        "max_steps_per_epoch": 2,
        "val_fraction": 0.25,
        "lut_path": str(lut),
        "threads": 1,
        "progress": False,
        "log_dir": str(folder / "runs"),
    }
    values.update(kw)
    return config_from_dict(SupernetConfig, values)


def scenario_supernet_run(ctx: DistContext, folder: Path) -> dict:
    """Search ``run()``: the warm-up epoch, stopped, then resumed for a search epoch (frozen BN)."""
    from supernet_functions.training_functions_supernet import run

    folder = folder / "supernet_ddp"
    folder.mkdir(exist_ok=True)
    with frozen_bn_everywhere():
        first = run(supernet_config(folder, stop_after_epoch=1))
        last = Path(first["run_dir"]) / "last.pth"
        second = run(supernet_config(folder, resume=str(last)))
    return {"first": first, "second": second}


SCENARIOS = {
    "collectives": scenario_collectives,
    "small_frozen_bn": lambda ctx: scenario_small(ctx, frozen_bn=True),
    "arch_frozen_bn": lambda ctx: scenario_arch_steps(ctx, frozen_bn=True),
    "arch_train_bn": lambda ctx: scenario_arch_steps(ctx, frozen_bn=False),
    "arch_run": scenario_arch_run,
    "supernet_frozen_bn": lambda ctx: scenario_supernet_steps(ctx, frozen_bn=True),
    "supernet_train_bn": lambda ctx: scenario_supernet_steps(ctx, frozen_bn=False),
    "supernet_hard": lambda ctx: scenario_supernet_steps(ctx, frozen_bn=True, mixing="hard_gumbel"),
    "supernet_run": scenario_supernet_run,
}


def _worker(rank: int, world: int, port: int, out_dir: str, names: list[str]) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    ctx = init_distributed("cpu", timeout_min=2)
    assert ctx.enabled and ctx.rank == rank and ctx.backend == "gloo"
    try:
        results = {}
        for name in names:
            scenario = SCENARIOS[name]
            needs_folder = "folder" in inspect.signature(scenario).parameters
            t0 = time.perf_counter()
            results[name] = scenario(ctx, Path(out_dir)) if needs_folder else scenario(ctx)
            results.setdefault("seconds", {})[name] = time.perf_counter() - t0
    finally:
        cleanup_distributed(ctx)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run every scenario on 2 gloo processes; the results of rank 0 and rank 1."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, _free_port(), str(out), list(SCENARIOS)), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ----------------------------------------------------------------------------------- tests
def test_without_torchrun_everything_is_a_no_op(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1 and ctx.backend is None
    model = _small_model()
    assert wrap_model(model, ctx) is model and unwrap(model) is model
    meter = AverageMeter()
    meter.update(3.0, 4)
    assert reduce_meters({"x": meter}) == {"x": 3.0}
    assert broadcast_object("x") == "x" and max_divergence([torch.ones(2)]) == 0.0
    cleanup_distributed(ctx)
    assert env_rank() == 0
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_rank() == 3


@pytest.mark.parametrize("path", ["tensor", "torchvision"])
@pytest.mark.parametrize("train", [True, False])
def test_shards_of_a_global_batch_are_the_one_process_batch(path, train):
    """Rank 0's share followed by rank 1's share is the one-process batch (images too on the
    tensor path, whose augmentation is drawn for the global batch)."""
    data = make_fake_data(96, 8, seed=2).train
    kw = {"loader": path, "seed": 5, "workers": 0}
    one = make_loader(data, 24, train, **kw)
    shards = [make_loader(data, 24, train, rank=r, world_size=WORLD, **kw) for r in range(WORLD)]
    for loader in (one, *shards):
        loader.set_epoch(3)
    assert len(one) == len(shards[0]) == len(shards[1]) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(one, *shards):
        assert len(y0) == len(y1) == 12
        assert torch.equal(torch.cat([y0, y1]), y)
        if path == "tensor":
            assert torch.equal(torch.cat([x0, x1]), x)


def test_uneven_shards():
    data = make_fake_data(50, 8, seed=2).train
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        make_loader(data, 25, True, rank=0, world_size=2)
    # training: the last global batch (10 images) splits 5 + 5; evaluation keeps an odd tail
    train = [make_loader(data, 20, True, rank=r, world_size=2) for r in range(2)]
    assert [[len(y) for _, y in ld] for ld in train] == [[10, 10, 5], [10, 10, 5]]
    test = [make_loader(data, 15, False, rank=r, world_size=2) for r in (0, 1)]
    sizes = [[len(y) for _, y in ld] for ld in test]
    assert sizes == [[7, 7, 7, 2], [8, 8, 8, 3]] and sum(map(sum, sizes)) == 50


def test_collectives(ranks):
    r0, r1 = ranks[0]["collectives"], ranks[1]["collectives"]
    assert torch.equal(r0["rand"], r1["rand"])
    assert r0["object"] == r1["object"] == {"run": "run_of_rank0"}
    assert r0["own_stream"] and r1["own_stream"]
    assert not torch.equal(r0["after_resize"], r1["after_resize"])
    assert not torch.equal(r0["per_rank"], r1["per_rank"])
    for r in (r0, r1):
        a, b, c = r["grads"]
        assert torch.equal(a, torch.full((3,), 1.5)) and torch.equal(b, torch.full((3,), 2.0))
        assert c is None
        assert r["meters"]["a"] == pytest.approx(18.0) and r["meters"]["b"] == pytest.approx(1.0)
        assert r["ignored_by_ddp"] == {"thetas"}
    assert torch.equal(r0["thetas"], r1["thetas"]) and torch.equal(r0["weight"], r1["weight"])


def test_small_model_ranks_stay_identical(ranks):
    r0, r1 = ranks[0]["small_frozen_bn"], ranks[1]["small_frozen_bn"]
    assert len(r0["params"]) == 3
    for p0, p1 in zip(r0["params"], r1["params"]):
        assert torch.equal(p0, p1)
    assert r0["divergence"] == r1["divergence"] == [0.0, 0.0, 0.0]
    assert torch.equal(r0["buffers"], r1["buffers"])
    assert r0["loss"] == r1["loss"]


def test_small_model_matches_one_process(ranks):
    """Frozen batch norm: 2 processes x 8 images == 1 process x 16 images, step by step."""
    one = scenario_small(DistContext(), frozen_bn=True)
    two = ranks[0]["small_frozen_bn"]
    for p1, p2 in zip(one["params"], two["params"]):
        torch.testing.assert_close(p2, p1, atol=ATOL, rtol=RTOL)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    # the weights moved, so the comparison is not vacuous
    assert (one["params"][-1] - _flat(_small_model().parameters())).abs().max() > 1e-2


# ----------------------------------------------------------------------------------- trainers
@pytest.mark.parametrize("scenario", ["arch_frozen_bn", "arch_train_bn"])
def test_architecture_steps_ranks_stay_identical(ranks, scenario):
    """(a) after every step both ranks hold the same weights (and the same BN statistics)."""
    r0, r1 = ranks[0][scenario], ranks[1][scenario]
    assert len(r0["params"]) == 3
    for p0, p1 in zip(r0["params"], r1["params"]):
        assert torch.equal(p0, p1)
    assert r0["divergence"] == r1["divergence"] == [0.0, 0.0, 0.0]
    assert torch.equal(r0["buffers"], r1["buffers"])
    assert r0["train"] == r1["train"] and r0["test"] == r1["test"]  # metrics averaged over ranks


def test_architecture_steps_match_one_process(ranks):
    """(b) frozen BN: 2 processes x 8 images == 1 process x 16 images, step by step; the test
    metrics (shares of 5, 5 and 3 images) are those of one process over all 26 images."""
    one = scenario_arch_steps(DistContext(), frozen_bn=True)
    two = ranks[0]["arch_frozen_bn"]
    for p1, p2 in zip(one["params"], two["params"]):
        torch.testing.assert_close(p2, p1, atol=ATOL, rtol=RTOL)
    assert (one["params"][-1] - one["params"][0]).abs().max() > 1e-3
    for s1, s2 in zip(one["train"] + [one["test"]], two["train"] + [two["test"]]):
        assert s2 == pytest.approx(s1, rel=1e-4, abs=1e-4)


def test_architecture_run_resumed_under_ddp_matches_one_process(ranks, tmp_path):
    """``run()`` under DDP, stopped after epoch 1 and resumed, against one uninterrupted process."""
    two = ranks[0]["arch_run"]["second"]
    # rank 1 returns the same summary (metrics averaged over the ranks), bar its own clock
    assert _untimed(ranks[1]["arch_run"]["second"]) == _untimed(two)
    run_dirs = list(Path(two["run_dir"]).parent.iterdir())
    assert run_dirs == [Path(two["run_dir"])]  # rank 1 made no folder of its own
    from architecture_functions.training_functions import run

    with frozen_bn_everywhere():
        one = run(arch_config(tmp_path))
    a = load_checkpoint(Path(one["run_dir"]) / "last.pth")
    b = load_checkpoint(Path(two["run_dir"]) / "last.pth")
    assert a["epoch"] == b["epoch"] == 2 and len(b["rng_ranks"]) == WORLD
    # four SGD steps through the trainer's default network (bias head, bare depthwise convs) carry the
    # float32 rounding of the split gradient sums further than the steps above; a wrong average or a
    # lost step differs by 1e-2 and more
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=1e-4, rtol=1e-3)
    for key in ("final_top1", "final_top3", "best_top1"):
        assert two[key] == pytest.approx(one[key], abs=1e-2)


@pytest.mark.parametrize("scenario", ["supernet_frozen_bn", "supernet_train_bn", "supernet_hard"])
def test_supernet_steps_ranks_stay_identical(ranks, scenario):
    """(a) after every weight step and every theta step both ranks hold the same weights and
    thetas, and both see the same expected latency on their own images (the same Gumbel sample)."""
    r0, r1 = ranks[0][scenario], ranks[1][scenario]
    assert len(r0["thetas"]) == 6
    for key in ("weights", "thetas"):
        for a, b in zip(r0[key], r1[key]):
            assert torch.equal(a, b)
    assert r0["divergence"] == r1["divergence"] == [0.0] * 6
    assert r0["probe_latency"] == r1["probe_latency"]
    assert r0["stats"] == r1["stats"]


def _assert_same_steps(one: dict, two: dict) -> None:
    """Two runs of scenario_supernet_steps took the same steps: weights, thetas, latency, metrics."""
    for key in ("weights", "thetas"):
        for a, b in zip(one[key], two[key]):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL)
    assert two["probe_latency"] == pytest.approx(one["probe_latency"], rel=1e-5)
    for s1, s2 in zip(one["stats"], two["stats"]):
        assert s2 == pytest.approx(s1, rel=1e-4, abs=1e-4)


def test_supernet_steps_match_one_process(ranks):
    """(b) frozen BN: the same weights, thetas, Gumbel samples and metrics as one process."""
    one = scenario_supernet_steps(DistContext(), frozen_bn=True)
    two = ranks[0]["supernet_frozen_bn"]
    _assert_same_steps(one, two)
    # both parameter sets moved: weight steps move the weights, theta steps the thetas
    assert (one["weights"][-1] - one["weights"][0]).abs().max() > 1e-3
    assert (one["thetas"][-1] - one["thetas"][0]).abs().max() > 1e-3
    # a weight step leaves the thetas alone and a theta step the weights, under DDP too
    for k in range(3):  # records: weight step k at 2k, theta step k at 2k + 1
        assert torch.equal(two["weights"][2 * k + 1], two["weights"][2 * k])
        if k:
            assert torch.equal(two["thetas"][2 * k], two["thetas"][2 * k - 1])


def test_hard_gumbel_steps_under_ddp_match_one_process(ranks):
    """Hard Gumbel (one drawn op per layer, straight-through gradient): both ranks draw the same op,
    so the ops that did not run get no gradient on either rank, and the steps equal one process's."""
    one = scenario_supernet_steps(DistContext(), frozen_bn=True, mixing="hard_gumbel")
    two = ranks[0]["supernet_hard"]
    _assert_same_steps(one, two)
    # a weight step moved some weights and left those of the ops not drawn as they were
    step = two["weights"][2] - two["weights"][1]
    assert 0 < int((step != 0).sum()) < step.numel()
    assert (one["thetas"][-1] - one["thetas"][0]).abs().max() > 1e-3


def test_supernet_run_resumed_under_ddp_matches_one_process(ranks, tmp_path):
    """Search ``run()`` under DDP (warm-up, search epochs, held-out part), stopped and resumed,
    against one uninterrupted process; only rank 0 wrote files."""
    from supernet_functions.training_functions_supernet import run

    two = ranks[0]["supernet_run"]["second"]
    assert _untimed(ranks[1]["supernet_run"]["second"]) == _untimed(two)
    run_dir = Path(two["run_dir"])
    assert list(run_dir.parent.iterdir()) == [run_dir]
    assert (run_dir / "arch.json").is_file() and (run_dir / "last.pth").is_file()
    with frozen_bn_everywhere():
        one = run(supernet_config(tmp_path))
    a = load_checkpoint(Path(one["run_dir"]) / "last.pth")
    b = load_checkpoint(run_dir / "last.pth")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=ATOL, rtol=RTOL)
    assert (
        json.loads((run_dir / "arch.json").read_text())["ops"]
        == json.loads((Path(one["run_dir"]) / "arch.json").read_text())["ops"]
    )
    for key in ("train_w/loss", "train_thetas/loss", "held_out/top1"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-3)
