"""FBNet supernet search, sampling and latency tables (Wu et al., CVPR 2019).

Usage:
    python supernet_main_file.py --train_or_sample train --preset smoke      # minutes, CPU, fake data
    python supernet_main_file.py --train_or_sample train --data_dir DIR --lut_path luts/TABLE.json
    python supernet_main_file.py --train_or_sample sample --architecture_name my_net \
        --hardsampling_bool_value True                  # argmax of the latest run's thetas
    python supernet_main_file.py --train_or_sample sample --architecture_name d --hardsampling_bool_value False --num_samples 3
    python supernet_main_file.py --train_or_sample build_lut --help     # measure a latency table
Then `python architecture_main_file.py --architecture_name my_net`. Defaults: the original CIFAR-10 run.
"""

import argparse
import json
import sys

from general_functions.config_utils import parse_config
from supernet_functions.config_for_supernet import PRESETS, SupernetConfig


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--train_or_sample", default="train")
    if pre.parse_known_args(argv)[0].train_or_sample in ("build_lut", "validate_lut"):
        from supernet_functions import lut_cli  # the latency-table tool reads the full argv

        return lut_cli.main(argv)
    cfg = parse_config(SupernetConfig, argv, __doc__, PRESETS)
    from supernet_functions import sampling, training_functions_supernet

    if cfg.train_or_sample == "train":
        return training_functions_supernet.run(cfg)
    for record in sampling.run_sampling(cfg):
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
