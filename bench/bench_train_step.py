"""Seconds per FBNet training step on 32x32 inputs: kernel trimming off/on x channels_last off/on.

One SGD step (forward, backward, update) of a batch of random images, the four variants alternated so that
drifting machine load hits all alike; each variant builds a fresh model and times its second step.
The last line on stdout is JSON with every time, and the median per variant.

    flock /tmp/fbnet_heavy.lock python bench/bench_train_step.py --arch fbnet_a --batch_size 1000
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

from fbnet_building_blocks.fbnet_builder import get_model  # noqa: E402
from fbnet_building_blocks.trim_kernels import trim_depthwise_convs  # noqa: E402


def step_seconds(
    arch: str, space: str | None, batch: int, trim: bool, channels_last: bool
) -> float:
    torch.manual_seed(0)
    model = get_model(arch, cnt_classes=10, search_space=space, input_size=32)
    if trim:
        trim_depthwise_convs(model)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--arch", default="fbnet_a")
    parser.add_argument("--search_space", default=None, help="default: the architecture's own")
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {
        "default_layout": (False, False),
        "trim": (True, False),
        "trim_channels_last": (True, True),
        "channels_last": (False, True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.repeats):
        for name, (trim, cl) in variants.items():
            s = step_seconds(args.arch, args.search_space, args.batch_size, trim, cl)
            times[name].append(round(s, 3))
            print(f"repeat {rep} {name:20s} {s:7.3f} s", file=sys.stderr, flush=True)
    summary = {
        "arch": args.arch,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds_per_step": times,
        "median_s": {name: statistics.median(v) for name, v in times.items()},
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
