"""Throughput of the two CIFAR-10 training input paths, in images per second.

- ``tensor``: the whole training set as uint8 on the device; random crop (padding 4), flip and
  normalisation done on whole batches there (``general_functions.dataloaders``, the fast path).
- ``torchvision``: a ``Dataset`` with torchvision v2 transforms per image in a ``DataLoader`` with worker
  processes, as the original reproduction fed its network.

Each repeat times ``--batches`` training batches of each path (alternating the two, so drifting machine load
hits both alike) after one warm-up batch. The last line on stdout is JSON with the median and range.

    flock /tmp/fbnet_heavy.lock python bench/bench_data.py --data_dir ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from general_functions.dataloaders import load_dataset, make_loader  # noqa: E402
from general_functions.utils import resolve_device  # noqa: E402


def images_per_second(loader, batches: int, device: torch.device, epoch: int) -> float:
    """Images per second over ``batches`` batches (after one warm-up batch, not timed)."""
    loader.set_epoch(epoch)
    it = iter(loader)
    next(it)
    n = 0
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data_dir", default="../shared/data/cifar10")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "fake"))
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (torchvision)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_dir, fake_sizes=(args.batch_size * 4, 16))
    needed = (args.batches + 1) * args.batch_size
    if len(data.train) < needed:
        parser.error(f"{needed} training images needed, the set has {len(data.train)}")
    loaders = {
        "tensor": make_loader(data.train, args.batch_size, True, device, "tensor"),
        "torchvision": make_loader(
            data.train, args.batch_size, True, device, "torchvision", workers=args.workers
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in loaders}
    for rep in range(args.repeats):
        for name, loader in loaders.items():
            ips = images_per_second(loader, args.batches, device, epoch=rep)
            results[name].append(ips)
            print(f"repeat {rep} {name:12s} {ips:10.0f} images/s", file=sys.stderr, flush=True)
    summary = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "images_per_repeat": args.batches * args.batch_size,
        "repeats": args.repeats,
        **{
            f"{name}_images_per_s": {
                "median": round(statistics.median(v)),
                "min": round(min(v)),
                "max": round(max(v)),
            }
            for name, v in results.items()
        },
    }
    summary["speedup_median"] = round(
        summary["tensor_images_per_s"]["median"] / summary["torchvision_images_per_s"]["median"], 1
    )
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
