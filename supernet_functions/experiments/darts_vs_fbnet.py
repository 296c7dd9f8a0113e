"""DARTS vs FBNet on one easy choice: can the search pick a GOOD block over a BAD one?

The original CIFAR-10 reproduction (github AnnaAraslanova/FBNet, ``DARTS_VS_FBNET.md``) built a simple
network in which one layer is either a GOOD or a BAD block with almost the same number of parameters,
then searched that single slot with DARTS-style mixing (deterministic ``softmax(thetas)``) and with
FBNet's Gumbel-softmax mixing, without any latency term. This script repeats the experiment with this
code's :class:`~supernet_functions.model_supernet.MixedOperation` (the layer the real supernet uses):

1. ``good_only`` and ``bad_only``: the network with the slot fixed to one block, trained alone, to show
   that GOOD trains to the higher accuracy;
2. ``darts`` (``mixing="softmax"``) and ``fbnet`` (``mixing="gumbel"``): the slot mixes both blocks;
   every epoch trains the weights on the weights split with SGD, then the thetas on the thetas split with
   Adam, from the same initial weights and the same batches. The phases are the search's own
   (:func:`~supernet_functions.training_functions_supernet.train_weights_epoch`,
   :func:`~supernet_functions.training_functions_supernet.train_thetas_epoch`,
   :func:`~supernet_functions.training_functions_supernet.temperature_at`) with the loss's ``ce``
   variant: the cross-entropy alone.

Every step logs the two mixing weights the forward pass used (``mix/good``, ``mix/bad``), the learned
distribution ``softmax(thetas)`` (``prob/good``, ``prob/bad``) and the thetas to TensorBoard and
``metrics.csv`` under ``<log_dir>/<run_name>/<mode>/``; the plots go to ``--pictures_dir``.

Usage:
    python -m supernet_functions.experiments.darts_vs_fbnet --help
    # the run in DARTS_VS_FBNET.md (33.6 minutes on 2 CPU cores shared with other jobs; a folder that
    # already holds a run is refused: --overwrite replaces it):
    python -m supernet_functions.experiments.darts_vs_fbnet --data_dir /path/to/cifar10 --run_name cifar10_10k_seed0
    # redraw the plots from a run's CSVs, without training:
    python -m supernet_functions.experiments.darts_vs_fbnet --run_name cifar10_10k_seed0 --plot_only True
    # a few steps on synthetic data:
    python -m supernet_functions.experiments.darts_vs_fbnet --preset smoke
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_building_blocks.blocks import ConvBNReLU
from fbnet_building_blocks.fbnet_builder import init_weights
from fbnet_building_blocks.summary import count_params
from general_functions import run_options
from general_functions.config_utils import config_to_dict, opt, parse_config
from general_functions.dataloaders import load_dataset, make_loader, split_train
from general_functions.io_utils import atomic_write_text
from general_functions.logging_utils import MetricWriter, get_logger
from general_functions.run_folder import check_run_name, release_run_locks, start_run_dir
from general_functions.utils import AverageMeter, accuracy, resolve_device, set_seed, set_threads
from supernet_functions.loss import SupernetLoss
from supernet_functions.model_supernet import MixedOperation
from supernet_functions.training_functions_supernet import (
    temperature_at,
    train_thetas_epoch,
    train_weights_epoch,
)

__all__ = [
    "MODES",
    "BadBlock",
    "DartsVsFbnetConfig",
    "GoodBlock",
    "OneChoiceNet",
    "RecordingMixedOperation",
    "main",
    "plot_run",
    "run",
]

logger = logging.getLogger(__name__)

# mode -> the slot it builds: a fixed block, or MixedOperation's mixing
MODES = {"good_only": "good", "bad_only": "bad", "darts": "softmax", "fbnet": "gumbel"}
CHOICES = ("good", "bad")  # the order of the candidates (and of thetas) in the slot
_ORIG = "original reproduction's supernet"


# ------------------------------------------------------------------------------------ config
@dataclass
class DartsVsFbnetConfig:
    # data
    dataset: str = opt("cifar10", "cifar10 | fake (synthetic)", None, ("cifar10", "fake"))
    data_dir: str = opt("./cifar10_data", "folder holding cifar-10-batches-py/")
    train_limit: int = opt(10000, "random subset of the 50k training images to use (0: all)")
    w_share: float = opt(
        0.8, "share of those images for the weights; the rest trains thetas", _ORIG
    )
    eval_limit: int = opt(
        1000,
        "first test images for the per-epoch test accuracy (0: all; the first 1000 of the local "
        "copy are the pixel-exact ones)",
    )
    fake_train_size: int = opt(320, "training images of the fake data set")
    batch_size: int = opt(64, "batch size of both splits")
    steps_per_epoch: int = opt(0, "stop each phase after this many batches (0: all)")
    # network and schedule
    channels: int = opt(32, "width of the stem and of the searched slot")
    modes: list[str] = opt(list(MODES), f"what to run, any of {', '.join(MODES)}")
    epochs: int = opt(10, "epochs of every mode")
    warmup_epochs: int = opt(0, "first epochs of darts/fbnet that train the weights only")
    w_lr: float = opt(0.1, "SGD learning rate of the weights (cosine over the epochs)", _ORIG)
    w_momentum: float = opt(0.9, "SGD momentum", _ORIG)
    w_weight_decay: float = opt(1e-4, "SGD weight decay", _ORIG)
    thetas_lr: float = opt(0.01, "Adam learning rate of the thetas", _ORIG)
    thetas_weight_decay: float = opt(5e-4, "Adam weight decay of the thetas", _ORIG)
    init_temperature: float = opt(5.0, "Gumbel-softmax temperature at the first epoch", _ORIG)
    temperature_decay: float = opt(math.exp(-0.045), "temperature factor per epoch", _ORIG)
    min_temperature: float = opt(0.0, "the temperature never falls below this (0: no floor)")
    # run
    device: str = run_options.device()
    threads: int = opt(2, "CPU threads (fixed, so that a rerun gives the same numbers)")
    seed: int = opt(0, "seed of the weights, the split, the batches and the Gumbel noise")
    log_dir: str = opt("SAVED_LOGS/darts_vs_fbnet", "folder of run folders")
    run_name: str = opt("", "run folder name (default: <dataset>_seed<seed>)")
    overwrite: bool = run_options.overwrite()
    pictures_dir: str = opt("pictures", "where the PNG plots go")
    plot_only: bool = opt(False, "only redraw the plots from <log_dir>/<run_name>/*/metrics.csv")
    progress: bool = run_options.progress()


PRESETS = {
    # a few steps on synthetic data, in seconds on a CPU (what the test runs)
    "smoke": {
        "dataset": "fake",
        "fake_train_size": 480,  # 96 images for the thetas: 3 batches of 32
        "epochs": 2,
        "batch_size": 32,
        "steps_per_epoch": 3,
        "channels": 8,
        "eval_limit": 64,
        "log_dir": "runs/darts_vs_fbnet",
        "pictures_dir": "runs/darts_vs_fbnet/pictures",
    },
}


# ------------------------------------------------------------------------------------ network
class GoodBlock(ConvBNReLU):
    """GOOD: 3x3 conv (stride 1) + BN + ReLU, ``channels -> channels``; keeps the full resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, stride=1)


