"""Train a fixed architecture from scratch: ``train_one_epoch`` + ``validate``, driven by ``run(cfg)``.

    cfg = parse_config(ArchTrainConfig, argv, presets=PRESETS)
    summary = run(cfg)        # also prints ``summary`` as one JSON line on stdout

A run folder holds ``config.json``, ``log.txt``, ``metrics.csv`` (one row per epoch), ``tb/`` and the
checkpoints ``last.pth`` (every epoch) and ``best.pth`` (highest test top-1: chosen on the test set, as the
original reproduction's table was, so it is an optimistic figure; the headline is the final epoch's).

Resuming is exact: the checkpoint holds the model, optimizer, scheduler, GradScaler, every RNG state and
the epoch; loaders draw their shuffling and augmentation from ``seed`` and the epoch (``set_epoch``).

Under ``torchrun`` (:mod:`general_functions.distributed`) each process trains a DDP-wrapped copy on its
share of every global batch (:func:`build_loaders`), metrics are averaged over the processes, and only
rank 0 writes the run folder (:func:`create_loggers`) and prints the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fbnet_building_blocks.arch_specs import ArchSpec, load_arch
from fbnet_building_blocks.fbnet_builder import get_model
from general_functions.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from general_functions.config_utils import ConfigError, config_to_dict
from general_functions.dataloaders import (
    ORIGINAL_CIFAR10_STD,
    DataError,
    EpochLoader,
    ImageSet,
    TensorImages,
    load_dataset,
    make_loader,
    split_train,
)
from general_functions.distributed import (
    DistContext,
    broadcast_object,
    gather_rng_states,
    local_main_first,
    reduce_meters,
    restore_rng_states,
    run_in_context,
    sync_buffers,
    unwrap,
    wrap_model,
)
from general_functions.io_utils import atomic_write_json
from general_functions.logging_utils import MetricWriter, get_logger, setup_run_dir
from general_functions.utils import (
    AverageMeter,
    accuracy,
    get_rng_state,
    set_seed,
    set_threads,
)

from .config_for_arch import ArchTrainConfig
from .trim_kernels import trim_depthwise_convs

__all__ = [
    "build_loaders",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "check_arch_matches",
    "create_loggers",
    "run",
    "train_one_epoch",
    "validate",
]

logger = logging.getLogger(__name__)
STAGE = "architecture"
# Errors caused by what the user asked for; the entry script prints their message without a traceback.
USER_ERRORS = (DataError, CheckpointError, ConfigError, KeyError, FileNotFoundError, ValueError)


# ----------------------------------------------------------------------------------- one epoch
def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def train_one_epoch(
    model: nn.Module,
    loader: EpochLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    max_steps: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; returns the sample-weighted mean ``loss`` and ``top1`` (percent)."""
    model.train()
    loss_m, top1_m = AverageMeter(), AverageMeter()
    steps = min(len(loader), max_steps) if max_steps else len(loader)
    bar = tqdm(total=steps, desc=f"train {epoch}", disable=not progress, leave=False)
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        with _autocast(device, amp):
            logits = model(images)
            loss = criterion(logits, targets)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"epoch {epoch}, step {step}: the loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = targets.size(0)
        loss_m.update(loss.item(), n)
        top1_m.update(accuracy(logits.detach(), targets, topk=(1,))[0], n)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_m.avg:.3f}", top1=f"{top1_m.avg:.1f}")
    bar.close()
    return reduce_meters({"loss": loss_m, "top1": top1_m})  # over every process's images


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: EpochLoader,
    criterion: nn.Module,
    device: torch.device,
    amp: bool = False,
    max_steps: int = 0,
    progress: bool = True,
    desc: str = "test",
) -> dict[str, float]:
    """Mean ``loss``, ``top1`` and ``top3`` (percent) of ``model`` over ``loader``, in eval mode."""
    model.eval()
    loss_m, top1_m, top3_m = AverageMeter(), AverageMeter(), AverageMeter()
    steps = min(len(loader), max_steps) if max_steps else len(loader)
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        with _autocast(device, amp):
            logits = model(images)
        loss = criterion(logits.float(), targets)
        top1, top3 = accuracy(logits, targets, topk=(1, 3))
        n = targets.size(0)
        loss_m.update(loss.item(), n)
        top1_m.update(top1, n)
        top3_m.update(top3, n)
        bar.update(1)
    bar.close()
    return reduce_meters({"loss": loss_m, "top1": top1_m, "top3": top3_m})


