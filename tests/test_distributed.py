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

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from general_functions.dataloaders import make_fake_data, make_loader
from general_functions.distributed import (
    DistContext,
    all_reduce_grads,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    max_divergence,
    reduce_meters,
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


SCENARIOS = {
    "collectives": scenario_collectives,
    "small_frozen_bn": lambda ctx: scenario_small(ctx, frozen_bn=True),
    "small_train_bn": lambda ctx: scenario_small(ctx, frozen_bn=False),
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
        results = {name: SCENARIOS[name](ctx) for name in names}
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
    for r in (r0, r1):
        a, b, c = r["grads"]
        assert torch.equal(a, torch.full((3,), 1.5)) and torch.equal(b, torch.full((3,), 2.0))
        assert c is None
        assert r["meters"]["a"] == pytest.approx(18.0) and r["meters"]["b"] == pytest.approx(1.0)
        assert r["ignored_by_ddp"] == {"thetas"}
    assert torch.equal(r0["thetas"], r1["thetas"]) and torch.equal(r0["weight"], r1["weight"])


@pytest.mark.parametrize("scenario", ["small_frozen_bn", "small_train_bn"])
def test_small_model_ranks_stay_identical(ranks, scenario):
    r0, r1 = ranks[0][scenario], ranks[1][scenario]
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