class BadBlock(nn.Module):
    """BAD: 3x3 conv with stride 4 + BN + ReLU, then nearest-neighbour upsampling by 4.

    The same conv and BN as :class:`GoodBlock` (the parameter counts are equal), and the same output
    shape, but the conv sees only every fourth row and column: 15 of 16 positions of the map are
    thrown away, and what follows works on an 8x8 image blown up to 32x32.
    """

    def __init__(self, channels: int, factor: int = 4) -> None:
        super().__init__()
        self.conv = ConvBNReLU(channels, channels, 3, stride=factor)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return F.interpolate(y, size=x.shape[-2:], mode="nearest")


class RecordingMixedOperation(MixedOperation):
    """:class:`MixedOperation` that keeps the mixing weights of its last forward pass (for logging).

    Nothing else changes: the forward pass is MixedOperation's own.
    """

    last_weights: torch.Tensor | None = None

    def mixing_weights(self, temperature, batch_size=None) -> torch.Tensor:
        weights = super().mixing_weights(temperature, batch_size)
        self.last_weights = weights.detach()
        return weights


class OneChoiceNet(nn.Module):
    """A small CIFAR-10 network with one searchable slot right after the stem.

    ``stem``: 3x3 conv 3->C | ``slot`` (C->C, 32x32): GOOD, BAD, or a MixedOperation of both |
    2x2 max-pool | 3x3 conv C->2C | 2x2 max-pool | 3x3 conv 2C->4C | global average pool | FC.
    Every conv is conv + BN + ReLU.

    Args:
        slot: ``good`` or ``bad`` (a fixed block), or ``softmax`` / ``gumbel`` (the MixedOperation's
            ``mixing``: DARTS-style or FBNet-style).
    """

    def __init__(self, slot: str, channels: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        c = channels
        self.stem = ConvBNReLU(3, c, 3)
        if slot == "good":
            self.slot = GoodBlock(c)
        elif slot == "bad":
            self.slot = BadBlock(c)
        elif slot in ("softmax", "gumbel"):
            self.slot = RecordingMixedOperation([GoodBlock(c), BadBlock(c)], None, mixing=slot)
        else:
            raise ValueError(f"unknown slot {slot!r}; use good, bad, softmax or gumbel")
        self.body = nn.Sequential(
            nn.MaxPool2d(2), ConvBNReLU(c, 2 * c, 3), nn.MaxPool2d(2), ConvBNReLU(2 * c, 4 * c, 3)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * c, num_classes)
        init_weights(self)

    @property
    def searched(self) -> bool:
        return isinstance(self.slot, MixedOperation)

    def forward(
        self, x: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, expected latency)``, the supernet's contract; the slot's candidates cost 0
        (the experiment has no latency term), a fixed slot's latency is a constant 0."""
        x = self.stem(x)
        if self.searched:
            x, latency = self.slot(x, temperature)
        else:
            x, latency = self.slot(x), x.new_zeros(())
        return self.classifier(self.pool(self.body(x)).flatten(1)), latency

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.slot.thetas] if self.searched else []

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]


