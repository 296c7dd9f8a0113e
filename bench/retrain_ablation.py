"""Retraining ablation: one factor at a time, each a plain run of ``architecture_main_file.py``.

Usage:
    python bench/retrain_ablation.py --arch fbnet_b --seed 0 --epochs 3 \
        --data_dir ../shared/data/cifar10 --out SAVED_LOGS/architectures_training/ablation_fbnet_b
    python bench/retrain_ablation.py --out SAVED_LOGS/architectures_training/ablation_fbnet_b --table

Each variant is the baseline :data:`AUTHORS` (the authors' structure, initialised as PyTorch does today)
plus the flags in :data:`VARIANTS` (later flags win); its run folder is ``OUT/<variant>``.
Variants run one after another (never two at once: they would share two cores). A finished variant
is skipped and a stopped one is resumed from its ``last.pth``, so the script can be killed and started
again. ``--table`` only prints the Markdown table of what has finished: epoch-1 training loss and test
top-1 after each epoch, read from every run's ``metrics.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _retrain import metrics_rows, train  # noqa: E402

# The baseline every variant starts from: the authors' structure (paper Fig. 3 and Table 1) initialised
# as PyTorch does today. The trainer's own defaults are the original reproduction as it ran.
AUTHORS = [
    "--head", "conv_bn_relu", "--head_channels", "0", "--dw_bn_relu", "True", "--init", "fan_out",
    "--bn_init", "ones", "--dropout", "0", "--normalization", "dataset",
]  # fmt: skip

# name -> (flags added to the baseline, what it changes)
# the original reproduction's network as it ran (the trainer's defaults today)
ORIGINAL_AS_RAN = [
    "--head", "conv_bias", "--head_channels", "1504", "--init", "original", "--dw_bn_relu", "False",
    "--dropout", "0.2", "--normalization", "original", "--bn_init", "uniform",
]  # fmt: skip

VARIANTS: dict[str, tuple[list[str], str]] = {
    "as_built": ([], "the authors' structure: head conv+BN+ReLU of the architecture's width, "
                 "BN+ReLU after the depthwise conv, fan-out init, no dropout"),
    "head_1504": (["--head_channels", "1504"], "head 1504 wide (the original's width)"),
    "head_1984": (["--head_channels", "1984"], "head 1984 wide (the authors' FBNet-B/C width)"),
    "head_conv_bias": (["--head", "conv_bias"], "plain 1x1 conv with bias as the head (original)"),
    "head_no_relu": (["--head", "conv_bn"], "head 1x1 conv + BN, no ReLU"),
    "init_original": (["--init", "original"], "Kaiming-uniform fan-in init (original)"),
    "dw_plain": (["--dw_bn_relu", "False"], "no BN/ReLU after the depthwise conv (original)"),
    "dropout_0.2": (["--dropout", "0.2"], "dropout 0.2 before the classifier (original)"),
    "norm_original": (["--normalization", "original"], "std 0.2023/0.1994/0.2010 (original)"),
    "lr_0.05": (["--lr", "0.05"], "learning rate 0.05 instead of 0.1 (the mechanism's check)"),
    # second round: one factor at a time on top of the plain-conv head, which trains stably
    "cb_head_1504": (["--head", "conv_bias", "--head_channels", "1504"], "plain head, 1504 wide"),
    "cb_init_original": (["--head", "conv_bias", "--init", "original"], "plain head + original init"),
    "cb_dw_plain": (["--head", "conv_bias", "--dw_bn_relu", "False"], "plain head + bare depthwise"),
    "cb_dropout_0.2": (["--head", "conv_bias", "--dropout", "0.2"], "plain head + dropout 0.2"),
    "cb_norm_original": (
        ["--head", "conv_bias", "--normalization", "original"],
        "plain head + the original's std",
    ),
    "bn_uniform": (["--bn_init", "uniform"], "BN scales U(0, 1) (PyTorch <= 1.1, original)"),
    "cb_bn_uniform": (["--head", "conv_bias", "--bn_init", "uniform"], "plain head + BN scales U(0, 1)"),
    "original_all_bn_uniform": (
        ORIGINAL_AS_RAN,
        "the original reproduction as it ran: all of the above and BN scales U(0, 1)",
    ),
    "original_paper_block": (
        [*ORIGINAL_AS_RAN, "--dw_bn_relu", "True"],
        "the original as it ran, with BN + ReLU after the depthwise conv (paper block)",
    ),
    "original_authors_head": (
        [*ORIGINAL_AS_RAN, "--head", "conv_bn_relu", "--head_channels", "1984"],
        "the original as it ran, with the authors' head (1x1 conv 1984 + BN + ReLU)",
    ),
    "no_fast_paths": (
        ["--trim_kernels", "False", "--channels_last", "off"],
        "full depthwise kernels, NCHW layout",
    ),
    "original_all": (
        [
            "--head", "conv_bias", "--head_channels", "1504", "--init", "original",
            "--dw_bn_relu", "False", "--dropout", "0.2", "--normalization", "original",
        ],
        "every difference above set as the original reproduction",
    ),
}  # fmt: skip


def table(out: Path, names: list[str]) -> str:
    lines = [
        "| variant | change | epoch-1 train loss | test top-1 after epochs 1 / 2 / 3 (%) |",
        "|---|---|---|---|",
    ]
    for name in names:
        rows = metrics_rows(out / name)
        if not rows:
            continue
        top1 = " / ".join(f"{float(r['test/top1']):.1f}" for r in rows)
        loss = float(rows[0]["train/loss"])
        lines.append(f"| `{name}` | {VARIANTS[name][1]} | {loss:.2f} | {top1} |")
    return "\n".join(lines)


def run_variant(args: argparse.Namespace, name: str) -> None:
    run = args.out / name
    if (run / "summary.json").is_file():
        print(f"{name}: done", flush=True)
        return
    new = [
        "--architecture_name", args.arch, "--dataset", "cifar10", "--data_dir", args.data_dir,
        "--epochs", str(args.epochs), "--seed", str(args.seed), *AUTHORS, *VARIANTS[name][0],
    ]  # fmt: skip
    summary = train(run, new)
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--arch", default="fbnet_b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data_dir", default="../shared/data/cifar10")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder of the variants' run folders"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--table", action="store_true", help="only print the table of finished runs"
    )
    args = parser.parse_args()
    if not args.table:
        for name in args.variants:
            run_variant(args, name)
    print(table(args.out, args.variants))


if __name__ == "__main__":
    main()
