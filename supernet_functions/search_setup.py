"""Setting up a search: the split of the training set, the cost table, the supernet and its
optimizers, and restoring them from a checkpoint (:mod:`.training_functions_supernet` runs the loop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fbnet_building_blocks.search_space import SearchSpace, get_search_space
from fbnet_building_blocks.structure import Structure
from general_functions.config_utils import config_to_dict
from general_functions.dataloaders import EpochLoader, load_dataset, make_loader, split_train
from general_functions.distributed import DistContext, broadcast_object, local_main_first
from general_functions.run_folder import Progress as RunProgress
from general_functions.run_folder import extend_cosine
from general_functions.utils import get_rng_state, set_rng_state
from supernet_functions.config_for_supernet import SupernetConfig
from supernet_functions.loss import SupernetLoss, check_cost_table, loss_target
from supernet_functions.model_supernet import StochasticSuperNet
from supernet_functions.sampling import LUT_FILE, load_table
from supernet_functions.search_outputs import git_sha
from supernet_functions.speed import prepare_supernet

__all__ = [
    "STAGE",
    "Progress",
    "Search",
    "SearchLoaders",
    "build_search",
    "build_search_loaders",
    "checkpoint_state",
    "resolve_lut",
    "restore_search",
]

logger = logging.getLogger(__name__)
STAGE = "supernet"


@dataclass
class SearchLoaders:
    """The search's three parts of the training set, and what the data is."""

    weights: EpochLoader
    thetas: EpochLoader
    held_out: EpochLoader | None
    probe: EpochLoader | None  # the path diagnostic's images (supernet_functions.path_probe)
    num_classes: int
    input_size: int


@dataclass
class Search:
    """What a search trains and with what: its cost table, supernet, loss, optimizers."""

    lut: Any
    lut_source: str
    model: StochasticSuperNet
    criterion: SupernetLoss
    w_optimizer: torch.optim.Optimizer
    thetas_optimizer: torch.optim.Optimizer
    w_scheduler: torch.optim.lr_scheduler.LRScheduler
    ddp_model: nn.Module | None = None  # the DDP wrapper under torchrun, else ``model``

    @property
    def unit(self) -> str:
        return self.lut.meta.get("unit", "ms")

    @property
    def cost_tag(self) -> str:
        """Metric names: latency_ms for a latency table in ms, else the table's cost (flops...)."""
        return f"latency_{self.unit}" if self.lut.cost == "latency" else self.lut.cost


@dataclass
class Progress(RunProgress):
    """Where a search stands: a run's progress (best: held-out top-1), and the search's own records."""

    warmup_top1: float | None = None  # the weights' train top-1 in the last warm-up epoch
    paths: list[dict[str, float]] = field(default_factory=list)  # the path diagnostic per epoch
    thetas: dict[str, Any] | None = None  # the last epoch's thetas.json state (not checkpointed)


def build_search_loaders(cfg: SupernetConfig, ctx: DistContext, log) -> SearchLoaders:
    """Held-out part (optional) | weights | thetas, all from the training set."""
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
            ctx.device,
            cfg.loader,
            data.mean,
            data.std,
            seed=seed,
            workers=cfg.workers,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )

    probe = None
    if cfg.probe_images:  # images the weights never train on
        source = held_out if held_out is not None else thetas_data
        probe = _first(source, cfg.probe_images)
    log.info(
        "images: %d weights, %d thetas, %d held-out (%s)",
        len(w_data),
        len(thetas_data),
        len(held_out) if held_out is not None else 0,
        cfg.dataset,
    )
    return SearchLoaders(
        weights=loader(w_data, True, cfg.seed),
        thetas=loader(thetas_data, True, cfg.seed + 1),
        held_out=loader(held_out, False, cfg.seed + 2) if held_out is not None else None,
        probe=loader(probe, False, cfg.seed + 3) if probe is not None else None,
        num_classes=data.num_classes,
        input_size=data.input_size,
    )


def _first(data, n: int):
    """The first ``n`` images of a split (all of them when it has fewer)."""
    if n >= len(data):
        return data
    if hasattr(data, "subset"):
        return data.subset(torch.arange(n))
    return torch.utils.data.Subset(data, range(n))