# ----------------------------------------------------------------------------------- building
def use_channels_last(cfg: ArchTrainConfig) -> bool:
    return cfg.channels_last in ("auto", "on")


def build_model(
    cfg: ArchTrainConfig, spec: ArchSpec, num_classes: int, input_size: int, device: torch.device
) -> nn.Module:
    """The one place the network is built, moved and (later: DDP) wrapped."""
    model = get_model(
        spec,
        cnt_classes=num_classes,
        search_space=cfg.search_space or None,
        input_size=input_size,
        head_channels=cfg.head_channels or None,
        dropout=cfg.dropout,
        head=cfg.head,
        dw_bn_relu=cfg.dw_bn_relu,
        init=cfg.init,
        bn_init=cfg.bn_init,
    ).to(device)
    if cfg.trim_kernels:
        trim_depthwise_convs(model)
    if use_channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    return model


def _head(data: TensorImages | torch.utils.data.Dataset, n: int):
    if not n or n >= len(data):
        return data
    if isinstance(data, TensorImages):
        return data.subset(torch.arange(n))
    return torch.utils.data.Subset(data, range(n))


@dataclass
class Loaders:
    train: EpochLoader
    test: EpochLoader
    test_exact: EpochLoader | None


def build_loaders(
    cfg: ArchTrainConfig, data: ImageSet, device: torch.device, rank: int = 0, world_size: int = 1
) -> Loaders:
    """Training, test and (when the data provides it) exact-pixel test loaders.

    With ``world_size`` > 1 each loader yields this process's share of every global batch.
    """
    train = data.train
    if cfg.train_limit:
        train = split_train(train, fraction=1.0, seed=cfg.seed, limit=cfg.train_limit)[0]
    std = data.std
    if cfg.normalization == "original" and cfg.dataset in ("cifar10", "fake"):
        std = ORIGINAL_CIFAR10_STD  # CIFAR-10's (the synthetic set uses CIFAR-10's statistics)
    common = {
        "device": device,
        "loader": cfg.loader,
        "mean": data.mean,
        "std": std,
        "seed": cfg.seed,
        "channels_last": use_channels_last(cfg),
        "workers": cfg.workers,
        "rank": rank,
        "world_size": world_size,
    }
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    exact = None
    if data.test_exact is not None and not cfg.test_limit:
        exact = make_loader(data.test_exact, eval_bs, train=False, **common)
    return Loaders(
        train=make_loader(train, cfg.batch_size, train=True, **common),
        test=make_loader(_head(data.test, cfg.test_limit), eval_bs, train=False, **common),
        test_exact=exact,
    )


def build_optimizer(cfg: ArchTrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter (as the original reproduction)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )


