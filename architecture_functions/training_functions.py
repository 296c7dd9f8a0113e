"""Train a fixed architecture from scratch: ``train_one_epoch`` + ``validate``, driven by ``run(cfg)``.

    cfg = parse_config(ArchTrainConfig, argv, presets=PRESETS)
    summary = run(cfg)        # also prints ``summary`` as one JSON line on stdout

A run folder holds ``config.json``, ``log.txt``, ``metrics.csv`` (one row per epoch), ``curves.png``
(:mod:`general_functions.curves`), ``tb/`` and the checkpoints ``last.pth`` (every epoch) and
``best.pth`` (highest test top-1: chosen on the test set, as the original reproduction's table was, so
it is an optimistic figure; the headline is the final epoch's).

Resuming is exact: the checkpoint holds the model, optimizer, scheduler, every RNG state and
the epoch; loaders draw their shuffling and augmentation from ``seed`` and the epoch (``set_epoch``).

Under ``torchrun`` (:mod:`general_functions.distributed`) each process trains a DDP-wrapped copy on its
share of every global batch (:func:`build_loaders`), metrics are averaged over the processes, and only
rank 0 writes the run folder and prints the summary.
"""

from __future__ import annotations

import dataclasses
import functools
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

from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.fbnet_builder import get_model
from fbnet_building_blocks.trim_kernels import trim_depthwise_convs
from general_functions.checkpoint import load_checkpoint, save_checkpoint
from general_functions.config_utils import config_to_dict
from general_functions.curves import Curves
from general_functions.dataloaders import (
    EXACT_MASK_FILE,
    ORIGINAL_CIFAR10_STD,
    EpochLoader,
    ImageSet,
    TensorImages,
    load_dataset,
    make_loader,
    split_train,
)
from general_functions.distributed import (
    DistContext,
    gather_rng_states,
    local_main_first,
    reduce_meters,
    restore_rng_states,
    run_in_context,
    run_on_main,
    sync_buffers,
    unwrap,
    wrap_model,
)
from general_functions.interrupts import check_stop, stop_on_signals
from general_functions.io_utils import atomic_write_json
from general_functions.logging_utils import MetricWriter, get_logger
from general_functions.precision import autocast
from general_functions.run_folder import (
    end_epoch,
    extend_cosine,
    lock_run_dir,
    new_run_dir,
    release_run_locks,
    removed_if_unstarted,
    resume_config,
    resume_run,
    stops_in_one_line,
    tidy_resumed_run,
)
from general_functions.utils import (
    AverageMeter,
    accuracy,
    set_seed,
    set_threads,
)

from .config_for_arch import ArchTrainConfig
from .run_state import (
    PER_RUN,
    RESET,
    STAGE,
    Progress,
    arch_from,
    check_arch_matches,
    checkpoint_state,
    summarize,
)

__all__ = [
    "build_loaders",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "check_arch_matches",
    "input_normalization",
    "load_data",
    "run",
    "train_one_epoch",
    "validate",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- one epoch
def train_one_epoch(
    model: nn.Module,
    loader: EpochLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    amp: bool = False,
    max_steps: int = 0,
    progress: bool = True,
    warmup_epochs: int = 0,
) -> dict[str, float]:
    """One pass over ``loader``; returns the sample-weighted mean ``loss`` and ``top1`` (percent).

    ``warmup_epochs``: while ``epoch`` (from 1) is among the first this-many, step ``k`` of the
    warm-up (from 1) runs at ``k / (warmup_epochs * steps)`` of the scheduled learning rate, which
    the epoch's end restores (the per-epoch schedule goes on from it)."""
    model.train()
    loss_m, top1_m = AverageMeter(), AverageMeter()
    steps = min(len(loader), max_steps) if max_steps else len(loader)
    scheduled = [group["lr"] for group in optimizer.param_groups]
    warmup_steps = warmup_epochs * steps if epoch <= warmup_epochs else 0
    bar = tqdm(total=steps, desc=f"train {epoch}", disable=not progress, leave=False)
    try:
        for step, (images, targets) in enumerate(loader):
            if step >= steps:
                break
            check_stop(step, "train")
            if warmup_steps:
                scale = ((epoch - 1) * steps + step + 1) / warmup_steps
                for group, lr in zip(optimizer.param_groups, scheduled):
                    group["lr"] = lr * scale
            with autocast(device, amp):
                logits = model(images)
            loss = criterion(logits.float(), targets)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"epoch {epoch}, step {step}: the loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = targets.size(0)
            loss_m.update(loss.item(), n)
            top1_m.update(accuracy(logits.detach(), targets, topk=(1,))[0], n)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_m.avg:.3f}", top1=f"{top1_m.avg:.1f}")
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr
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
        check_stop(step, desc)
        with autocast(device, amp):
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
        **{k: getattr(cfg, k) for k in ("dropout", "head", "dw_bn_relu", "init", "bn_init")},
    ).to(device)
    if cfg.trim_kernels:
        trim_depthwise_convs(model)
    if use_channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    return model


