"""Configuration of training a fixed architecture from scratch: one flat dataclass, every field a flag.

Defaults reproduce the original CIFAR-10 reproduction (github AnnaAraslanova/FBNet,
``architecture_functions/config_for_arch.py``): SGD lr 0.1, momentum 0.9, weight decay 4e-5, batch 1000,
MultiStepLR at epochs 90 and 110 with gamma 0.1 over 140 epochs, random crop (padding 4) + horizontal
flip, its normalisation (std 0.2023, 0.1994, 0.2010). The network is built as the original built its
retrained networks, initialised as it ran on PyTorch 1.0/1.1: a plain 1x1 head conv with bias, 1504 wide,
dropout 0.2, bare depthwise convs, Kaiming-uniform (fan-in) convs and BN scales drawn from U(0, 1).
With BN scales of 1 (PyTorch since 1.2) the same recipe diverges in its first epoch; TRAINING_DETAILS.md
("Retraining on CIFAR-10") has the ablation and the mechanism. Each departure is a named option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from general_functions import run_options
from general_functions.config_utils import opt

__all__ = ["EXPORT_FORMATS", "ArchTrainConfig", "ExportConfig", "PRESETS"]

ORIGINAL = "original reproduction"


@dataclass
class ArchTrainConfig:
    # model
    architecture_name: str = opt(
        "fbnet_a",
        "built-in name (fbnet_a, fbnet_b, ...), a saved name in the architecture registry folder, "
        "or a path to an architecture JSON file (what the search saves)",
    )
    search_space: str = opt(
        "",
        "macro skeleton to build the ops in: empty = the architecture's own ('fbnet' for the named "
        "ones: the ImageNet strides on 32x32 inputs, as the original reproduction did); "
        "'fbnet_cifar' keeps more resolution for 32x32 inputs",
        ORIGINAL,
    )
    dropout: float = opt(0.2, "dropout before the classifier", ORIGINAL)
    head_channels: int = opt(
        1504,
        "width of the 1x1 head conv: 1504 for every network as the original reproduction; 0 = the "
        "architecture's own (the authors': FBNet-A 1504, FBNet-B/C 1984)",
        ORIGINAL,
    )
    head: str = opt(
        "conv_bias",
        "head after the last block: conv_bn_relu (1x1 conv + BN + ReLU, paper Table 1), conv_bn (no "
        "ReLU) or conv_bias (a plain 1x1 conv with bias, the original reproduction's)",
        choices=("conv_bn_relu", "conv_bn", "conv_bias"),
        source=ORIGINAL,
    )
    dw_bn_relu: bool = opt(
        False,
        "BN + ReLU after each depthwise conv (paper Fig. 3); False: a bare depthwise conv, as the "
        "original reproduction's retrained networks",
        ORIGINAL,
    )
    init: str = opt(
        "original",
        "conv initialisation: fan_out (Kaiming-normal, fan out: MobileNetV2/torchvision) or original "
        "(Kaiming-uniform, fan in: the original reproduction's weights_init)",
        choices=("fan_out", "original"),
        source=ORIGINAL,
    )
    bn_init: str = opt(
        "uniform",
        "BN scale initialisation: ones (PyTorch since 1.2) or uniform (U(0, 1): the default of the "
        "PyTorch up to 1.1 the original reproduction ran on, which its weights_init kept)",
        choices=("ones", "uniform"),
        source=ORIGINAL,
    )
    normalization: str = opt(
        "original",
        "input normalisation: dataset (the data set's own per-channel mean and std) or original "
        "(for CIFAR-10: its mean with std 0.2023, 0.1994, 0.2010, as the original reproduction; "
        "other data sets keep their own)",
        choices=("dataset", "original"),
        source=ORIGINAL,
    )
    # data
    dataset: str = opt("cifar10", "data set", ORIGINAL, choices=("cifar10", "imagefolder", "fake"))
    data_dir: str = opt(
        "./cifar10_data",
        "folder holding cifar-10-batches-py/ (and optionally test_pixel_exact_mask.npy: README), "
        "or an ImageFolder root with train/ and val/ (or test/)",
        ORIGINAL,
    )
    download: bool = run_options.download()
    input_size: int = opt(0, "ImageFolder crop size (0 = 224); CIFAR-10 and fake data are 32x32")
    train_limit: int = run_options.train_limit()
    test_limit: int = opt(0, "evaluate on the first this-many test images (0 = all)")
    fake_train_size: int = run_options.fake_train_size()
    fake_test_size: int = opt(256, "test images of the synthetic data set")
    loader: str = run_options.loader()
    workers: int = run_options.workers()
    # optimisation
    epochs: int = opt(140, "training epochs", ORIGINAL)
    batch_size: int = opt(1000, "training batch size", ORIGINAL)
    eval_batch_size: int = opt(0, "evaluation batch size (0 = batch_size)")
    lr: float = opt(0.1, "SGD learning rate", ORIGINAL)
    momentum: float = opt(0.9, "SGD momentum", ORIGINAL)
    weight_decay: float = opt(4e-5, "SGD weight decay", ORIGINAL)
    nesterov: bool = opt(False, "Nesterov momentum", ORIGINAL)
    lr_schedule: str = opt(
        "multistep",
        "learning-rate schedule, stepped once per epoch",
        ORIGINAL,
        choices=("multistep", "cosine", "constant"),
    )
    milestones: list[int] = opt([90, 110], "MultiStepLR epochs", ORIGINAL)
    gamma: float = opt(0.1, "MultiStepLR factor", ORIGINAL)
    min_lr: float = opt(0.0, "cosine schedule's final learning rate")
    lr_warmup_epochs: int = opt(
        0,
        "linear learning-rate warm-up, per step, over the first this-many epochs (0 = none, as the "
        "original)",
    )
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    max_steps_per_epoch: int = run_options.max_steps_per_epoch()
    stop_after_epoch: int = run_options.stop_after_epoch()
    # device
    device: str = run_options.device()
    amp: bool = run_options.amp()
    channels_last: str = opt(
        "auto",
        "channels_last memory format for the model and batches; auto = on (FBNet-A CPU steps 1.35x "
        "faster untrimmed, ~1% with --trim_kernels, docs/performance.md; not measured on CUDA)",
        choices=("auto", "on", "off"),
    )
    trim_kernels: bool = opt(
        True,
        "compute depthwise convolutions whose kernel overhangs a small map with only the taps that "
        "touch it (exact; 2.7x faster FBNet-A steps on 32x32 CPU inputs, docs/performance.md)",
    )
    threads: int = run_options.threads()
    sync_bn: bool = run_options.sync_bn()
    dist_timeout_min: float = run_options.dist_timeout_min()
    seed: int = opt(0, "seed of the model's initialisation, shuffling and augmentation")
    deterministic: bool = run_options.deterministic()
    # run
    log_dir: str = opt("runs/architectures_training", "folder of run folders")
    run_name: str = opt("", "run folder name (empty = time-stamped)")
    resume: str = run_options.resume()
    overwrite: bool = run_options.overwrite()
    checkpoint: str = opt("", "checkpoint to evaluate with --eval_only")
    eval_only: bool = opt(False, "only evaluate the --checkpoint (or --resume) weights")
    progress: bool = run_options.progress()

    # old flag names, kept for one release (one warning line each; old checkpoints read silently)
    DEPRECATED_NAMES: ClassVar[dict[str, str]] = {"run_dir": "log_dir"}
    # checked by config_utils
    BOUNDS: ClassVar[dict[str, str]] = {
        **run_options.BOUNDS,
        "dropout": "[0, 1)",
        "input_size": "[0, inf)",
        "test_limit": "[0, inf)",
        "fake_test_size": "[1, inf)",
        "epochs": "[1, inf)",
        "batch_size": "[1, inf)",
        "eval_batch_size": "[0, inf)",
        "lr": "[0, inf)",
        "momentum": "[0, 1)",
        "weight_decay": "[0, inf)",
        "gamma": "(0, inf)",
        "min_lr": "[0, inf)",
        "lr_warmup_epochs": "[0, inf)",
        "label_smoothing": "[0, 1)",
    }


PRESETS = {
    # A few hundred images, one epoch: 8-13 s on 2 CPU cores. Add --dataset cifar10 for real images.
    "smoke": {
        "dataset": "fake",
        "epochs": 1,
        "batch_size": 64,
        "train_limit": 512,
        "test_limit": 256,
        "workers": 0,
    },
}


EXPORT_FORMATS = ("torchscript", "exported_program", "onnx")


@dataclass
class ExportConfig:
    """``--export CHECKPOINT``: the trained network as a deployable file (architecture_functions.export)."""

    export: str = opt("", "training checkpoint to export (best.pth or last.pth of a training run)")
    format: str = opt(
        "exported_program",
        "file format: exported_program (torch.export, saved with torch.export.save), torchscript "
        "(torch.jit.trace; deprecated by torch 2.14) or onnx (needs requirements-export.txt)",
        choices=EXPORT_FORMATS,
    )
    out: str = opt("", "file to write; refused when it exists. Its report goes to OUT.json")
    quantize: str = opt(
        "none",
        "int8: static post-training quantisation (FX graph mode, x86 backend) calibrated on "
        "--calibration_images training images, with its test top-1 and latency against fp32",
        choices=("none", "int8"),
    )
    channels_last: bool = opt(
        True,
        "store the conv weights channels_last: the torch formats then run in that layout "
        "(FBNet-A at batch 1 on this project's CPU: 1.5-2x faster, docs/export.md); ONNX files "
        "hold NCHW weights either way",
    )
    int8_fp32_last: int = opt(
        0,
        "with --quantize int8: keep the last this-many searched blocks, the head and the classifier "
        "in float32 (0 = all int8; docs/export.md has a network that needs it)",
    )
    lut_path: str = opt(
        "",
        "latency table whose prediction is printed next to the measured latency (empty = the "
        "committed table of the checkpoint's search space and input size, when there is one)",
    )
    data_dir: str = opt("", "data folder of the check and calibration images (empty = the run's)")
    check_images: int = opt(64, "test images whose outputs must equal the checkpoint's (1e-4)")
    calibration_images: int = opt(512, "training images of the int8 calibration pass")
    threads: int = opt(0, "CPU threads for timing (0 = the latency table's; 1 without a table)")
    rounds: int = opt(30, "interleaved timing rounds; the latency is the median over rounds")
    progress: bool = run_options.progress()

    BOUNDS: ClassVar[dict[str, str]] = {
        "check_images": "[1, inf)",
        "calibration_images": "[1, inf)",
        "int8_fp32_last": "[0, inf)",
        "threads": "[0, inf)",
        "rounds": "[1, inf)",
    }
