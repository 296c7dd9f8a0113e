"""FBNet supernet search, sampling and latency tables (Wu et al., CVPR 2019). Usage:
    python supernet_main_file.py --train_or_sample train --preset smoke      # 13 s on 2 CPU cores, fake data
    python supernet_main_file.py --train_or_sample train --preset cpu_cifar10 --data_dir DIR  # 18-40 min, 2 cores
    python supernet_main_file.py --train_or_sample train --data_dir DIR --lut_path luts/TABLE.json  # 180 epochs
    python supernet_main_file.py --train_or_sample sample --architecture_name my_net  # argmax, latest run
    python supernet_main_file.py --train_or_sample sample --architecture_name d --hardsampling_bool_value False --num_samples 3
    python supernet_main_file.py --train_or_sample build_lut --help      # measure a latency table
Then `python architecture_main_file.py --architecture_name my_net`. Defaults: the original CIFAR-10 run.
`--train_or_sample MODE --help` lists the options of MODE (train, sample, build_lut, validate_lut).
"""

import argparse
import json
import sys

from general_functions.config_utils import parse_config
from general_functions.distributed import env_rank
from general_functions.interrupts import Interrupted
from supernet_functions.config_for_supernet import (
    LUT_MODES,
    PRESETS,
    SupernetConfig,
    help_layout,
    refuse_unread_flags,
)


def _mode(argv: list[str] | None) -> str | None:
    """The ``--train_or_sample`` of ``argv`` (None when absent; parse_config checks its value)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--train_or_sample", default=None)
    return pre.parse_known_args(argv)[0].train_or_sample


def main(argv: list[str] | None = None):  # None: sys.argv[1:]
    mode = _mode(argv)
    if mode not in (None, "train") and env_rank() != 0:
        return None  # sampling and tables are one process's work: under torchrun rank 0 does it
    from general_functions.run_folder import USER_ERRORS
    from supernet_functions.training_functions_supernet import run

    try:  # a bad table, name, checkpoint, device or data folder: one clear line, no traceback
        if mode in LUT_MODES:
            from supernet_functions.latency import cli as lut_cli

            return lut_cli.main(argv)  # the latency-table tool reads the full argv
        groups, hidden = help_layout(mode)
        cfg = parse_config(SupernetConfig, argv, __doc__, PRESETS, groups, hidden)
        refuse_unread_flags(cfg)
        if cfg.train_or_sample == "train":
            return run(cfg)
        from supernet_functions.sampling import run_sampling

        for record in run_sampling(cfg):
            print(json.dumps(record), flush=True)
    except USER_ERRORS as err:
        sys.exit(f"error: {err.args[0] if err.args else err}")
    except Interrupted as err:  # Ctrl-C or SIGTERM: one line, the shell's exit status (130, 143)
        print(err.message, file=sys.stderr, flush=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