def build_scheduler(
    cfg: ArchTrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: MultiStepLR (original), cosine to ``min_lr`` over ``epochs``, or constant."""
    if cfg.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, gamma=cfg.gamma)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr
        )
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def create_loggers(
    run_dir: Path | None, resume_epoch: int | None = None, main_process: bool = True
) -> tuple[logging.Logger, MetricWriter | None]:
    """The text logger and the metric writer; only the main process (rank 0) writes files."""
    log = get_logger(run_dir if main_process else None, name=__name__)
    if not main_process:
        log.setLevel(logging.WARNING)
    writer = None
    if run_dir is not None:
        writer = MetricWriter(run_dir, resume_step=resume_epoch, enabled=main_process)
    return log, writer


# ----------------------------------------------------------------------------------- checkpoints
def _spec_identity(spec: dict[str, Any], search_space: str) -> dict[str, Any]:
    """What must agree between a checkpoint and the model it is loaded into."""
    return {
        "ops": list(spec["ops"]),
        "search_space": search_space or spec.get("search_space"),
        "head_channels": spec.get("head_channels"),
        "width_mult": spec.get("width_mult", 1.0),
    }


def check_arch_matches(state: dict[str, Any], spec: ArchSpec, cfg: ArchTrainConfig, path) -> None:
    """Refuse a checkpoint of another architecture (or the same ops in another search space)."""
    saved_spec = state.get("arch_spec")
    if not isinstance(saved_spec, dict) or "ops" not in saved_spec:
        raise CheckpointError(f"checkpoint {path} records no architecture; cannot check it")
    saved_cfg = state.get("config") or {}
    saved = _spec_identity(saved_spec, saved_cfg.get("search_space", ""))
    wanted = _spec_identity(spec.to_dict(), cfg.search_space)
    if saved != wanted:
        diff = [k for k in wanted if saved[k] != wanted[k]]
        raise CheckpointError(
            f"checkpoint {path} holds architecture {saved_spec.get('name')!r} "
            f"(search space {saved['search_space']!r}), but this run builds {spec.name!r} "
            f"(search space {wanted['search_space']!r}); they differ in {', '.join(diff)}. "
            f"Pass --architecture_name {saved_spec.get('name')} (and the same --search_space) "
            "or another checkpoint"
        )


def _checkpoint_state(
    cfg,
    spec,
    model,
    optimizer,
    scheduler,
    scaler,
    epoch,
    best_top1,
    best_epoch,
    wall_s,
    last,
    rng_ranks=None,
) -> dict[str, Any]:
    return {
        "stage": STAGE,
        "epoch": epoch,
        "model": unwrap(model).state_dict(),  # no DDP "module." prefix
        "optimizers": {"w": optimizer.state_dict()},
        "schedulers": {"w": scheduler.state_dict()},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "config": config_to_dict(cfg),
        "arch_spec": spec.to_dict(),
        "best_top1": best_top1,
        "best_epoch": best_epoch,
        "last_metrics": last,
        "wall_s": wall_s,
        "rng": get_rng_state(),
        "rng_ranks": rng_ranks,  # every process's RNG state under DDP (None alone)
    }


# ----------------------------------------------------------------------------------- run
def _load_data(cfg: ArchTrainConfig) -> ImageSet:
    return load_dataset(
        cfg.dataset,
        cfg.data_dir,
        download=cfg.download,
        input_size=cfg.input_size or 224,
        fake_sizes=(cfg.fake_train_size, cfg.fake_test_size),
        seed=cfg.seed,
    )


def _evaluate_all(model, loaders, criterion, device, cfg) -> dict[str, float]:
    """Test-set metrics, plus those of the exact-pixel test images when the data provides them."""
    kw = {"amp": cfg.amp, "max_steps": cfg.max_steps_per_epoch, "progress": cfg.progress}
    test = validate(model, loaders.test, criterion, device, desc="test", **kw)
    out = {"test/loss": test["loss"], "test/top1": test["top1"], "test/top3": test["top3"]}
    if loaders.test_exact is not None:
        exact = validate(model, loaders.test_exact, criterion, device, desc="test exact", **kw)
        out["test_exact1000/top1"] = exact["top1"]
        out["test_exact1000/top3"] = exact["top3"]
    return out


def _summary(metrics: dict[str, float], best_top1, best_epoch, epoch, wall_s, run_dir, spec):
    out = {
        "architecture": spec.name,
        "best_top1": round(best_top1, 3),
        "best_epoch": best_epoch,
        "best_chosen_on": "test set",
        "final_top1": round(metrics["test/top1"], 3),
        "final_top3": round(metrics["test/top3"], 3),
        "epochs": epoch,
        "wall_s": round(wall_s, 1),
        "run_dir": str(run_dir) if run_dir else None,
    }
    if "test_exact1000/top1" in metrics:
        out["final_exact1000_top1"] = round(metrics["test_exact1000/top1"], 3)
        out["final_exact1000_top3"] = round(metrics["test_exact1000/top3"], 3)
    return out


def _eval_only(cfg: ArchTrainConfig, spec: ArchSpec, ctx: DistContext) -> dict[str, Any]:
    path = cfg.checkpoint or cfg.resume
    if not path:
        raise ValueError(
            "--eval_only needs a checkpoint: pass --checkpoint PATH (or --resume PATH)"
        )
    start = time.perf_counter()
    device = ctx.device
    log, _ = create_loggers(None, main_process=ctx.is_main)
    state = load_checkpoint(path, stage=STAGE)
    check_arch_matches(state, spec, cfg, path)
    with local_main_first(ctx):
        data = _load_data(cfg)
    model = build_model(cfg, spec, data.num_classes, data.input_size, device)
    model.load_state_dict(state["model"])
    loaders = build_loaders(cfg, data, device, ctx.rank, ctx.world_size)
    metrics = _evaluate_all(model, loaders, nn.CrossEntropyLoss(), device, cfg)
    log.info("evaluated %s (epoch %s): %s", path, state.get("epoch"), _fmt(metrics))
    summary = _summary(
        metrics,
        state.get("best_top1", metrics["test/top1"]),
        state.get("best_epoch"),
        state.get("epoch"),
        time.perf_counter() - start,
        None,
        spec,
    )
    summary["eval_only"] = True
    return summary


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def run(cfg: ArchTrainConfig) -> dict[str, Any]:
    """Train (or with ``eval_only`` evaluate) as ``cfg`` says; print and return the JSON summary.

    Under ``torchrun`` every process calls this; they train together with DDP (one per GPU).
    """
    set_threads(cfg.threads)
    return run_in_context(_run, cfg, cfg.device)


def _run(cfg: ArchTrainConfig, ctx: DistContext) -> dict[str, Any]:
    device = ctx.device
    if not ctx.is_main:  # one progress bar per run; config.json (rank 0) keeps the flag as given
        cfg = dataclasses.replace(cfg, progress=False)
    spec = load_arch(cfg.architecture_name)
    if cfg.amp and device.type != "cuda":
        logger.warning("--amp is for CUDA; training in float32 on %s", device)
    if device.type == "cuda" and not cfg.deterministic:
        torch.backends.cudnn.benchmark = True
    if cfg.eval_only:
        summary = _eval_only(cfg, spec, ctx)
        if ctx.is_main:
            print(json.dumps(summary), flush=True)
        return summary

    state = None
    if cfg.resume:
        state = load_checkpoint(cfg.resume, stage=STAGE)
        check_arch_matches(state, spec, cfg, cfg.resume)
        run_dir = Path(cfg.resume).resolve().parent
    else:  # rank 0 names (and makes) the folder; the others learn its name
        made = (
            setup_run_dir(cfg.run_dir, cfg.run_name or None, prefix=spec.name)
            if ctx.is_main
            else None
        )
        run_dir = Path(broadcast_object(str(made) if made else None))
    start_epoch = state["epoch"] if state else 0
    log, writer = create_loggers(
        run_dir, resume_epoch=start_epoch if state else None, main_process=ctx.is_main
    )
    if ctx.is_main:
        atomic_write_json(run_dir / "config.json", config_to_dict(cfg))
        atomic_write_json(run_dir / "arch.json", spec.to_dict())

    # each process its own stream (dropout); DDP gives every process rank 0's initial weights
    set_seed(cfg.seed + ctx.rank, cfg.deterministic)
    with local_main_first(ctx):  # one download per machine
        data = _load_data(cfg)
    model = build_model(cfg, spec, data.num_classes, data.input_size, device)
    loaders = build_loaders(cfg, data, device, ctx.rank, ctx.world_size)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    best_top1, best_epoch, wall_before, last = -1.0, 0, 0.0, None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizers"]["w"])
        scheduler.load_state_dict(state["schedulers"]["w"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_states(ctx, state["rng"], state.get("rng_ranks"))
        best_top1, best_epoch = state["best_top1"], state["best_epoch"]
        wall_before, last = state.get("wall_s", 0.0), state.get("last_metrics")
        log.info("resumed %s at the end of epoch %d", cfg.resume, start_epoch)
    model = wrap_model(model, ctx, sync_bn=cfg.sync_bn)  # DDP under torchrun, else the model
    if ctx.enabled:
        log.info(ctx.describe(cfg.batch_size))
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "architecture %s (search space %s), %.2fM parameters | %d training batches of %d, "
        "%d test batches | device %s, loader %s, channels_last %s | run folder %s",
        spec.name,
        cfg.search_space or spec.search_space,
        n_params / 1e6,
        len(loaders.train),
        cfg.batch_size,
        len(loaders.test),
        device,
        cfg.loader,
        use_channels_last(cfg),
        run_dir,
    )

    start = time.perf_counter()
    end_epoch = min(cfg.epochs, cfg.stop_after_epoch) if cfg.stop_after_epoch else cfg.epochs
    if start_epoch >= end_epoch:
        raise ValueError(
            f"nothing to do: the checkpoint is at epoch {start_epoch} and the run ends at epoch "
            f"{end_epoch}; raise --epochs to train longer"
        )
    for epoch in range(start_epoch + 1, end_epoch + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loaders.train.set_epoch(epoch)
        train = train_one_epoch(
            model,
            loaders.train,
            criterion,
            optimizer,
            device,
            epoch,
            scaler=scaler,
            amp=cfg.amp,
            max_steps=cfg.max_steps_per_epoch,
            progress=cfg.progress,
        )
        scheduler.step()
        sync_buffers(model)  # every process evaluates (and rank 0 saves) rank 0's BN statistics
        metrics = _evaluate_all(unwrap(model), loaders, criterion, device, cfg)
        epoch_s = time.perf_counter() - epoch_start
        is_best = metrics["test/top1"] > best_top1
        if is_best:
            best_top1, best_epoch = metrics["test/top1"], epoch
        last = {"train/loss": train["loss"], "train/top1": train["top1"], **metrics}
        writer.scalars(epoch, {"lr": lr, **last, "time/epoch_s": epoch_s})
        log.info(
            "epoch %d/%d lr %.4g | train loss %.4f top1 %.2f | test loss %.4f top1 %.2f top3 %.2f%s"
            " | best top1 %.2f (epoch %d, chosen on the test set) | %.0f s",
            epoch,
            cfg.epochs,
            lr,
            train["loss"],
            train["top1"],
            metrics["test/loss"],
            metrics["test/top1"],
            metrics["test/top3"],
            (
                f" | exact-1000 top1 {metrics['test_exact1000/top1']:.2f} "
                f"top3 {metrics['test_exact1000/top3']:.2f}"
                if "test_exact1000/top1" in metrics
                else ""
            ),
            best_top1,
            best_epoch,
            epoch_s,
        )
        wall = wall_before + time.perf_counter() - start
        rng_ranks = gather_rng_states() if ctx.enabled else None
        if ctx.is_main:
            ckpt = _checkpoint_state(
                cfg,
                spec,
                model,
                optimizer,
                scheduler,
                scaler,
                epoch,
                best_top1,
                best_epoch,
                wall,
                last,
                rng_ranks,
            )
            save_checkpoint(run_dir / "last.pth", ckpt)
            if is_best:
                save_checkpoint(run_dir / "best.pth", ckpt)
    writer.close()

    done = end_epoch
    wall = wall_before + time.perf_counter() - start
    summary = _summary(last, best_top1, best_epoch, done, wall, run_dir, spec)
    if done < cfg.epochs:
        summary["stopped_early"] = True
        log.info(
            "stopped after epoch %d of %d; continue with --resume %s",
            done,
            cfg.epochs,
            run_dir / "last.pth",
        )
    log.info(
        "final (epoch %d) test top1 %.2f top3 %.2f; best top1 %.2f at epoch %d, chosen on the "
        "test set; %.0f s",
        done,
        summary["final_top1"],
        summary["final_top3"],
        summary["best_top1"],
        best_epoch,
        wall,
    )
    if ctx.is_main:
        print(json.dumps(summary), flush=True)
    return summary