# ------------------------------------------------------------------------------------ training
def _slot_values(model: OneChoiceNet) -> dict[str, float]:
    """The mixing weights of the last forward, softmax(thetas) and the thetas, as log scalars."""
    if not model.searched:
        return {}
    used = model.slot.last_weights
    prob = model.slot.probabilities()
    thetas = model.slot.thetas.detach()
    out = {}
    for i, name in enumerate(CHOICES):
        out[f"mix/{name}"] = float(used[..., i].mean())
        out[f"prob/{name}"] = float(prob[i])
        out[f"thetas/{name}"] = float(thetas[i])
    return out


class _StepLog:
    """Writes every step of a phase (the search's ``on_step``) at the run's global step."""

    def __init__(self, model: OneChoiceNet, writer: MetricWriter) -> None:
        self.model, self.writer, self.step = model, writer, 0

    def phase(self, phase: str, epoch: int, temperature: float, optimizer):
        def on_step(batch: dict[str, float]) -> None:
            values = {
                "epoch": float(epoch),
                "train/phase": 0.0 if phase == "w" else 1.0,
                "train/loss": batch["loss"],
                "train/top1": batch["top1"],
                "sched/temperature": float(temperature),
                **_slot_values(self.model),
            }
            if phase == "w":
                values["sched/w_lr"] = optimizer.param_groups[0]["lr"]
            self.writer.scalars(self.step, values)
            self.step += 1

        return on_step


