"""The README's retraining table: FBNet-A/B/C with the default recipe, several seeds, first epochs.

Usage:
    python bench/retrain_seeds.py --data_dir ../shared/data/cifar10 \
        --out SAVED_LOGS/architectures_training --archs fbnet_a fbnet_b fbnet_c --seeds 0 1 2 --epochs 3
    python bench/retrain_seeds.py --out SAVED_LOGS/architectures_training --archs fbnet_a --seeds 0 \
        --epochs 10                      # continue seed 0 of FBNet-A to epoch 10
    python bench/retrain_seeds.py --out SAVED_LOGS/architectures_training --table

Every run is ``architecture_main_file.py`` with its defaults (the 140-epoch schedule) stopped after
``--epochs`` epochs (``--stop_after_epoch``), in ``OUT/<arch>_seed<k>``; a run that has not reached
``--epochs`` is resumed from its ``last.pth``, one that has is skipped. Runs go one after another.
``--table`` prints, per architecture and epoch, the median test top-1 over the seeds with its range,
beside the original reproduction's own log (:data:`ORIGINAL`), and the largest epoch-1 training loss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _retrain import metrics_rows, train  # noqa: E402

# Test top-1 (%) after epochs 1, 2, 3 in the original reproduction's own logs (batch 1000, SGD lr 0.1).
ORIGINAL = {
    "fbnet_a": (30.6, 43.4, 44.7),
    "fbnet_b": (30.9, 39.0, 45.4),
    "fbnet_c": (32.4, 39.6, 45.8),
}


def run_one(args: argparse.Namespace, arch: str, seed: int) -> None:
    run = args.out / f"{arch}_seed{seed}"
    done = len(metrics_rows(run))
    if done >= args.epochs:
        print(f"{run.name}: {done} epochs, done", flush=True)
        return
    new = ["--architecture_name", arch, "--dataset", "cifar10", "--data_dir", args.data_dir]
    train(run, [*new, "--seed", str(seed)], ["--stop_after_epoch", str(args.epochs)])


def table(args: argparse.Namespace) -> str:
    lines = [
        "| model | epoch | this code: median test top-1 (range), seeds | original reproduction |",
        "|---|---|---|---|",
    ]
    for arch in args.archs:
        runs = [metrics_rows(args.out / f"{arch}_seed{s}") for s in args.seeds]
        runs = [r for r in runs if r]
        if not runs:
            continue
        for epoch in range(1, max(len(r) for r in runs) + 1):
            top1 = [float(r[epoch - 1]["test/top1"]) for r in runs if len(r) >= epoch]
            spread = f"{statistics.median(top1):.1f} ({min(top1):.1f}-{max(top1):.1f}), {len(top1)}"
            orig = ORIGINAL.get(arch, ())
            ref = f"{orig[epoch - 1]:.1f}" if epoch <= len(orig) else ""
            lines.append(f"| {arch} | {epoch} | {spread} | {ref} |")
        worst = max(float(r[0]["train/loss"]) for r in runs)
        lines.append(f"| {arch} | epoch-1 train loss, largest | {worst:.3f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--archs", nargs="+", default=list(ORIGINAL))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="stop every run after this epoch")
    parser.add_argument("--data_dir", default="../shared/data/cifar10")
    parser.add_argument("--out", type=Path, required=True, help="folder of the run folders")
    parser.add_argument("--table", action="store_true", help="only print the table")
    args = parser.parse_args()
    if not args.table:
        for arch in args.archs:
            for seed in args.seeds:
                run_one(args, arch, seed)
    print(table(args))


if __name__ == "__main__":
    main()
