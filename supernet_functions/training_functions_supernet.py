"""The supernet search loop (Wu et al., CVPR 2019, Sec. 3.3 and 4.1; the original CIFAR-10 reproduction).

    split the training set: w_share (80%) for the weights, the rest (20%) for the thetas
    for epoch in range(epochs):
        temperature = init_temperature * temperature_decay ** max(0, epoch - warmup_epochs)
        train the weights one epoch on their split (SGD; the thetas are frozen)
        step the weights' cosine schedule
        if epoch >= warmup_epochs: train the thetas one epoch on their split (Adam; the weights frozen)
        log, write thetas.json, checkpoint, draw curves.png

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
import functools
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from general_functions.checkpoint import save_checkpoint
from general_functions.config_utils import check_bounds, config_to_dict
from general_functions.curves import ENTROPY, Curves
from general_functions.distributed import (
    DistContext,
    all_reduce_grads,
    all_reduce_sum,
    env_rank,
    get_context,
    reduce_meters,
    run_in_context,
    run_on_main,
    sync_buffers,
    sync_rng_state,
    unwrap,
    wrap_model,
)
from general_functions.interrupts import check_stop, stop_on_signals
from general_functions.io_utils import atomic_write_json
from general_functions.logging_utils import MetricWriter, get_logger
from general_functions.run_folder import (
    end_epoch,
    lock_run_dir,
    new_run_dir,
    release_run_locks,
    removed_if_unstarted,
    resume_run,
    stops_in_one_line,
    tidy_resumed_run,
)
from general_functions.utils import AverageMeter, accuracy, set_seed, set_threads
from supernet_functions.config_for_supernet import SupernetConfig
from supernet_functions.loss import SupernetLoss, latency_share
from supernet_functions.model_supernet import MixedOperation, StochasticSuperNet
from supernet_functions.path_probe import probe_paths
from supernet_functions.recompute import recomputing
from supernet_functions.sampling import (
    LUT_FILE,
    THETAS_FILE,
    describe_thetas,
    load_table,
    read_thetas,
    thetas_summary,
)
from supernet_functions.search_outputs import latency_summary, log_thetas, thetas_state, write_arch
from supernet_functions.search_setup import (
    STAGE,
    Progress,
    Search,
    SearchLoaders,
    build_search,
    build_search_loaders,
    checkpoint_state,
    resolve_lut,
    restore_search,
)

__all__ = [
    "fit_warmup",
    "temperature_at",
    "train_weights_epoch",
    "train_thetas_epoch",
    "validate",
    "resolve_lut",
    "run",
]

logger = logging.getLogger(__name__)

# Fields a resumed search may set anew besides run_folder.HOW_TO_RUN (and the sampling fields,
# which a search does not read).
_PER_RUN = (
    "cudnn_benchmark",
    "save_checkpoints",
    "train_or_sample",
    "architecture_name",
    "hardsampling_bool_value",
    "num_samples",
    "arch_dir",
)


def temperature_at(epoch: int, cfg: SupernetConfig) -> float:
    """Gumbel-softmax temperature of ``epoch`` (0-based): annealed once per search epoch, never below
    ``cfg.min_temperature``."""
    annealed = cfg.init_temperature * cfg.temperature_decay ** max(0, epoch - cfg.warmup_epochs)
    return max(annealed, cfg.min_temperature)


@contextlib.contextmanager
def _weights_mixing(model, w_mixing: str) -> Iterator:
    """With ``w_mixing="sampled"``, every layer runs one op drawn from softmax(thetas) (a hard Gumbel
    sample: its argmax does not depend on the temperature) inside the block; else nothing changes."""
    layers = [m for m in unwrap(model).modules() if isinstance(m, MixedOperation)]
    before = [layer.mixing for layer in layers]
    if w_mixing == "sampled":
        for layer in layers:
            layer.mixing = "hard_gumbel"
    try:
        yield
    finally:
        for layer, mixing in zip(layers, before):
            layer.mixing = mixing


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
    split: list[nn.Parameter] | None = None,
    on_step=None,
    recompute: bool = False,
) -> dict[str, float]:
    """One phase; ``model`` may be DDP-wrapped, ``grad_sync()`` runs between backward and step, and
    ``on_step(values)`` after each step, with the batch's ``loss``, ``ce`` and ``top1``.
    ``recompute``: the forward pass runs in :func:`~supernet_functions.recompute.recomputing`.

    With ``split`` (the thetas), the phase also measures what moves them: the norm of their gradient's
    cross-entropy part (``grad_ce``) and latency part (``grad_latency``; :func:`latency_share`), how
    much each part's steps agree in direction over the phase (``grad_ce_agreement``,
    ``grad_latency_agreement``; :class:`_ThetaPulls`) and, with a latency target, the share of
    examples whose expected latency is above it (``hinge_active``, %: below it the latency part is
    zero). Measuring takes no random draw and changes no gradient.
    """
    model.train()
    sync_rng_state(per_rank=_per_sample(model))  # the same shared Gumbel sample on every rank
    names = ["loss", "ce", "latency", "top1"]
    pulls = None
    if split is not None:
        names += ["grad_ce", "grad_latency"] + (["hinge_active"] if criterion.target > 0 else [])
        pulls = _ThetaPulls(split, criterion)
    meters = {k: AverageMeter() for k in names}
    steps = len(loader) if not max_steps else min(max_steps, len(loader))
    with _trainable_only(trainable, frozen):
        bar = tqdm(loader, total=steps, desc=desc, disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            if step >= steps:
                break
            check_stop(step, desc)
            optimizer.zero_grad(set_to_none=True)
            with recomputing(recompute):
                logits, latency = model(x, temperature)
            loss, ce, _ = criterion(logits, y, latency)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss is {loss.item()} at step {step}")
            if split is not None:
                pull = torch.autograd.grad(
                    latency_share(criterion, logits, y, latency), split, retain_graph=True
                )
            loss.backward()
            if grad_sync is not None:
                grad_sync()
            n = y.shape[0]
            if pulls is not None:  # the gradient the step takes: under DDP, the processes' mean
                pulls.add(meters, pull, latency, n)
            optimizer.step()
            values = {"loss": loss.item(), "ce": ce.item(), "top1": accuracy(logits, y)[0]}
            meters["loss"].update(values["loss"], n)
            meters["ce"].update(values["ce"], n)
            meters["latency"].update(latency.detach().mean().item(), n)
            meters["top1"].update(values["top1"], n)
            if on_step is not None:
                on_step(values)
            bar.set_postfix(loss=f"{meters['loss'].avg:.3f}", top1=f"{meters['top1'].avg:.1f}")
        bar.close()
    optimizer.zero_grad(set_to_none=True)
    stats = reduce_meters(meters)  # over every process's images
    return stats if pulls is None else {**stats, **pulls.agreement()}


class _ThetaPulls:
    """What moves the thetas over one phase (see :func:`_train_phase`): per step, the norms of their
    gradient's two parts (into ``meters``); over the phase, each part's agreement
    ``||sum_t g_t|| / sum_t ||g_t||``: 1 when every step pushes the same way, about ``1/sqrt(steps)``
    when the steps share no direction (then Adam's steps cancel out and the thetas barely move)."""

    PARTS = ("ce", "latency")

    def __init__(self, params: list[nn.Parameter], criterion: SupernetLoss) -> None:
        self.params, self.criterion = params, criterion
        self.sums: dict[str, torch.Tensor] = {}
        self.norm_sums = dict.fromkeys(self.PARTS, 0.0)

    def add(self, meters: dict, pull, latency: torch.Tensor, n: int) -> None:
        with torch.no_grad():
            pull = all_reduce_sum(torch.cat([g.flatten() for g in pull])) / get_context().world_size
            total = torch.cat([p.grad.flatten() for p in self.params])
            for part, g in zip(self.PARTS, (total - pull, pull)):
                norm = g.norm().item()
                meters[f"grad_{part}"].update(norm, n)
                self.norm_sums[part] += norm
                self.sums[part] = self.sums[part] + g if part in self.sums else g.clone()
            if "hinge_active" in meters:
                above = self.criterion.above_target(latency.detach())
                meters["hinge_active"].update(100.0 * above.float().mean().item(), n)

    def agreement(self) -> dict[str, float]:
        return {
            f"grad_{part}_agreement": (
                self.sums[part].norm().item() / self.norm_sums[part]
                if self.norm_sums[part]
                else 0.0
            )
            for part in self.PARTS
            if part in self.sums
        }


def _per_sample(model) -> bool:
    """True when the Gumbel noise is drawn per example (then each rank draws its own)."""
    return any(getattr(m, "per_sample", False) for m in unwrap(model).modules())


def train_weights_epoch(
    model, loader, criterion, optimizer, temperature, max_steps=0, progress=False, on_step=None
) -> dict[str, float]:
    """One epoch of SGD on the weights over their split; the thetas are frozen. ``on_step``: see
    :func:`_train_phase`.

    Under DDP ``model`` is the wrapper, which averages the weights' gradients. A supernet prepared with
    ``recompute`` (:func:`~supernet_functions.speed.prepare_supernet`) keeps fewer activations for the
    backward pass here when its layers mix their ops (a single path, ``hard_gumbel`` or
    ``--w_mixing sampled``, keeps one op's activations per layer, and recomputing only costs time);
    theta steps, which need fewer of them and spend less time in backward, keep theirs.
    """
    net = unwrap(model)
    soft = any(
        layer.mixing != "hard_gumbel"
        for layer in net.modules()
        if isinstance(layer, MixedOperation)
    )
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
        on_step=on_step,
        recompute=getattr(net, "recompute_activations", False) and soft,
    )


