"""The options every training entry point shares, declared once: device, run folder, data loading.

Each function returns one option's dataclass field (default, help, allowed values), so a config class
places the flag where its ``--help`` wants it and the option still has one default and one text::

    @dataclass
    class SupernetConfig:
        device: str = run_options.device()

``BOUNDS`` holds these options' bounds; a class merges them into its own (``{**run_options.BOUNDS, ...}``).
The search (:class:`~supernet_functions.config_for_supernet.SupernetConfig`) and the architecture trainer
(:class:`~architecture_functions.config_for_arch.ArchTrainConfig`) use all of them.
"""

from __future__ import annotations

from typing import Any

from .config_utils import opt

__all__ = ["BOUNDS", "SHARED"]

BOUNDS: dict[str, str] = {
    "threads": "[0, inf)",
    "dist_timeout_min": "(0, inf)",
    "stop_after_epoch": "[0, inf)",
    "max_steps_per_epoch": "[0, inf)",
    "workers": "[0, inf)",
    "fake_train_size": "[1, inf)",
    "train_limit": "[0, inf)",
}


# ---------------------------------------------------------------- device
def device() -> Any:
    return opt("auto", "auto, cpu or cuda", None, ("auto", "cpu", "cuda"))


def amp() -> Any:
    return opt(
        False,
        "bfloat16 autocast of the forward pass (no loss scaling; general_functions/precision.py); "
        "CUDA, or a CPU (slower there without bfloat16 instructions)",
    )


def threads() -> Any:
    return opt(0, "CPU intra-op threads (0: torch's default)")


def deterministic() -> Any:
    return opt(
        False,
        "deterministic algorithms: slower on CUDA, but a resumed run repeats the uninterrupted one",
    )


def dist_timeout_min() -> Any:
    return opt(
        10.0,
        "under torchrun: minutes a process waits for the others in a collective before the job "
        "fails (raise it when rank 0 works alone for longer: a latency table, a download)",
    )


def sync_bn() -> Any:
    return opt(
        False,
        "under torchrun on CUDA: SyncBatchNorm, i.e. batch-norm statistics over the global batch "
        "instead of each process's share (docs/multi_gpu.md)",
    )


# ---------------------------------------------------------------- run folder
def overwrite() -> Any:
    return opt(False, "start a new run in a --run_name folder that already holds one")


def resume() -> Any:
    return opt(
        "",
        "checkpoint (RUN/last.pth) to continue exactly where its run stopped, with the recipe it "
        "saved (--epochs may be raised; flags that contradict it are refused)",
    )


def stop_after_epoch() -> Any:
    return opt(
        0,
        "stop (as if interrupted) after this many epochs, keeping the schedule of --epochs; "
        "continue with --resume (0: run to the end)",
    )


def progress() -> Any:
    return opt(True, "tqdm progress bars")


# ---------------------------------------------------------------- data loading
def download() -> Any:
    return opt(False, "download CIFAR-10 into --data_dir when it is absent (checksums verified)")


def train_limit() -> Any:
    return opt(0, "train on a fixed random subset of this many training images (0: all)")


def fake_train_size() -> Any:
    return opt(512, "training images of the synthetic (fake) data set")


def max_steps_per_epoch() -> Any:
    return opt(0, "stop each phase after this many batches (0: all; for tests)")


def loader() -> Any:
    return opt(
        "tensor",
        "tensor: the whole set as uint8 on the device, crop and flip batched there; torchvision: "
        "Dataset + DataLoader with workers (the original's way; ImageFolder always)",
        None,
        ("tensor", "torchvision"),
    )


def workers() -> Any:
    return opt(2, "DataLoader worker processes (torchvision loader)")


SHARED = (
    "device",
    "threads",
    "deterministic",
    "dist_timeout_min",
    "sync_bn",
    "overwrite",
    "resume",
    "stop_after_epoch",
    "progress",
    "download",
    "train_limit",
    "fake_train_size",
    "max_steps_per_epoch",
    "loader",
    "workers",
)