@torch.no_grad()
def evaluate(model: OneChoiceNet, loader) -> float:
    """Top-1 accuracy (percent) of a fixed-slot network."""
    model.eval()
    meter = AverageMeter()
    for x, y in loader:
        meter.update(accuracy(model(x)[0], y)[0], len(y))
    return meter.avg


def run_mode(mode: str, data: dict, cfg: DartsVsFbnetConfig, run_dir: Path, device) -> dict:
    """Train one mode from the seed; returns its summary (accuracies or the learned distribution).

    ``run_dir/mode`` is a complete run folder: ``config.json``, ``log.txt`` (this mode's lines; the
    run's ``log.txt`` has them all), ``metrics.csv`` and ``tb/``.
    """
    mode_dir = run_dir / mode
    mode_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mode_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
    log = logging.getLogger("fbnet")
    handler = logging.FileHandler(mode_dir / "log.txt", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    try:
        return _train_mode(mode, data, cfg, mode_dir, device, log)
    finally:
        log.removeHandler(handler)
        handler.close()


def _train_mode(mode, data, cfg, mode_dir: Path, device, log: logging.Logger) -> dict:
    set_seed(cfg.seed)
    model = OneChoiceNet(MODES[mode], cfg.channels, data["num_classes"]).to(device)
    w_opt = torch.optim.SGD(
        model.weight_parameters(),
        lr=cfg.w_lr,
        momentum=cfg.w_momentum,
        weight_decay=cfg.w_weight_decay,
    )
    w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs)
    thetas_opt = None
    if model.searched:
        thetas_opt = torch.optim.Adam(
            model.arch_parameters(), lr=cfg.thetas_lr, weight_decay=cfg.thetas_weight_decay
        )
    old_events = sorted((mode_dir / "tb").glob("events.out.tfevents.*"))
    for path in old_events:  # a rerun replaces the mode's logs (metrics.csv is rewritten too)
        path.unlink()
    if old_events:
        log.info("%s: replaced %d old TensorBoard event file(s)", mode, len(old_events))
    writer = MetricWriter(mode_dir)
    steps = _StepLog(model, writer)
    criterion = SupernetLoss(variant="ce")  # no latency term: the cross-entropy alone
    summary: dict = {"mode": mode, "slot": MODES[mode], "params": count_params(model)}
    start = time.perf_counter()
    # the Gumbel noise comes from the global generator; seed it apart from the weights' init
    torch.manual_seed(cfg.seed + 1)
    for epoch in range(cfg.epochs):
        # the search's anneal; a fixed slot has no thetas and keeps the first temperature
        temperature = temperature_at(epoch, cfg) if model.searched else cfg.init_temperature
        data["w_loader"].set_epoch(epoch)
        w = train_weights_epoch(
            model, data["w_loader"], criterion, w_opt, temperature, cfg.steps_per_epoch,
            cfg.progress, on_step=steps.phase("w", epoch, temperature, w_opt),
        )  # fmt: skip
        line = f"{mode} epoch {epoch}: w loss {w['loss']:.3f} top1 {w['top1']:.2f}"
        w_sched.step()
        if model.searched and epoch >= cfg.warmup_epochs:
            data["thetas_loader"].set_epoch(epoch)
            t = train_thetas_epoch(
                model, data["thetas_loader"], criterion, thetas_opt, temperature,
                cfg.steps_per_epoch, cfg.progress,
                on_step=steps.phase("thetas", epoch, temperature, thetas_opt),
            )  # fmt: skip
            prob = model.slot.probabilities()
            line += (
                f" | thetas loss {t['loss']:.3f} p(good) {float(prob[0]):.3f} T {temperature:.3f}"
            )
        if not model.searched:
            test_top1 = evaluate(model, data["eval_loader"])
            writer.scalars(steps.step - 1, {"val/top1": test_top1})
            line += f" | test top1 (first {data['sizes']['eval']}) {test_top1:.2f}"
        log.info(line)
    summary["train_seconds"] = round(time.perf_counter() - start, 1)
    if model.searched:
        prob = model.slot.probabilities()
        summary["final_prob"] = {n: float(prob[i]) for i, n in enumerate(CHOICES)}
        thetas = model.slot.thetas.detach()
        summary["final_thetas"] = {n: float(thetas[i]) for i, n in enumerate(CHOICES)}
    else:
        summary["test_top1_eval_subset"] = evaluate(model, data["eval_loader"])
        summary["test_top1"] = evaluate(model, data["test_loader"])
        if data.get("exact_loader") is not None:
            summary["test_top1_exact"] = evaluate(model, data["exact_loader"])
    writer.close()
    log.info("%s: %s", mode, json.dumps(summary))
    return summary


