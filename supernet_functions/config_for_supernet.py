"""Configuration of the supernet search and of sampling: one flat dataclass, every field a flag.

Defaults reproduce the original CIFAR-10 reproduction's run (github AnnaAraslanova/FBNet,
``supernet_functions/config_for_supernet.py``), which follows the paper's Sec. 4.1 schedule where the
paper gives one. ``--preset smoke`` runs the whole pipeline on synthetic data in about 30 s on 2 CPU
cores (README, "The smoke run"); ``--preset cpu_cifar10`` searches CIFAR-10 in 18-40 minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from general_functions import run_options
from general_functions.config_utils import given_flags, opt
from supernet_functions.latency.cli import LUT_MODES
from supernet_functions.latency.measure import DEFAULT_TIME_BUDGET_S

__all__ = ["SupernetConfig", "PRESETS", "MODES", "LUT_MODES", "help_layout", "refuse_unread_flags"]

MODES = ("train", "sample", *LUT_MODES)
_ORIG = "original reproduction"


@dataclass
class SupernetConfig:
    # ---------------------------------------------------------------- what to do
    train_or_sample: str = opt(
        "train",
        "train: search; sample: turn a search's thetas into architectures; build_lut / "
        "validate_lut: measure or check a latency table (supernet_functions.latency.cli)",
        _ORIG,
        choices=MODES,
    )
    # ---------------------------------------------------------------- data
    dataset: str = opt("cifar10", "cifar10 | fake (synthetic)", _ORIG, ("cifar10", "fake"))
    data_dir: str = opt("./cifar10_data", "folder holding cifar-10-batches-py/", _ORIG)
    download: bool = run_options.download()
    train_limit: int = run_options.train_limit()
    w_share: float = opt(
        0.8, "share of the training images for the weights; the rest trains thetas", _ORIG
    )
    val_fraction: float = opt(
        0.0,
        "share of the training images held out to pick best.pth (0: none; never the test set)",
    )
    fake_train_size: int = run_options.fake_train_size()
    batch_size: int = opt(1000, "batch size of both splits", _ORIG)
    max_steps_per_epoch: int = run_options.max_steps_per_epoch()
    loader: str = run_options.loader()
    workers: int = run_options.workers()
    # ---------------------------------------------------------------- supernet
    search_space: str = opt(
        "fbnet",
        "fbnet (paper macro; the original kept it on 32x32 inputs) | fbnet_cifar | tiny",
        _ORIG,
        ("fbnet", "fbnet_cifar", "tiny"),
    )
    input_size: int = opt(0, "input side (0: the data set's, 32 for CIFAR-10)")
    mixing: str = opt(
        "gumbel",
        "gumbel (FBNet) | softmax (DARTS-style, deterministic) | hard_gumbel (one-hot sample with "
        "the straight-through gradient: only the sampled op runs; much faster, a departure)",
        "paper Eq. 5",
        ("gumbel", "softmax", "hard_gumbel"),
    )
    per_sample: bool = opt(
        False, "one Gumbel draw per example instead of per batch", _ORIG + " shares one"
    )
    dw_bn_relu: bool = opt(
        False,
        "BN + ReLU after each depthwise conv of the candidate ops (paper Fig. 3); False: bare, as the "
        "networks the trainer builds by default. The latency table must have priced the same "
        "(fbnet_building_blocks/structure.py)",
        "the trainer's default (the original's retrained networks; its supernet had BN + ReLU)",
    )
    head: str = opt(
        "conv_bias",
        "head after the last layer: conv_bias (plain 1x1 conv with bias) | conv_bn_relu (paper "
        "Table 1) | conv_bn; the latency table must have priced the same",
        _ORIG,
        ("conv_bias", "conv_bn_relu", "conv_bn"),
    )
    head_channels: int = opt(1504, "width of the 1x1 head conv", _ORIG)
    bn_init: str = opt(
        "ones",
        "BN scale initialisation of the supernet: ones (PyTorch since 1.2) or uniform (U(0, 1), the "
        "default of the PyTorch <= 1.1 the original ran on; divides the head's curvature by about 3, "
        "TRAINING_DETAILS.md 'Retraining on CIFAR-10')",
        "PyTorch default; the original ran with uniform",
        ("ones", "uniform"),
    )
    # ---------------------------------------------------------------- speed (docs/performance.md)
    channels_last: str = opt(
        "auto",
        "channels_last memory format for the supernet; auto = on (exact: the same arithmetic, "
        "much faster depthwise convolutions on small maps, and on a CPU 1x1 convolutions run as "
        "matrix products)",
        None,
        ("auto", "on", "off"),
    )
    trim_kernels: bool = opt(
        True,
        "depthwise convolutions skip kernel taps that only see padding, and compute the weight "
        "gradient of outputs up to 2x2 directly (exact)",
    )
    recompute: bool = opt(
        True,
        "weight steps of the soft mixture compute the outputs of BN + ReLU and of the expansion 1x1 "
        "convolutions again in the backward pass instead of keeping them: less than half the live "
        "memory for about a tenth of the weight step's speed, the same gradients to float rounding "
        "(single-path steps keep theirs; docs/performance.md)",
    )
    fuse_ops: bool = opt(
        True,
        "on a CPU, each layer's inverted-residual candidates run together where batch x output "
        "pixels is at most 2048 (4x4 outputs at batch 128): stacked expansion GEMM, one BN per "
        "stage of the block, one depthwise conv per kernel size; with --weight_sharing, on any "
        "device, a soft mixture computes each shared channel once (exact; docs/performance.md)",
    )
    amp: bool = run_options.amp()
    cudnn_benchmark: bool = opt(False, "let cuDNN time and pick convolution algorithms (CUDA only)")
    # ---------------------------------------------------------------- latency table and loss
    lut_path: str = opt(
        "",
        "latency (or FLOPs) table JSON; empty: the committed table for this space and input size in "
        "luts/ if there is one, else measure one on --device",
    )
    lut_batch_size: int = opt(1, "batch size a freshly measured table uses", _ORIG)
    lut_time_budget_s: float = opt(
        DEFAULT_TIME_BUDGET_S, "seconds a freshly measured table may take"
    )
    lut_rounds: int = opt(0, "rounds of a freshly measured table (0: as many as the budget allows)")
    alpha: float = opt(0.2, "loss: CE * alpha * log(LAT)^beta", "paper Eq. 2; " + _ORIG)
    beta: float = opt(0.6, "loss exponent", "paper Eq. 2; " + _ORIG)
    loss_variant: str = opt(
        "paper",
        "paper: CE*alpha*log(LAT)^beta | original: alpha*CE*beta*log(LAT) (the original's formula)",
        "paper Eq. 2",
        ("paper", "original"),
    )
    cost_scale: float = opt(
        1000.0,
        "LAT is the table's cost times this before the log (1000: ms -> us)",
        _ORIG + " used us",
    )
    loss_include_fixed: bool = opt(
        False, "add the table's fixed parts (stem, head) to LAT", "paper Eq. 4 sums the layers only"
    )
    target_latency_ms: float = opt(
        0.0,
        "latency budget of the whole network in ms (0: off): the latency term is the paper's above "
        "it and constant below it, CE*alpha*log(max(LAT, T - fixed parts))^beta (supernet_functions/"
        "loss.py); needs a latency table in ms",
        "MnasNet's hard constraint on the paper's Eq. 2",
    )
    # ---------------------------------------------------------------- schedule
    epochs: int = opt(180, "epochs in all, warm-up included", _ORIG)
    warmup_epochs: int = opt(10, "first epochs train the weights only", _ORIG)
    w_lr: float = opt(0.1, "SGD learning rate of the weights (cosine over all epochs)", _ORIG)
    w_momentum: float = opt(0.9, "SGD momentum", _ORIG)
    w_weight_decay: float = opt(1e-4, "SGD weight decay", _ORIG)
    w_lr_min: float = opt(0.0, "cosine schedule's final learning rate", _ORIG)
    thetas_lr: float = opt(0.01, "Adam learning rate of the thetas", _ORIG)
    thetas_weight_decay: float = opt(5e-4, "Adam weight decay of the thetas", _ORIG)
    init_temperature: float = opt(
        5.0, "Gumbel-softmax temperature at the first search epoch", _ORIG
    )
    temperature_decay: float = opt(
        math.exp(-0.045), "temperature factor per search epoch (exp(-0.045))", _ORIG
    )
    min_temperature: float = opt(
        0.0, "floor of the annealed temperature (0: none): the anneal stops there"
    )
    w_mixing: str = opt(
        "same",
        "how the weight steps mix the ops: same (as --mixing, the paper) | sampled (each weight step "
        "trains one path drawn from softmax(thetas): only its ops run, as GDAS; the theta steps keep "
        "--mixing)",
        "paper: same",
        ("same", "sampled"),
    )
    weight_sharing: bool = opt(
        False,
        "the inverted-residual ops of a layer share their convolutions (a 3x3 kernel is the centre "
        "of the 5x5, expansion e the first e x in channels; supernet_functions/shared_ops.py), as "
        "once-for-all and FBNetV2; the searched network is retrained with its own weights",
        "paper: every op has its own weights",
    )
    probe_images: int = opt(
        1000,
        "images the path diagnostic scores each epoch: the held-out part with --val_fraction, else "
        "the first ones of the theta split (never trained on by the weights); 0: off",
    )
    probe_samples: int = opt(
        5, "paths drawn from softmax(thetas) that the diagnostic scores besides the argmax path"
    )
    # ---------------------------------------------------------------- run
    device: str = run_options.device()
    threads: int = run_options.threads()
    sync_bn: bool = run_options.sync_bn()
    seed: int = opt(0, "seed of weights, split, batches and Gumbel noise")
    deterministic: bool = run_options.deterministic()
    dist_timeout_min: float = run_options.dist_timeout_min()
    log_dir: str = opt("runs/supernet", "folder of run folders")
    run_name: str = opt("", "run folder name (train: default time-stamped; sample: default latest)")
    resume: str = run_options.resume()
    overwrite: bool = run_options.overwrite()
    stop_after_epoch: int = run_options.stop_after_epoch()
    save_checkpoints: bool = opt(
        True, "write last.pth every epoch (and best.pth with --val_fraction)"
    )
    progress: bool = run_options.progress()
    # ---------------------------------------------------------------- sampling
    architecture_name: str = opt("", "name to save a sampled architecture under", _ORIG)
    hardsampling_bool_value: bool = opt(
        True, "True: argmax of every layer's thetas; False: draw from softmax(thetas)", _ORIG
    )
    num_samples: int = opt(
        1,
        "architectures to save. With argmax (--hardsampling_bool_value True) and N > 1: NAME_argmax "
        "plus N-1 distinct draws from softmax(thetas), NAME_1..; the paper samples 6. With draws "
        "(False): N distinct draws, NAME_1..NAME_N. Duplicates are skipped",
        "the paper samples 6; the original saves 1",
    )
    arch_dir: str = opt(
        "",
        "registry folder for sampled architectures (default: $FBNET_ARCH_DIR or sampled_architectures/)",
    )

    # old flag names, kept for one release (one warning line each; old checkpoints read silently)
    DEPRECATED_NAMES: ClassVar[dict[str, str]] = {
        "stop_epoch": "stop_after_epoch",
        "steps_per_epoch": "max_steps_per_epoch",
    }

    # ---------------------------------------------------------------- checked by config_utils
    BOUNDS: ClassVar[dict[str, str]] = {
        **run_options.BOUNDS,
        "w_share": "(0, 1)",
        "val_fraction": "[0, 1)",
        "batch_size": "[1, inf)",
        "input_size": "[0, inf)",
        "head_channels": "[1, 65536]",
        "lut_batch_size": "[1, inf)",
        "lut_time_budget_s": "(0, inf)",
        "lut_rounds": "[0, inf)",
        "alpha": "(0, inf)",
        "beta": "[0, inf)",
        "cost_scale": "(0, inf)",
        "target_latency_ms": "[0, inf)",
        "epochs": "[1, inf)",
        "warmup_epochs": "[0, inf)",
        "w_lr": "[0, inf)",
        "w_momentum": "[0, 1)",
        "w_weight_decay": "[0, inf)",
        "w_lr_min": "[0, inf)",
        "thetas_lr": "[0, inf)",
        "thetas_weight_decay": "[0, inf)",
        "init_temperature": "(0, inf)",
        "temperature_decay": "(0, inf)",
        "min_temperature": "[0, inf)",
        "probe_images": "[0, inf)",
        "probe_samples": "[0, 100]",
        "num_samples": "[1, inf)",
    }


PRESETS = {
    # The whole pipeline on 160 synthetic images of the 4-layer space; this search: 13 s on 2 CPU cores.
    "smoke": {
        "dataset": "fake",
        "search_space": "tiny",
        "fake_train_size": 160,
        "batch_size": 32,
        "epochs": 3,
        "warmup_epochs": 1,
        "loader": "tensor",
        "log_dir": "runs/supernet_smoke",
        "lut_time_budget_s": 5.0,
        "lut_rounds": 2,
        "threads": 1,  # tiny tensors: one thread is faster, above all on a shared machine
    },
    # A search on real CIFAR-10 that a 2-core CPU runs in 18-40 minutes (35.0, 30.3, 40.0 measured
    # on an AMD EPYC, 18.5 on an Intel Xeon; target 2.5 ms: SAVED_LOGS/supernet_training/
    # cpu_cifar10_t2.5_seed*), whose weights serve single paths: the weight steps train one path
    # drawn from softmax(thetas) through weights the ops of a layer share (docs/experiments.md,
    # "Which supernet keeps serving paths"); the theta steps keep the paper's soft Gumbel mixture.
    # The `fbnet` space with its committed 32x32 table. Each value and its reason:
    # TRAINING_DETAILS.md ("A search on a 2-core CPU"). Pass --data_dir.
    "cpu_cifar10": {
        "dataset": "cifar10",
        "search_space": "fbnet",  # the space with a committed 32x32 table (luts/README.md)
        "mixing": "gumbel",
        "w_mixing": "sampled",
        "weight_sharing": True,
        "batch_size": 128,
        "epochs": 30,
        "warmup_epochs": 20,  # 6,240 single-path weight steps before the first theta step
        "bn_init": "uniform",  # BN scales U(0, 1), as the original ran
        "w_lr": 0.01,  # stable for single-path steps at batch 128 (bench/supernet_paths.py)
        "thetas_lr": 0.02,  # 10 x 79 = 790 theta steps x 0.02 ~ the original's 1,700 x 0.01
        "temperature_decay": math.exp(-0.4),  # 5.0 ... 0.14 over the 10 search epochs
        "loader": "tensor",
        "threads": 2,
        "log_dir": "runs/supernet_cpu_cifar10",
    },
}


# ``--help`` by mode: sampling reads a search run, so it needs only these fields (and its own).
_SHARED_FIELDS = ("train_or_sample", "log_dir", "run_name", "seed")
_SAMPLE_FIELDS = ("architecture_name", "hardsampling_bool_value", "num_samples", "arch_dir")


def help_layout(
    mode: str | None,
) -> tuple[list[tuple[str, tuple[str, ...] | None]], tuple[str, ...]]:
    """(groups, hidden) for :func:`general_functions.config_utils.parse_config`.

    ``mode`` is the ``--train_or_sample`` given on the command line (None when absent): ``train`` or
    ``sample`` shows only that mode's options; without a mode every option shows, under a heading that
    names the mode that reads it.
    """
    groups = [
        ("options of both train and sample", _SHARED_FIELDS),
        ("options of sample (turn a search run's thetas into architectures)", _SAMPLE_FIELDS),
        ("options of train (the search)", None),
    ]
    train_only = tuple(
        name
        for name in SupernetConfig.__dataclass_fields__
        if name not in _SHARED_FIELDS + _SAMPLE_FIELDS
    )
    hidden = {"train": _SAMPLE_FIELDS, "sample": train_only}.get(mode or "", ())
    return groups, hidden


def refuse_unread_flags(cfg: SupernetConfig) -> None:
    """Raise ValueError naming the flags given that ``cfg``'s mode does not read: sample reads a
    search run, not its recipe, and train samples nothing. ``--preset`` and ``--config`` may hold
    both modes' fields."""
    hidden = help_layout(cfg.train_or_sample)[1]
    unread = [f"--{name}" for name in hidden if name in given_flags(cfg)]
    if unread:
        other = "train" if cfg.train_or_sample == "sample" else "sample"
        raise ValueError(
            f"--train_or_sample {cfg.train_or_sample} does not read {', '.join(unread)} "
            f"(options of {other}; --help lists this mode's)"
        )