def train_thetas_epoch(
    model, loader, criterion, optimizer, temperature, max_steps=0, progress=False, on_step=None
) -> dict[str, float]:
    """One epoch of Adam on the thetas over their split; the weights are frozen. ``on_step``: see
    :func:`_train_phase`.

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
        split=thetas,
        on_step=on_step,
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
        check_stop(step, "held-out")
        logits, latency = model(x, temperature)
        loss, ce, _ = criterion(logits, y, latency)
        meters["loss"].update(loss.item(), y.shape[0])
        meters["ce"].update(ce.item(), y.shape[0])
        meters["top1"].update(accuracy(logits, y)[0], y.shape[0])
    return reduce_meters(meters)


# ---------------------------------------------------------------------------------- run
def run(cfg: SupernetConfig) -> dict[str, Any]:
    """Search: train weights and thetas as in the module docstring; returns the final summary.

    Under ``torchrun`` every process calls this; they search together with DDP (one per GPU).
    """
    ckpt = None
    if cfg.resume:  # the recipe (threads and device too) comes from the checkpoint
        cfg, ckpt = resume_run(cfg, STAGE, _PER_RUN)
    cfg = fit_warmup(cfg)
    _check_config(cfg)
    set_threads(cfg.threads)
    run_fn = functools.partial(_run, ckpt=ckpt)
    try:
        with stop_on_signals():  # Ctrl-C or SIGTERM: stop before the next step (interrupts.py)
            return run_in_context(run_fn, cfg, cfg.device, cfg.dist_timeout_min)
    finally:
        release_run_locks()  # the run folder is free again, however the run ended


def _run(cfg: SupernetConfig, ctx: DistContext, ckpt: dict | None) -> dict[str, Any]:
    """Open the run folder and search in it; a start that fails leaves no empty folder behind."""
    run_dir = _open_run(cfg, ckpt, ctx)
    with removed_if_unstarted(run_dir):
        return _search_in(run_dir, cfg, ctx, ckpt)


def _search_in(run_dir: Path, cfg: SupernetConfig, ctx: DistContext, ckpt: dict | None) -> dict:
    """The steps of a search in its folder: build, resume, the epoch loop, the summary."""
    if not ctx.is_main:  # one progress bar per run; config.json (rank 0) keeps the flag as given
        cfg = dataclasses.replace(cfg, progress=False)
    log = get_logger(run_dir if ctx.is_main else None, "fbnet.supernet")
    if not ctx.is_main:
        log.setLevel(logging.WARNING)
    log.info("run folder %s, device %s", run_dir, ctx.device)
    if ckpt is not None:
        run_on_main(ctx, lambda: tidy_resumed_run(run_dir, ckpt, log))
        if ckpt["epoch"] >= end_epoch(cfg):  # finished (or stopped where asked)
            return _finished(cfg, ckpt, run_dir, log, ctx)
    # the same seed on every rank: the shared Gumbel sample comes from this stream
    set_seed(cfg.seed, cfg.deterministic)
    loaders = build_search_loaders(cfg, ctx, log)
    search = build_search(cfg, ctx, loaders, run_dir, ckpt, log)
    progress = restore_search(search, ckpt, cfg, log) if ckpt is not None else Progress()
    _wrap_for_ddp(search, cfg, ctx, log)
    _epoch_loop(search, loaders, progress, cfg, ctx, run_dir, log, resumed=ckpt is not None)
    done = {"epoch": progress.epoch, **progress.last}  # epochs done: the log's last "epoch N/M"
    done.update(warmup_train_top1=progress.warmup_top1, wall_s=round(progress.wall_s, 1))
    done["path_probe"] = progress.paths
    return _finish(run_dir, search.lut, done, log, ctx, progress.thetas)


def _open_run(cfg: SupernetConfig, ckpt: dict | None, ctx: DistContext) -> Path:
    """The run folder: the resumed run's, or a new one."""
    if ckpt is not None:  # the run continues in its folder, under its lock
        run_dir = Path(cfg.resume).resolve().parent
        run_on_main(ctx, lambda: lock_run_dir(run_dir))
        return run_dir
    return new_run_dir(cfg, ctx, prefix="supernet")