def build_search(cfg, ctx: DistContext, loaders: SearchLoaders, run_dir: Path, ckpt, log) -> Search:
    """The cost table (rank 0 reads or measures it, the others receive it), supernet, loss and
    optimizers. A resumed search reads its own lut.json, so it optimises the same loss."""
    space = get_search_space(cfg.search_space)
    input_size = cfg.input_size or loaders.input_size
    lut = lut_source = None
    if ctx.is_main:
        if ckpt is not None:
            lut, lut_source = load_table(run_dir / LUT_FILE), ckpt["lut_source"]
        else:
            lut, lut_source = resolve_lut(cfg, space, input_size, ctx.device, run_dir, log)
    lut, lut_source = broadcast_object((lut, lut_source))
    cheapest = check_cost_table(lut, cfg.cost_scale, space.candidate_ops, cfg.loss_include_fixed)
    if ctx.is_main:
        lut.save(run_dir / LUT_FILE)
    unit = lut.meta.get("unit", "ms")
    log.info(
        "cost table %s (unit %s); cheapest architecture %.4g %s", lut_source, unit, cheapest, unit
    )
    supernet = StochasticSuperNet(
        space,
        lut,
        loaders.num_classes,
        input_size,
        mixing=cfg.mixing,
        per_sample=cfg.per_sample,
        bn_init=cfg.bn_init,
        structure=lut.structure,  # resolve_lut checked it is the configured one
        weight_sharing=cfg.weight_sharing,
    )
    model = prepare_supernet(  # exact speed-ups, and the CUDA-only options (README "Performance")
        supernet,
        ctx.device,
        channels_last=cfg.channels_last != "off",
        trim_kernels=cfg.trim_kernels,
        cudnn_benchmark=cfg.cudnn_benchmark and not cfg.deterministic,
        amp=cfg.amp,
        recompute=cfg.recompute,
        fuse_ops=cfg.fuse_ops,
    )
    fixed_cost = lut.fixed_cost if cfg.loss_include_fixed else 0.0
    target = loss_target(
        cfg.target_latency_ms, lut, cfg.loss_include_fixed, space.candidate_ops, log
    )
    if target:
        log.info("latency target %.4g ms (whole network): the loss's hinge", cfg.target_latency_ms)
    w_optimizer = torch.optim.SGD(
        model.weight_parameters(),
        lr=cfg.w_lr,
        momentum=cfg.w_momentum,
        weight_decay=cfg.w_weight_decay,
    )
    return Search(
        lut=lut,
        lut_source=lut_source,
        model=model,
        criterion=SupernetLoss(
            cfg.alpha, cfg.beta, cfg.loss_variant, cfg.cost_scale, fixed_cost, target
        ),
        w_optimizer=w_optimizer,
        thetas_optimizer=torch.optim.Adam(
            model.arch_parameters(), lr=cfg.thetas_lr, weight_decay=cfg.thetas_weight_decay
        ),
        w_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(
            w_optimizer, T_max=cfg.epochs, eta_min=cfg.w_lr_min
        ),
    )


def resolve_lut(
    cfg: SupernetConfig, space: SearchSpace, input_size: int, device, run_dir: Path, log=logger
):
    """The cost table of the search: ``--lut_path``, else the committed one, else measure one."""
    from supernet_functions.latency import measure as ltb

    ops = list(space.candidate_ops)
    structure = Structure.from_config(cfg)
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
                structure=structure,
            )
            source = str(run_dir / LUT_FILE)
    lut.check_compatible(space.name, input_size, ops, structure=structure)
    return lut, source


def _committed_table(ltb, space_name: str, input_size: int) -> Path | None:
    path = ltb.default_lut_path(space_name, input_size)
    return Path(path) if path and Path(path).is_file() else None


def restore_search(search: Search, ckpt: dict[str, Any], cfg: SupernetConfig, log) -> Progress:
    """Load the checkpoint into the search; where it stood."""
    search.model.load_state_dict(ckpt["model"])
    search.w_optimizer.load_state_dict(ckpt["optimizers"]["w"])
    search.thetas_optimizer.load_state_dict(ckpt["optimizers"]["thetas"])
    search.w_scheduler.load_state_dict(ckpt["schedulers"]["w"])
    extend_cosine(search.w_scheduler, cfg.epochs)
    set_rng_state(ckpt["rng"])  # rank 0's: every phase starts from rank 0's state anyway
    progress = Progress.of(
        ckpt, warmup_top1=ckpt.get("warmup_train_top1"), paths=list(ckpt.get("path_probe", []))
    )
    log.info("resumed from %s at epoch %d", cfg.resume, progress.epoch)
    return progress


def checkpoint_state(search: Search, progress: Progress, cfg) -> dict[str, Any]:
    """The checkpoint of ``search`` where ``progress`` stands (``epoch``: epochs done)."""
    return {
        "stage": STAGE,
        "epoch": progress.epoch,
        "model": search.model.state_dict(),
        "optimizers": {
            "w": search.w_optimizer.state_dict(),
            "thetas": search.thetas_optimizer.state_dict(),
        },
        "schedulers": {"w": search.w_scheduler.state_dict()},
        "config": config_to_dict(cfg),
        "lut_meta": search.lut.meta,
        "lut_source": search.lut_source,
        "best_top1": progress.best_top1,
        "best_epoch": progress.best_epoch,  # last.pth first: see general_functions.run_folder
        "last_metrics": progress.last,
        "wall_s": progress.wall_s,
        "warmup_train_top1": progress.warmup_top1,
        "path_probe": progress.paths,
        "rng": get_rng_state(),
        "git_sha": git_sha(),
    }