def _load_data(cfg: DartsVsFbnetConfig, device) -> dict:
    sizes = (cfg.fake_train_size, max(cfg.eval_limit, 64))
    image_set = load_dataset(cfg.dataset, cfg.data_dir, fake_sizes=sizes, seed=cfg.seed)
    w_part, thetas_part = split_train(image_set.train, cfg.w_share, cfg.seed, cfg.train_limit)
    norm = {"mean": image_set.mean, "std": image_set.std, "device": device}
    test = image_set.test
    eval_part = test.subset(torch.arange(min(cfg.eval_limit or len(test), len(test))))

    def loader(part, train, seed=cfg.seed):
        batch_size = cfg.batch_size if train else 500  # evaluation: larger batches, same numbers
        return make_loader(
            part, batch_size, train, seed=seed, drop_last=train, loader="tensor", **norm
        )

    data = {
        "num_classes": image_set.num_classes,
        "w_loader": loader(w_part, True),
        "thetas_loader": loader(thetas_part, True, cfg.seed + 1),
        "eval_loader": loader(eval_part, False),
        "test_loader": loader(test, False),
        "exact_loader": None
        if image_set.test_exact is None
        else loader(image_set.test_exact, False),
        "sizes": {
            "w": len(w_part),
            "thetas": len(thetas_part),
            "eval": len(eval_part),
            "test": len(test),
        },
    }
    return data