def _epoch_loop(search, loaders, progress: Progress, cfg, ctx, run_dir, log, resumed: bool) -> None:
    """Search the epochs from ``progress.epoch`` on; config, metrics and checkpoints to ``run_dir``."""
    if ctx.is_main:
        atomic_write_json(run_dir / "config.json", config_to_dict(cfg))
    resume_step = progress.epoch if resumed else None
    writer = MetricWriter(run_dir, resume_step=resume_step, enabled=ctx.is_main)
    curves = Curves(run_dir, log, enabled=ctx.is_main)
    wall_before, start = progress.wall_s, time.perf_counter()
    try:
        for epoch in range(progress.epoch, end_epoch(cfg)):
            progress.wall_s = wall_before + time.perf_counter() - start  # before the metrics
            with stops_in_one_line(run_dir, epoch + 1, where=f" at epoch {epoch + 1}"):
                values, held = _search_epoch(
                    epoch, search, loaders, cfg, run_dir, writer, log, ctx, progress
                )
            _end_of_epoch(epoch, values, held, search, progress, cfg, run_dir, ctx)
            curves.draw(writer.rows)
    finally:
        writer.close()


def _wrap_for_ddp(search: Search, cfg: SupernetConfig, ctx: DistContext, log) -> None:
    """DDP for the weights; the thetas stay out of it (see the module docstring).

    Hard Gumbel runs only the sampled op, so the other ops' weights get no gradient in a step.
    """
    search.ddp_model = wrap_model(
        search.model,
        ctx,
        ignore=list(search.model.arch_parameters()),
        sync_bn=cfg.sync_bn,
        find_unused_parameters=cfg.mixing == "hard_gumbel" or cfg.w_mixing == "sampled",
    )
    if ctx.enabled:
        log.info(ctx.describe(cfg.batch_size))