def input_normalization(cfg: ArchTrainConfig, data: ImageSet) -> tuple[tuple, tuple]:
    """The per-channel ``(mean, std)`` the network's inputs are normalised with."""
    std = data.std
    if cfg.normalization == "original" and cfg.dataset in ("cifar10", "fake"):
        std = ORIGINAL_CIFAR10_STD  # CIFAR-10's (the synthetic set uses CIFAR-10's statistics)
    return data.mean, std


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
    mean, std = input_normalization(cfg, data)
    common = {
        "device": device,
        "loader": cfg.loader,
        "mean": mean,
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
        logger.info(
            "%s marks %d test images as exact-pixel: every epoch also reports their top-1/top-3",
            Path(cfg.data_dir) / EXACT_MASK_FILE,
            len(data.test_exact),
        )
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


# ----------------------------------------------------------------------------------- run
def load_data(cfg: ArchTrainConfig) -> ImageSet:
    """The data set of ``cfg`` (its training and test parts, normalisation statistics)."""
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


def _recipe(cfg: ArchTrainConfig) -> tuple[ArchTrainConfig, dict[str, Any] | None]:
    """The configuration to run, and the checkpoint it continues or evaluates (else None).

    A resumed run takes its recipe from the checkpoint (``run_folder.resume_config``); an evaluation
    takes every setting not given from it.
    """
    if cfg.eval_only:
        path = cfg.checkpoint or cfg.resume
        if not path:
            raise ValueError(
                "--eval_only needs a checkpoint: pass --checkpoint PATH (or --resume PATH)"
            )
        state = load_checkpoint(path, stage=STAGE)
        every_field = [f.name for f in dataclasses.fields(ArchTrainConfig)]
        return resume_config(cfg, state["config"], path, every_field, {}, same_folder=False), state
    if cfg.resume:
        return resume_run(cfg, STAGE, PER_RUN, RESET)
    return cfg, None


def _eval_only(cfg: ArchTrainConfig, state: dict[str, Any], ctx: DistContext) -> dict[str, Any]:
    """Evaluate the checkpoint ``state`` (loaded from ``--checkpoint``)."""
    path = cfg.checkpoint or cfg.resume
    start = time.perf_counter()
    device = ctx.device
    log = _logger(None, ctx)
    spec = arch_from(cfg, state, path)
    with local_main_first(ctx):
        data = load_data(cfg)
    model = build_model(cfg, spec, data.num_classes, data.input_size, device)
    model.load_state_dict(state["model"])
    loaders = build_loaders(cfg, data, device, ctx.rank, ctx.world_size)
    metrics = _evaluate_all(model, loaders, nn.CrossEntropyLoss(), device, cfg)
    log.info("evaluated %s (epoch %s): %s", path, state.get("epoch"), _fmt(metrics))
    summary = summarize(
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
    cfg, state = _recipe(cfg)  # threads, device and timeout too come from a resumed run's recipe
    set_threads(cfg.threads)
    run_fn = functools.partial(_run, state=state)
    try:
        with stop_on_signals():  # Ctrl-C or SIGTERM: stop before the next step (interrupts.py)
            return run_in_context(run_fn, cfg, cfg.device, cfg.dist_timeout_min)
    finally:
        release_run_locks()  # the run folder is free again, however the run ended


def _run(cfg: ArchTrainConfig, ctx: DistContext, state: dict | None) -> dict[str, Any]:
    """Evaluate; or open the run folder and train in it (a failed start leaves no empty folder)."""
    if cfg.eval_only:
        summary = _eval_only(cfg, state, ctx)
        if ctx.is_main:
            print(json.dumps(summary), flush=True)
        return summary
    spec, run_dir = _open_run(cfg, state, ctx)
    with removed_if_unstarted(run_dir):
        return _train_in(run_dir, spec, cfg, ctx, state)


def _train_in(run_dir: Path, spec: ArchSpec, cfg, ctx: DistContext, state: dict | None) -> dict:
    """The steps of a training in its folder: build, resume, the epoch loop, the summary."""
    if not ctx.is_main:  # one progress bar per run; config.json (rank 0) keeps the flag as given
        cfg = dataclasses.replace(cfg, progress=False)
    log = _logger(run_dir, ctx)
    progress = Progress()
    if state is not None:
        run_on_main(ctx, lambda: tidy_resumed_run(run_dir, state, log))
        progress = Progress.of(state)
        if progress.epoch >= end_epoch(cfg):  # finished (or stopped where asked): its summary
            log.info("%s is at epoch %d: nothing to train", cfg.resume, progress.epoch)
            return _finish(cfg, spec, run_dir, log, ctx, progress)
    parts = _build(cfg, spec, ctx)
    if state is not None:
        _restore(parts, state, cfg, ctx)
        log.info("resumed %s at the end of epoch %d", cfg.resume, progress.epoch)
    parts.model = wrap_model(parts.model, ctx, sync_bn=cfg.sync_bn)  # DDP under torchrun
    _log_setup(parts, cfg, spec, ctx, run_dir, log)
    _epoch_loop(parts, progress, cfg, spec, ctx, run_dir, log, resumed=state is not None)
    return _finish(cfg, spec, run_dir, log, ctx, progress)


def _epoch_loop(parts, progress: Progress, cfg, spec, ctx, run_dir, log, resumed: bool) -> None:
    """Train the epochs after ``progress.epoch``; config, metrics and checkpoints go to ``run_dir``."""
    if ctx.is_main:
        atomic_write_json(run_dir / "config.json", config_to_dict(cfg))
        atomic_write_json(run_dir / "arch.json", spec.to_dict())
    resume_step = progress.epoch if resumed else None
    writer = MetricWriter(run_dir, resume_step=resume_step, enabled=ctx.is_main)
    curves = Curves(run_dir, log, enabled=ctx.is_main)
    start, wall_before = time.perf_counter(), progress.wall_s
    try:
        for epoch in range(progress.epoch + 1, end_epoch(cfg) + 1):
            with stops_in_one_line(run_dir, epoch):
                is_best = _train_epoch(epoch, parts, progress, cfg, ctx.device, writer, log)
            progress.wall_s = wall_before + time.perf_counter() - start
            _save(parts, progress, is_best, cfg, spec, ctx, run_dir)
            curves.draw(writer.rows)
    finally:
        writer.close()


@dataclass
class _Parts:
    """What a run trains and with what (:func:`_build`)."""

    model: nn.Module
    loaders: Loaders
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def _logger(run_dir: Path | None, ctx: DistContext) -> logging.Logger:
    """Log lines on stderr and (rank 0) in ``run_dir/log.txt``; the other ranks only warn."""
    log = get_logger(run_dir if ctx.is_main else None, name=__name__)
    if not ctx.is_main:
        log.setLevel(logging.WARNING)
    return log


def _open_run(cfg: ArchTrainConfig, state: dict | None, ctx: DistContext):
    """The architecture, and the run folder: the resumed run's, or a new one."""
    spec = arch_from(cfg, state, cfg.resume)
    if state is not None:  # the run continues in its folder, under its lock
        run_dir = Path(cfg.resume).resolve().parent
        run_on_main(ctx, lambda: lock_run_dir(run_dir))
        return spec, run_dir
    return spec, new_run_dir(cfg, ctx, prefix=spec.name)


def _build(cfg: ArchTrainConfig, spec: ArchSpec, ctx: DistContext) -> _Parts:
    """Data, model, loss, optimizer and schedule of a run."""
    if ctx.device.type == "cuda" and not cfg.deterministic:
        torch.backends.cudnn.benchmark = True
    # each process its own stream (dropout); DDP gives every process rank 0's initial weights
    set_seed(cfg.seed + ctx.rank, cfg.deterministic)
    with local_main_first(ctx):  # one download per machine
        data = load_data(cfg)
    model = build_model(cfg, spec, data.num_classes, data.input_size, ctx.device)
    optimizer = build_optimizer(cfg, model)
    return _Parts(
        model=model,
        loaders=build_loaders(cfg, data, ctx.device, ctx.rank, ctx.world_size),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        optimizer=optimizer,
        scheduler=build_scheduler(cfg, optimizer),
    )


def _restore(parts: _Parts, state: dict[str, Any], cfg: ArchTrainConfig, ctx: DistContext) -> None:
    """Load a checkpoint into the (not yet DDP-wrapped) parts, and every process's RNG state."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizers"]["w"])
    parts.scheduler.load_state_dict(state["schedulers"]["w"])
    extend_cosine(parts.scheduler, cfg.epochs)
    restore_rng_states(ctx, state["rng"], state.get("rng_ranks"))


def _log_setup(parts: _Parts, cfg, spec, ctx: DistContext, run_dir: Path, log) -> None:
    if ctx.enabled:
        log.info(ctx.describe(cfg.batch_size))
    log.info(
        "architecture %s (search space %s), %.2fM parameters | %d training batches of %d, "
        "%d test batches | device %s, loader %s, channels_last %s | run folder %s",
        spec.name,
        cfg.search_space or spec.search_space,
        sum(p.numel() for p in parts.model.parameters()) / 1e6,
        len(parts.loaders.train),
        cfg.batch_size,
        len(parts.loaders.test),
        ctx.device,
        cfg.loader,
        use_channels_last(cfg),
        run_dir,
    )


def _train_epoch(epoch: int, parts: _Parts, progress: Progress, cfg, device, writer, log) -> bool:
    """Train and evaluate one epoch, record it in ``progress`` and the logs; True on a new best."""
    epoch_start = time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]
    parts.loaders.train.set_epoch(epoch)
    train = train_one_epoch(
        parts.model,
        parts.loaders.train,
        parts.criterion,
        parts.optimizer,
        device,
        epoch,
        amp=cfg.amp,
        max_steps=cfg.max_steps_per_epoch,
        progress=cfg.progress,
        warmup_epochs=cfg.lr_warmup_epochs,
    )
    parts.scheduler.step()
    sync_buffers(parts.model)  # every process evaluates (and rank 0 saves) rank 0's BN statistics
    metrics = _evaluate_all(unwrap(parts.model), parts.loaders, parts.criterion, device, cfg)
    is_best = metrics["test/top1"] > progress.best_top1
    if is_best:
        progress.best_top1, progress.best_epoch = metrics["test/top1"], epoch
    progress.epoch = epoch
    progress.last = {"train/loss": train["loss"], "train/top1": train["top1"], **metrics}
    epoch_s = time.perf_counter() - epoch_start
    writer.scalars(epoch, {"lr": lr, **progress.last, "time/epoch_s": epoch_s})
    exact = (
        f" | exact-pixel top1 {metrics['test_exact1000/top1']:.2f} "
        f"top3 {metrics['test_exact1000/top3']:.2f}"
        if "test_exact1000/top1" in metrics
        else ""
    )
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
        exact,
        progress.best_top1,
        progress.best_epoch,
        epoch_s,
    )
    return is_best


def _save(parts: _Parts, progress: Progress, is_best: bool, cfg, spec, ctx, run_dir) -> None:
    """Rank 0 writes last.pth, then best.pth on a new best (every rank joins the RNG gather)."""
    rng_ranks = gather_rng_states() if ctx.enabled else None
    if not ctx.is_main:
        return
    state = checkpoint_state(cfg, spec, parts, progress, rng_ranks)
    save_checkpoint(run_dir / "last.pth", state)
    if is_best:
        save_checkpoint(run_dir / "best.pth", state)


def _finish(cfg, spec, run_dir, log, ctx, progress: Progress) -> dict[str, Any]:
    """Log, print (rank 0) and return the summary of a run at the end of ``progress.epoch``."""
    done = progress.epoch
    summary = summarize(
        progress.last, progress.best_top1, progress.best_epoch, done, progress.wall_s, run_dir, spec
    )
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
        progress.best_epoch,
        progress.wall_s,
    )
    if ctx.is_main:
        print(json.dumps(summary), flush=True)
    return summary
