"""Train a fixed FBNet architecture from scratch on CIFAR-10, an ImageFolder data set or synthetic data.

Usage::

    python architecture_main_file.py --architecture_name fbnet_a --data_dir /path/to/cifar10
    python architecture_main_file.py --architecture_name path/to/arch.json --epochs 3 --lr_schedule cosine
    python architecture_main_file.py --preset smoke                     # a few hundred synthetic images, 8-13 s
    python architecture_main_file.py --resume runs/architectures_training/<run>/last.pth
    python architecture_main_file.py --eval_only --checkpoint runs/architectures_training/<run>/best.pth
    python architecture_main_file.py --export runs/architectures_training/<run>/best.pth \\
        --format exported_program --out net.pt2            # a deployable file, checked and timed
    python architecture_main_file.py --help                              # every option and its default
    python architecture_main_file.py --export X --help                   # the export's options

Defaults follow the original CIFAR-10 reproduction (TRAINING_DETAILS.md). The run folder gets config.json,
log.txt, metrics.csv, curves.png, tb/, last.pth and best.pth; the last line on stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import sys

from architecture_functions.config_for_arch import PRESETS, ArchTrainConfig, ExportConfig
from general_functions.config_utils import parse_config
from general_functions.interrupts import Interrupted


def _exporting(argv: list[str] | None) -> bool:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--export", default=None)
    return pre.parse_known_args(argv)[0].export is not None


def main(argv: list[str] | None = None) -> dict:
    from architecture_functions.training_functions import run
    from general_functions.run_folder import USER_ERRORS

    try:  # bad data folder, checkpoint, architecture name, output file...: one line, no traceback
        if _exporting(argv):
            from architecture_functions.export import ExportError, run_export

            cfg = parse_config(ExportConfig, argv, description=__doc__)
            try:
                return run_export(cfg)
            except ExportError as err:
                sys.exit(f"error: {err}")
        cfg = parse_config(ArchTrainConfig, argv, description=__doc__, presets=PRESETS)
        return run(cfg)
    except USER_ERRORS as err:
        sys.exit(f"error: {err.args[0] if err.args else err}")
    except Interrupted as err:  # Ctrl-C or SIGTERM: one line, the shell's exit status (130, 143)
        print(err.message, file=sys.stderr, flush=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main(sys.argv[1:])