def _finished(cfg, ckpt, run_dir: Path, log, ctx: DistContext) -> dict[str, Any]:
    """The summary of a run that has nothing left to train, from its checkpoint."""
    epochs_done = ckpt["epoch"]
    log.info("%s is at epoch %d of %d: nothing to train", cfg.resume, epochs_done, cfg.epochs)
    lut = run_on_main(ctx, lambda: load_table(run_dir / LUT_FILE))
    done = {"epoch": epochs_done, **ckpt.get("last_metrics", {})}
    done.update(
        warmup_train_top1=ckpt.get("warmup_train_top1"), wall_s=round(ckpt.get("wall_s", 0.0), 1)
    )
    done["path_probe"] = list(ckpt.get("path_probe", []))
    thetas = run_on_main(ctx, lambda: read_thetas(run_dir))  # the last epoch's, as it wrote them
    return _finish(run_dir, lut, done, log, ctx, thetas)


def _search_epoch(
    epoch, search: Search, loaders: SearchLoaders, cfg, run_dir, writer, log, ctx, progress
):
    """One epoch (weights, then thetas after the warm-up, then the held-out part); logs and writes
    thetas.json. Returns the epoch's metrics and the held-out ones (None without a held-out part).
    ``progress.wall_s`` (the wall time at the epoch's start) is brought to its end here."""
    epoch_start = time.perf_counter()
    model, steps = search.model, cfg.max_steps_per_epoch
    temperature = temperature_at(epoch, cfg)
    w_lr = search.w_optimizer.param_groups[0]["lr"]

    def phase(train, loader, optimizer):
        loader.set_epoch(epoch)
        return train(
            search.ddp_model, loader, search.criterion, optimizer, temperature, steps, cfg.progress
        )

    with _weights_mixing(model, cfg.w_mixing):
        w_stats = phase(train_weights_epoch, loaders.weights, search.w_optimizer)
    search.w_scheduler.step()
    values = {f"train_w/{k}": v for k, v in w_stats.items()}
    if epoch >= cfg.warmup_epochs:
        t_stats = phase(train_thetas_epoch, loaders.thetas, search.thetas_optimizer)
        values.update({f"train_thetas/{k}": v for k, v in t_stats.items()})
    sync_buffers(model)  # rank 0's batch-norm statistics everywhere (evaluated and saved)
    held = None
    if loaders.held_out is not None:
        held = validate(model, loaders.held_out, search.criterion, temperature, steps, cfg.progress)
        values.update({f"held_out/{k}": v for k, v in held.items()})
    paths = None
    if loaders.probe is not None:  # do the weights still serve single paths?
        paths = probe_paths(model, loaders.probe, cfg.probe_samples, seed=cfg.seed * 7919 + epoch)
        values.update({f"paths/{k}": v for k, v in paths.items()})
        progress.paths.append({"epoch": epoch + 1, **{k: round(v, 3) for k, v in paths.items()}})
    state = thetas_state(model, epoch + 1, temperature, search.lut, search.lut_source, run_dir)
    # the searched layers only, as the loss's LAT; the summary's *_cost add the stem and head
    tag = search.cost_tag
    values.update(
        {
            f"search/expected_layers_{tag}": state["expected_layers_cost"],
            f"search/argmax_layers_{tag}": state["argmax_cost"]["predicted_layers_cost"],
            f"search/uniform_layers_{tag}": state["uniform_layers_cost"],
            ENTROPY: thetas_summary(state["thetas"])["normalised_entropy"],
            "sched/temperature": temperature,
            "sched/w_lr": w_lr,
            "sched/thetas_lr": search.thetas_optimizer.param_groups[0]["lr"],
        }
    )
    progress.wall_s += time.perf_counter() - epoch_start
    if epoch == cfg.warmup_epochs - 1:  # the weights' accuracy before the first theta step
        values["warmup/train_top1"] = progress.warmup_top1 = w_stats["top1"]
    # the wall time goes to the metrics only: the returned values are the run's, equal on a resume
    writer.scalars(epoch + 1, {**values, "time/wall_s": progress.wall_s})  # step: epochs done
    log_thetas(writer, model, epoch + 1, list(model.candidate_ops))
    progress.thetas = state
    if ctx.is_main:
        atomic_write_json(run_dir / THETAS_FILE, state)
    log.info(
        "epoch %d/%d  T %.3f  w: loss %.4f ce %.4f top1 %.2f%s%s%s  layers: E[LAT] %.4g %s, argmax "
        "%.4g %s: %s",
        epoch + 1,
        cfg.epochs,
        temperature,
        w_stats["loss"],
        w_stats["ce"],
        w_stats["top1"],
        (
            f"  thetas: loss {values['train_thetas/loss']:.4f} top1 {values['train_thetas/top1']:.2f}"
            f" |grad| ce {values['train_thetas/grad_ce']:.2g} latency "
            f"{values['train_thetas/grad_latency']:.2g} (agreement "
            f"{values['train_thetas/grad_ce_agreement']:.2f} / "
            f"{values['train_thetas/grad_latency_agreement']:.2f})"
            if epoch >= cfg.warmup_epochs
            else "  (warm-up)"
        ),
        f"  held-out top1 {held['top1']:.2f}" if held else "",
        (
            f"  paths: argmax top1 {paths['argmax_top1']:.1f}, {cfg.probe_samples} drawn "
            f"{paths['sampled_top1_mean']:.1f} ({paths['sampled_top1_min']:.1f}-"
            f"{paths['sampled_top1_max']:.1f})"
            if paths
            else ""
        ),
        state["expected_layers_cost"],
        search.unit,
        state["argmax_cost"]["predicted_layers_cost"],
        search.unit,
        " ".join(state["argmax_ops"]),
    )
    if epoch == cfg.warmup_epochs - 1:
        log.info(
            "warm-up done: train top1 %.2f%% (mean over the last warm-up epoch), %d epochs, "
            "wall time %.1f min",
            w_stats["top1"],
            cfg.warmup_epochs,
            progress.wall_s / 60,
        )
    return values, held