def run(cfg: DartsVsFbnetConfig) -> dict:
    """Train the chosen modes, write ``summary.json`` and draw the plots; returns the summary."""
    unknown = [m for m in cfg.modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; use any of {', '.join(MODES)}")
    if not 0.0 < cfg.w_share < 1.0:
        raise ValueError(f"w_share must lie strictly between 0 and 1, got {cfg.w_share}")
    run_name = cfg.run_name or f"{cfg.dataset}_seed{cfg.seed}"
    if cfg.plot_only:
        check_run_name(run_name)
        return {"plots": [str(p) for p in plot_run(Path(cfg.log_dir) / run_name, cfg.pictures_dir)]}
    try:  # the trainers' run folder: locked, and a finished run is kept unless --overwrite
        run_dir = start_run_dir(cfg.log_dir, run_name, "darts_vs_fbnet", cfg.overwrite)
        return _run_in(run_dir, cfg)
    finally:
        release_run_locks()


def _run_in(run_dir: Path, cfg: DartsVsFbnetConfig) -> dict:
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    log = get_logger(run_dir)
    atomic_write_text(run_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
    data = _load_data(cfg, device)
    good, bad = GoodBlock(cfg.channels), BadBlock(cfg.channels)
    summary: dict = {
        "command": "python -m supernet_functions.experiments.darts_vs_fbnet "
        + " ".join(sys.argv[1:]),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "split_sizes": data["sizes"],
        "slot_params": {"good": count_params(good), "bad": count_params(bad)},
        "modes": {},
    }
    log.info(
        "%s on %s (%d threads); images: %s; slot params good %d, bad %d",
        cfg.dataset,
        device,
        torch.get_num_threads(),
        data["sizes"],
        count_params(good),
        count_params(bad),
    )
    for mode in cfg.modes:
        summary["modes"][mode] = run_mode(mode, data, cfg, run_dir, device)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    summary["plots"] = [str(p) for p in plot_run(run_dir, cfg.pictures_dir)]
    log.info("plots: %s", ", ".join(summary["plots"]))
    return summary


# ------------------------------------------------------------------------------------ plots
def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as floats (empty cells left out)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _steps_to_epochs(rows: Sequence[dict], steps: Sequence[float]) -> list[float]:
    """Steps as fractional epochs: each epoch's steps spread evenly over [epoch, epoch + 1)."""
    per_epoch: dict[int, list[float]] = {}
    for r in rows:
        if "epoch" in r and "train/loss" in r:
            per_epoch.setdefault(int(r["epoch"]), []).append(r["step"])
    pos = {}
    for epoch, epoch_steps in per_epoch.items():
        for i, s in enumerate(epoch_steps):
            pos[s] = epoch + i / len(epoch_steps)
    return [pos[s] for s in steps]


def plot_run(run_dir: str | Path, pictures_dir: str | Path) -> list[Path]:
    """Draw the mixing-weight and accuracy plots of a run into ``pictures_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, out = Path(run_dir), Path(pictures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    meta = {"Software": None}  # no version string: a rerun writes the same bytes
    styles = {
        "darts": ("DARTS-style mixing: softmax(thetas)", {"good": "tab:green", "bad": "tab:gray"}),
        "fbnet": ("FBNet-style mixing: Gumbel-softmax", {"good": "tab:blue", "bad": "tab:red"}),
    }
    for mode, (title, colours) in styles.items():
        csv_path = run_dir / mode / "metrics.csv"
        if not csv_path.is_file():
            continue
        rows = read_metrics(csv_path)
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in CHOICES:
            steps, used = _series(rows, f"mix/{name}")
            x = _steps_to_epochs(rows, steps)
            lw = 0.6 if mode == "fbnet" else 1.8
            ax.plot(
                x, used, color=colours[name], lw=lw, alpha=0.8, label=f"{name.upper()}: weight used"
            )
            if mode == "fbnet":
                steps, prob = _series(rows, f"prob/{name}")
                ax.plot(
                    _steps_to_epochs(rows, steps), prob, color=colours[name], lw=2.0, ls="--",
                    label=f"{name.upper()}: softmax(thetas)",
                )  # fmt: skip
        ax.set(xlabel="epoch", ylabel="mixing weight", ylim=(0, 1), title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = out / f"darts_vs_fbnet_{mode}.png"
        fig.savefig(path, dpi=100, metadata=meta)
        plt.close(fig)
        paths.append(path)
    curves = {}
    for mode in ("good_only", "bad_only"):
        csv_path = run_dir / mode / "metrics.csv"
        if csv_path.is_file():
            rows = read_metrics(csv_path)
            curves[mode] = [r["val/top1"] for r in rows if "val/top1" in r]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        colours = {"good_only": "tab:green", "bad_only": "tab:gray"}
        for mode, accs in curves.items():
            label = f"{mode.split('_')[0].upper()} alone"
            ax.plot(range(1, len(accs) + 1), accs, marker="o", color=colours[mode], label=label)
        ax.set(
            xlabel="epoch",
            ylabel="test top-1 (%), first test images",
            title="The slot fixed: GOOD vs BAD alone",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        path = out / "darts_vs_fbnet_standalone.png"
        fig.savefig(path, dpi=100, metadata=meta)
        plt.close(fig)
        paths.append(path)
    if not paths:
        raise FileNotFoundError(f"no metrics.csv of any mode under {run_dir}")
    return paths


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(
        DartsVsFbnetConfig,
        argv,
        description=__doc__,
        presets=PRESETS,
    )
    summary = run(cfg)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from general_functions.run_folder import USER_ERRORS

    try:
        main()
    except USER_ERRORS as err:  # a taken run folder, a missing data set...: one line
        sys.exit(f"error: {err}")
