"""The supernet search loop (Wu et al., CVPR 2019, Sec. 3.3 and 4.1; the original CIFAR-10 reproduction).

    split the training set: w_share (80%) for the weights, the rest (20%) for the thetas
    for epoch in range(epochs):
        temperature = init_temperature * temperature_decay ** max(0, epoch - warmup_epochs)
        train the weights one epoch on their split (SGD; the thetas are frozen)
        step the weights' cosine schedule
        if epoch >= warmup_epochs: train the thetas one epoch on their split (Adam; the weights frozen)
        log, write thetas.json, checkpoint

A frozen set has ``requires_grad`` off, so no gradient is computed for it, and its optimizer is not
stepped: a weight step leaves every theta bitwise unchanged and a theta step every weight parameter.
Both phases run the network in training mode, so batch-norm running statistics (buffers, not
parameters) follow the batches of either split, as in the original reproduction.
Nothing is ever chosen on the test set: ``best.pth`` needs a held-out part of the training set.

Under ``torchrun`` (:mod:`general_functions.distributed`) every process takes its share of each global
batch. The weights train through DistributedDataParallel; the thetas are kept out of DDP, a theta step
runs the plain module and averages the thetas' gradients with one all-reduce, so each phase reduces only
the gradients it computed (DDP would otherwise wait for gradients the frozen set never gets). The
global RNG is made equal on every process at the start of each phase, so the Gumbel sample shared by
the batch, and with it the expected latency, is the same on every process. Metrics are averaged over
the processes; only rank 0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fbnet_building_blocks.search_space import SearchSpace, get_search_space
from general_functions.checkpoint import (
    CheckpointError,
    git_sha,
    load_checkpoint,
    save_checkpoint,
)
from general_functions.config_utils import config_to_dict
from general_functions.dataloaders import DataError, load_dataset, make_loader, split_train
from general_functions.distributed import (
    DistContext,
    all_reduce_grads,
    broadcast_object,
    local_main_first,
    reduce_meters,
    run_in_context,
    sync_buffers,
    sync_rng_state,
    unwrap,
    wrap_model,
)
from general_functions.io_utils import atomic_write_json
from general_functions.logging_utils import MetricWriter, get_logger, setup_run_dir
from general_functions.utils import (
    AverageMeter,
    accuracy,
    get_rng_state,
    set_rng_state,
    set_seed,
    set_threads,
)

from .config_for_supernet import SupernetConfig, check_config
from .loss import SupernetLoss, check_cost_table, loss_target
from .model_supernet import StochasticSuperNet
from .run_outputs import latency_summary, log_thetas, thetas_state, write_arch
from .sampling import LUT_FILE, THETAS_FILE, describe_thetas, load_table, thetas_summary
from .speed import prepare_supernet

__all__ = [
    "USER_ERRORS",
    "temperature_at",
    "train_weights_epoch",
    "train_thetas_epoch",
    "validate",
    "resolve_lut",
    "run",
]

logger = logging.getLogger(__name__)

STAGE = "supernet"
# Errors that come from what the user passed (files, names, settings): reported without a traceback.
USER_ERRORS = (CheckpointError, DataError, FileExistsError, FileNotFoundError, KeyError, ValueError)
# Settings that must match for --resume to continue a run (the rest may change, e.g. --epochs).
_RESUME_KEYS = (
    "search_space",
    "input_size",
    "dataset",
    "train_limit",
    "w_share",
    "val_fraction",
    "batch_size",
    "mixing",
    "per_sample",
    "seed",
)


def temperature_at(epoch: int, cfg: SupernetConfig) -> float:
    """Gumbel-softmax temperature of ``epoch`` (0-based): annealed once per search epoch."""
    return cfg.init_temperature * cfg.temperature_decay ** max(0, epoch - cfg.warmup_epochs)


@contextlib.contextmanager
def _trainable_only(trainable: Iterable[nn.Parameter], frozen: Iterable[nn.Parameter]) -> Iterator:
    """Turn ``requires_grad`` off for ``frozen`` (and on for ``trainable``) inside the block."""
    trainable, frozen = list(trainable), list(frozen)
    for p in frozen:
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _train_phase(
    model: StochasticSuperNet,
    loader,
    criterion: SupernetLoss,
    optimizer: torch.optim.Optimizer,
    trainable: Iterable[nn.Parameter],
    frozen: Iterable[nn.Parameter],
    temperature: float,
    max_steps: int = 0,
    progress: bool = False,
    desc: str = "",
    grad_sync=None,
) -> dict[str, float]:
    """One phase; ``model`` may be DDP-wrapped, ``grad_sync()`` runs between backward and step."""
    model.train()
    sync_rng_state(per_rank=_per_sample(model))  # the same shared Gumbel sample on every rank
    meters = {k: AverageMeter() for k in ("loss", "ce", "latency", "top1")}
    steps = len(loader) if not max_steps else min(max_steps, len(loader))
    with _trainable_only(trainable, frozen):
        bar = tqdm(loader, total=steps, desc=desc, disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            if step >= steps:
                break
            optimizer.zero_grad(set_to_none=True)
            logits, latency = model(x, temperature)
            loss, ce, _ = criterion(logits, y, latency)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss is {loss.item()} at step {step}")
            loss.backward()
            if grad_sync is not None:
                grad_sync()
            optimizer.step()
            n = y.shape[0]
            meters["loss"].update(loss.item(), n)
            meters["ce"].update(ce.item(), n)
            meters["latency"].update(latency.detach().mean().item(), n)
            meters["top1"].update(accuracy(logits, y)[0], n)
            bar.set_postfix(loss=f"{meters['loss'].avg:.3f}", top1=f"{meters['top1'].avg:.1f}")
        bar.close()
    optimizer.zero_grad(set_to_none=True)
    return reduce_meters(meters)  # over every process's images


def _per_sample(model) -> bool:
    """True when the Gumbel noise is drawn per example (then each rank draws its own)."""
    return any(getattr(m, "per_sample", False) for m in unwrap(model).modules())


def train_weights_epoch(
    model, loader, criterion, optimizer, temperature, max_steps=0, progress=False
) -> dict[str, float]:
    """One epoch of SGD on the weights over their split; the thetas are frozen.

    Under DDP ``model`` is the wrapper, which averages the weights' gradients.
    """
    net = unwrap(model)
    return _train_phase(
        model,
        loader,
        criterion,
        optimizer,
        net.weight_parameters(),
        net.arch_parameters(),
        temperature,
        max_steps,
        progress,
        "weights",
    )


def train_thetas_epoch(
    model, loader, criterion, optimizer, temperature, max_steps=0, progress=False
) -> dict[str, float]:
    """One epoch of Adam on the thetas over their split; the weights are frozen.

    Under DDP the plain module runs (DDP handles the weights only) and the thetas' gradients are
    averaged over the processes by one all-reduce before each step.
    """
    net = unwrap(model)
    thetas = list(net.arch_parameters())
    return _train_phase(
        net,
        loader,
        criterion,
        optimizer,
        thetas,
        net.weight_parameters(),
        temperature,
        max_steps,
        progress,
        "thetas",
        grad_sync=lambda: all_reduce_grads(thetas),
    )


@torch.no_grad()
def validate(
    model, loader, criterion, temperature, max_steps=0, progress=False
) -> dict[str, float]:
    """Loss and top-1 of the supernet (Gumbel mixing at ``temperature``) on held-out training data."""
    model = unwrap(model)
    model.eval()
    sync_rng_state(per_rank=_per_sample(model))
    meters = {k: AverageMeter() for k in ("loss", "ce", "top1")}
    for step, (x, y) in enumerate(tqdm(loader, desc="held-out", disable=not progress, leave=False)):
        if max_steps and step >= max_steps:
            break
        logits, latency = model(x, temperature)
        loss, ce, _ = criterion(logits, y, latency)
        meters["loss"].update(loss.item(), y.shape[0])
        meters["ce"].update(ce.item(), y.shape[0])
        meters["top1"].update(accuracy(logits, y)[0], y.shape[0])
    return reduce_meters(meters)


# ---------------------------------------------------------------------------------- lookup table
def resolve_lut(
    cfg: SupernetConfig, space: SearchSpace, input_size: int, device, run_dir: Path, log=logger
):
    """The cost table of the search: ``--lut_path``, else the committed one, else measure one."""
    from . import lookup_table_builder as ltb

    ops = list(space.candidate_ops)
    if cfg.lut_path:
        lut = load_table(cfg.lut_path)
        source = cfg.lut_path
    else:
        default = _committed_table(ltb, space.name, input_size)
        if default is not None:
            lut, source = load_table(default), str(default)
        else:
            log.info(
                "no --lut_path and no committed table for %s at %dx%d: measuring one on %s",
                space.name,
                input_size,
                input_size,
                device,
            )
            lut = ltb.build_lut(
                space.name,
                input_size=input_size,
                batch_size=cfg.lut_batch_size,
                device=device,
                threads=cfg.threads or torch.get_num_threads(),
                time_budget_s=cfg.lut_time_budget_s,
                rounds=cfg.lut_rounds,
                progress=cfg.progress,
            )
            source = str(run_dir / LUT_FILE)
    lut.check_compatible(space.name, input_size, ops)
    return lut, source


def _committed_table(ltb, space_name: str, input_size: int) -> Path | None:
    path = ltb.default_lut_path(space_name, input_size)
    return Path(path) if path and Path(path).is_file() else None


# ---------------------------------------------------------------------------------- run
def run(cfg: SupernetConfig) -> dict[str, Any]:
    """Search: train weights and thetas as in the module docstring; returns the final summary.

    Under ``torchrun`` every process calls this; they search together with DDP (one per GPU).
    """
    check_config(cfg)
    set_threads(cfg.threads)
    return run_in_context(_run, cfg, cfg.device)


def _run(cfg: SupernetConfig, ctx: DistContext) -> dict[str, Any]:
    device = ctx.device
    if not ctx.is_main:  # one progress bar per run; config.json (rank 0) keeps the flag as given
        cfg = dataclasses.replace(cfg, progress=False)
    ckpt = load_checkpoint(cfg.resume, stage=STAGE) if cfg.resume else None
    if ckpt is not None:
        _check_resume(cfg, ckpt["config"], cfg.resume)
    run_name = cfg.run_name or (Path(cfg.resume).parent.name if cfg.resume else "")
    log_dir = Path(cfg.resume).parent.parent if cfg.resume and not cfg.run_name else cfg.log_dir
    made = setup_run_dir(log_dir, run_name, prefix="supernet") if ctx.is_main else None
    run_dir = Path(broadcast_object(str(made) if made else None))  # rank 0 names the folder
    log = get_logger(run_dir if ctx.is_main else None, "fbnet.supernet")
    if not ctx.is_main:
        log.setLevel(logging.WARNING)
    log.info("run folder %s, device %s", run_dir, device)
    # the same seed on every rank: the shared Gumbel sample comes from this stream
    set_seed(cfg.seed, cfg.deterministic)

    # ---- data: held-out (optional) | weights | thetas, all from the training set
    with local_main_first(ctx):  # one download per machine
        data = load_dataset(
            cfg.dataset,
            cfg.data_dir,
            cfg.download,
            fake_sizes=(cfg.fake_train_size, 64),
            seed=cfg.seed,
        )
    train, held_out = data.train, None
    if cfg.val_fraction > 0:
        train, held_out = split_train(train, 1.0 - cfg.val_fraction, cfg.seed, cfg.train_limit)
        w_data, thetas_data = split_train(train, cfg.w_share, cfg.seed + 1)
    else:
        w_data, thetas_data = split_train(train, cfg.w_share, cfg.seed, cfg.train_limit)
    if len(w_data) == 0 or len(thetas_data) == 0:
        raise ValueError(
            f"the split gives {len(w_data)} weight and {len(thetas_data)} theta images; "
            "use more images or another --w_share"
        )

    def loader(part, train_mode, seed):
        return make_loader(
            part,
            cfg.batch_size,
            train_mode,
            device,
            cfg.loader,
            data.mean,
            data.std,
            seed=seed,
            workers=cfg.workers,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )

    w_loader = loader(w_data, True, cfg.seed)
    thetas_loader = loader(thetas_data, True, cfg.seed + 1)
    held_loader = loader(held_out, False, cfg.seed + 2) if held_out is not None else None
    log.info(
        "images: %d weights, %d thetas, %d held-out (%s)",
        len(w_data),
        len(thetas_data),
        len(held_out) if held_out is not None else 0,
        cfg.dataset,
    )

    # ---- table, model, loss, optimizers
    space = get_search_space(cfg.search_space)
    input_size = cfg.input_size or data.input_size
    lut = lut_source = None
    if ctx.is_main:  # rank 0 reads (or measures) the table and gives it to the others
        if ckpt is not None:  # the run's own table, so a resumed search optimises the same loss
            lut, lut_source = load_table(Path(cfg.resume).parent / LUT_FILE), ckpt["lut_source"]
        else:
            lut, lut_source = resolve_lut(cfg, space, input_size, device, run_dir, log)
    lut, lut_source = broadcast_object((lut, lut_source))
    cheapest = check_cost_table(lut, cfg.cost_scale, space.candidate_ops, cfg.loss_include_fixed)
    if ctx.is_main:
        lut.save(run_dir / LUT_FILE)
    unit = lut.meta.get("unit", "ms")
    # metric names: latency_ms for a latency table in ms, else the table's cost (flops, params)
    cost_tag = f"latency_{unit}" if lut.cost == "latency" else lut.cost
    log.info(
        "cost table %s (unit %s); cheapest architecture %.4g %s", lut_source, unit, cheapest, unit
    )

    model = prepare_supernet(  # exact speed-ups, and the CUDA-only options (README "Performance")
        StochasticSuperNet(
            space,
            lut,
            data.num_classes,
            input_size,
            mixing=cfg.mixing,
            per_sample=cfg.per_sample,
            bn_init=cfg.bn_init,
        ),
        device,
        channels_last=cfg.channels_last != "off",
        trim_kernels=cfg.trim_kernels,
        cudnn_benchmark=cfg.cudnn_benchmark and not cfg.deterministic,
        amp=cfg.amp,
    )
    criterion = SupernetLoss(
        cfg.alpha,
        cfg.beta,
        cfg.loss_variant,
        cfg.cost_scale,
        fixed_cost=lut.fixed_cost if cfg.loss_include_fixed else 0.0,
        target=loss_target(
            cfg.target_latency_ms, lut, cfg.loss_include_fixed, space.candidate_ops, log
        ),
    )
    if cfg.target_latency_ms:
        log.info("latency target %.4g ms (whole network): the loss's hinge", cfg.target_latency_ms)
    w_optimizer = torch.optim.SGD(
        model.weight_parameters(),
        lr=cfg.w_lr,
        momentum=cfg.w_momentum,
        weight_decay=cfg.w_weight_decay,
    )
    thetas_optimizer = torch.optim.Adam(
        model.arch_parameters(), lr=cfg.thetas_lr, weight_decay=cfg.thetas_weight_decay
    )
    w_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        w_optimizer, T_max=cfg.epochs, eta_min=cfg.w_lr_min
    )
    start_epoch, best_top1, wall_before, warmup_top1 = 0, -math.inf, 0.0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        w_optimizer.load_state_dict(ckpt["optimizers"]["w"])
        thetas_optimizer.load_state_dict(ckpt["optimizers"]["thetas"])
        w_scheduler.load_state_dict(ckpt["schedulers"]["w"])
        start_epoch, best_top1 = ckpt["epoch"] + 1, ckpt["best_top1"]
        wall_before = ckpt.get("wall_s", 0.0)  # the search's wall time before this process
        warmup_top1 = ckpt.get("warmup_train_top1")
        set_rng_state(ckpt["rng"])  # rank 0's: every phase starts from rank 0's state anyway
        log.info("resumed from %s at epoch %d", cfg.resume, start_epoch)
    # DDP for the weights; the thetas stay out of it (see the module docstring)
    # hard Gumbel runs only the sampled op, so the other ops' weights get no gradient in a step
    ddp_model = wrap_model(
        model,
        ctx,
        ignore=list(model.arch_parameters()),
        sync_bn=cfg.sync_bn,
        find_unused_parameters=cfg.mixing == "hard_gumbel",
    )
    if ctx.enabled:
        log.info(ctx.describe(cfg.batch_size))
    if ctx.is_main:
        atomic_write_json(run_dir / "config.json", config_to_dict(cfg))
    writer = MetricWriter(
        run_dir,
        resume_step=start_epoch - 1 if ckpt is not None else None,
        enabled=ctx.is_main,
    )

    # ---- the loop
    last = cfg.epochs if not cfg.stop_epoch else min(cfg.epochs, cfg.stop_epoch)
    ops = list(model.candidate_ops)
    summary: dict[str, Any] = {}
    start = time.perf_counter()
    for epoch in range(start_epoch, last):
        temperature = temperature_at(epoch, cfg)
        w_lr = w_optimizer.param_groups[0]["lr"]
        w_loader.set_epoch(epoch)
        w_stats = train_weights_epoch(
            ddp_model,
            w_loader,
            criterion,
            w_optimizer,
            temperature,
            cfg.steps_per_epoch,
            cfg.progress,
        )
        w_scheduler.step()
        values = {f"train_w/{k}": v for k, v in w_stats.items()}
        if epoch >= cfg.warmup_epochs:
            thetas_loader.set_epoch(epoch)
            t_stats = train_thetas_epoch(
                ddp_model,
                thetas_loader,
                criterion,
                thetas_optimizer,
                temperature,
                cfg.steps_per_epoch,
                cfg.progress,
            )
            values.update({f"train_thetas/{k}": v for k, v in t_stats.items()})
        sync_buffers(model)  # rank 0's batch-norm statistics everywhere (evaluated and saved)
        held = None
        if held_loader is not None:
            held = validate(
                model, held_loader, criterion, temperature, cfg.steps_per_epoch, cfg.progress
            )
            values.update({f"held_out/{k}": v for k, v in held.items()})
        state = thetas_state(model, epoch, temperature, lut, lut_source, run_dir)
        values.update(
            {
                f"search/expected_{cost_tag}": state["expected_layers_cost"],
                f"search/argmax_{cost_tag}": state["argmax_cost"]["predicted_layers_cost"],
                f"search/uniform_{cost_tag}": state["uniform_layers_cost"],
                "sched/temperature": temperature,
                "sched/w_lr": w_lr,
                "sched/thetas_lr": thetas_optimizer.param_groups[0]["lr"],
                "time/wall_s": wall_before + time.perf_counter() - start,
            }
        )
        if epoch == cfg.warmup_epochs - 1:  # the weights' accuracy before the first theta step
            values["warmup/train_top1"] = warmup_top1 = w_stats["top1"]
        writer.scalars(epoch, values)
        log_thetas(writer, model, epoch, ops)
        if ctx.is_main:
            atomic_write_json(run_dir / THETAS_FILE, state)
        log.info(
            "epoch %d/%d  T %.3f  w: loss %.4f ce %.4f top1 %.2f%s%s  E[LAT] %.4g %s  argmax %s",
            epoch + 1,
            cfg.epochs,
            temperature,
            w_stats["loss"],
            w_stats["ce"],
            w_stats["top1"],
            (
                f"  thetas: loss {values['train_thetas/loss']:.4f} top1 {values['train_thetas/top1']:.2f}"
                if epoch >= cfg.warmup_epochs
                else "  (warm-up)"
            ),
            f"  held-out top1 {held['top1']:.2f}" if held else "",
            state["expected_layers_cost"],
            unit,
            " ".join(state["argmax_ops"]),
        )
        if epoch == cfg.warmup_epochs - 1:
            log.info(
                "warm-up done: train top1 %.2f%% (mean over the last warm-up epoch), %d epochs, "
                "wall time %.1f min",
                w_stats["top1"],
                cfg.warmup_epochs,
                values["time/wall_s"] / 60,
            )
        improved = held is not None and held["top1"] > best_top1
        if improved:
            best_top1 = held["top1"]
        if cfg.save_checkpoints and ctx.is_main:
            ckpt_state = {
                "stage": STAGE,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizers": {
                    "w": w_optimizer.state_dict(),
                    "thetas": thetas_optimizer.state_dict(),
                },
                "schedulers": {"w": w_scheduler.state_dict()},
                "config": config_to_dict(cfg),
                "lut_meta": lut.meta,
                "lut_source": lut_source,
                "best_top1": best_top1,
                "wall_s": values["time/wall_s"],
                "warmup_train_top1": warmup_top1,
                "rng": get_rng_state(),
                "git_sha": git_sha(),
            }
            save_checkpoint(run_dir / "last.pth", ckpt_state)
            if improved:
                save_checkpoint(run_dir / "best.pth", ckpt_state)
        summary = {"epoch": epoch, **values}
    writer.close()
    wrote = ctx.is_main and (run_dir / THETAS_FILE).is_file()
    if wrote:
        write_arch(run_dir)
    latency = broadcast_object(latency_summary(run_dir, lut) if wrote else None)  # to every rank
    if latency:
        summary.update(latency)
        log.info(
            "predicted latency (whole network, %s): argmax architecture %.5g; expected under "
            "softmax(thetas) %.5g; expected under uniform thetas %.5g",
            unit,
            summary["argmax_cost"],
            summary["expected_cost"],
            summary["uniform_cost"],
        )
    summary["final_thetas"] = thetas_summary(model.thetas_matrix())
    for line in describe_thetas(summary["final_thetas"]):
        log.info(line)
    summary["warmup_train_top1"] = warmup_top1
    summary["wall_s"] = round(wall_before + time.perf_counter() - start, 1)
    if ctx.is_main:  # the final JSON: every figure above, for scripts and the docs
        atomic_write_json(run_dir / "summary.json", summary)
    log.info("done: %s (wall time %.1f min)", run_dir, summary["wall_s"] / 60)
    return {"run_dir": str(run_dir), **summary}


def _check_resume(cfg: SupernetConfig, saved: dict[str, Any], path: str) -> None:
    now = config_to_dict(cfg)
    diff = {k: (saved.get(k), now[k]) for k in _RESUME_KEYS if saved.get(k) != now[k]}
    if diff:
        raise CheckpointError(
            f"{path} was made with other settings: "
            + ", ".join(f"{k}: {a!r} (checkpoint) vs {b!r} (now)" for k, (a, b) in diff.items())
        )