def _end_of_epoch(epoch, values, held, search: Search, progress: Progress, cfg, run_dir, ctx):
    """Record the epoch in ``progress``; rank 0 writes last.pth, then best.pth on a new best."""
    improved = held is not None and held["top1"] > progress.best_top1
    if improved:
        progress.best_top1, progress.best_epoch = held["top1"], epoch + 1
    progress.epoch, progress.last = epoch + 1, values
    if not (cfg.save_checkpoints and ctx.is_main):
        return
    state = checkpoint_state(search, progress, cfg)
    save_checkpoint(run_dir / "last.pth", state)
    if improved:
        save_checkpoint(run_dir / "best.pth", state)


def _finish(
    run_dir: Path, lut, summary: dict[str, Any], log, ctx: DistContext, thetas: dict[str, Any]
) -> dict[str, Any]:
    """Write arch.json from the last epoch's ``thetas`` (the state thetas.json holds), add the
    latency predictions and how far the thetas are from uniform; log, print (rank 0), return."""
    if ctx.is_main:
        write_arch(run_dir, thetas)
    summary.update(latency_summary(thetas, lut))
    log.info(
        "predicted latency (whole network, %s): argmax architecture %.5g; expected under "
        "softmax(thetas) %.5g; expected under uniform thetas %.5g",
        lut.meta.get("unit", "ms"),
        summary["argmax_cost"],
        summary["expected_cost"],
        summary["uniform_cost"],
    )
    summary["final_thetas"] = final = thetas_summary(torch.tensor(thetas["thetas"]))
    for line in describe_thetas(final):
        log.info(line)
    log.info("done: %s (wall time %.1f min)", run_dir, summary.get("wall_s", 0.0) / 60)
    summary = {"run_dir": str(run_dir), **summary}
    if ctx.is_main:  # the final JSON: on stdout and in the run folder
        atomic_write_json(run_dir / "summary.json", summary)
        print(json.dumps(summary), flush=True)
    return summary


