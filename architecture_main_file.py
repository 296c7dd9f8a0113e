"""Train a fixed FBNet architecture from scratch on CIFAR-10, an ImageFolder data set or synthetic data.

Usage::

    python architecture_main_file.py --architecture_name fbnet_a --data_dir ../shared/data/cifar10
    python architecture_main_file.py --architecture_name path/to/arch.json --epochs 3 --lr_schedule cosine
    python architecture_main_file.py --preset smoke                     # a few hundred synthetic images
    python architecture_main_file.py --resume runs/architectures_training/<run>/last.pth
    python architecture_main_file.py --eval_only --checkpoint runs/architectures_training/<run>/best.pth
    python architecture_main_file.py --help                              # every option and its default

Defaults follow the original CIFAR-10 reproduction (TRAINING_DETAILS.md). The run folder gets config.json,
log.txt, metrics.csv, tb/, last.pth and best.pth; the last line on stdout is a JSON summary.
"""

from __future__ import annotations

import sys

from architecture_functions.config_for_arch import PRESETS, ArchTrainConfig
from general_functions.config_utils import parse_config


def main(argv: list[str] | None = None) -> dict:
    from architecture_functions.training_functions import USER_ERRORS, run

    cfg = parse_config(ArchTrainConfig, argv, description=__doc__, presets=PRESETS)
    try:
        return run(cfg)
    except USER_ERRORS as err:  # bad data folder, checkpoint, architecture name...: no traceback
        sys.exit(f"error: {err.args[0] if err.args else err}")


if __name__ == "__main__":
    main(sys.argv[1:])