def fit_warmup(cfg: SupernetConfig) -> SupernetConfig:
    """``cfg`` with a warm-up longer than the run cut to ``epochs - 1`` (one search epoch left), with
    one warning line: ``--epochs 2`` alone cuts the default 180-epoch search down to a trial."""
    if cfg.warmup_epochs <= cfg.epochs:
        return cfg
    fitted = dataclasses.replace(cfg, warmup_epochs=cfg.epochs - 1)
    if hasattr(cfg, "_given"):  # what the user set stays known (config_utils.given_fields)
        fitted._given = cfg._given
    if env_rank() == 0:
        print(
            f"warning: --warmup_epochs {cfg.warmup_epochs} is more than --epochs {cfg.epochs}: "
            f"the warm-up is cut to {fitted.warmup_epochs} (set --warmup_epochs to choose)",
            file=sys.stderr,
            flush=True,
        )
    return fitted


def _check_config(cfg: SupernetConfig) -> None:
    """The declared bounds (also for a config built in code, which parsing did not check) and the
    one bound between two fields."""
    check_bounds(cfg)
    if cfg.warmup_epochs > cfg.epochs:
        raise ValueError(
            f"--warmup_epochs must lie in [0, epochs] (got {cfg.warmup_epochs} for {cfg.epochs})"
        )
