"""Architecture throughput: FBNet-A/B/C training and inference, plain model against the trainer's.

Usage:
    flock /tmp/fbnet_heavy.lock python bench/bench_arch.py
    python bench/bench_arch.py --archs fbnet_a --rounds 2 --tasks train_32 infer_32

Variants (same weights, built from the same seed):
    plain    ``get_model(...)`` in the default (NCHW) layout with full depthwise kernels: the
             straightforward model, as the original reproduction ran it
    trainer  the model as ``architecture_functions.training_functions.build_model`` builds it with the
             default configuration (channels_last, trimmed depthwise kernels)

Tasks:
    train_32     SGD training step, batch 128 (``--batch_size``), 32x32, 10 classes
    infer_32     evaluation forward pass (eval mode, no grad), batch 128, 32x32, 10 classes
    infer_224_b1 evaluation forward pass, batch 1, 224x224, 1000 classes (the paper's setting)

The 32x32 tasks use the architectures' own search space (``fbnet``: ImageNet strides, as the original
reproduction trained them on CIFAR-10) unless ``--search_space`` says otherwise. Variants alternate
within each round; the script reports images/s (median and range), the per-round ratio to ``plain``
and the peak tensor memory of one step. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a loaded 2-core machine
# spinning threads starve the busy one and small ops become up to ~100x slower (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from architecture_functions.config_for_arch import ArchTrainConfig  # noqa: E402
from architecture_functions.training_functions import build_model  # noqa: E402
from bench._common import (  # noqa: E402
    environment,
    paired_ratios,
    peak_memory_mb,
    print_json,
    summarise,
    tensor_bytes,
    time_rounds,
)
from fbnet_building_blocks.arch_specs import load_arch  # noqa: E402
from fbnet_building_blocks.fbnet_builder import get_model  # noqa: E402
from general_functions.utils import resolve_device  # noqa: E402

TASKS = {
    # name: (input side, classes, training?)
    "train_32": (32, 10, True),
    "infer_32": (32, 10, False),
    "infer_224_b1": (224, 1000, False),
}
VARIANTS = ("plain", "trainer")


def build(variant: str, arch: str, task: str, args, device: torch.device) -> nn.Module:
    size, classes, _ = TASKS[task]
    space = args.search_space or None
    torch.manual_seed(args.seed)
    if variant == "plain":
        return get_model(arch, cnt_classes=classes, search_space=space, input_size=size).to(device)
    cfg = ArchTrainConfig(
        architecture_name=arch, search_space=args.search_space, device=str(device)
    )
    return build_model(cfg, load_arch(arch), classes, size, device)


def make_step(model: nn.Module, task: str, x: torch.Tensor, y: torch.Tensor):
    """``(step() -> images, optimizer or None)``."""
    _, _, training = TASKS[task]
    channels_last = next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    n = x.shape[0]
    if training:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=4e-5)
        criterion = nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            criterion(model(x), y).backward()
            opt.step()
            return n

        return step, opt
    model.eval()

    def infer():
        with torch.no_grad():
            model(x)
        return n

    return infer, None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--archs", nargs="+", default=["fbnet_a", "fbnet_b", "fbnet_c"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch_size", type=int, default=128, help="batch of the 32x32 tasks")
    parser.add_argument(
        "--search_space", default="", help="space of the 32x32 tasks (empty: the architecture's)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min_time", type=float, default=1.0, help="seconds per variant and round")
    parser.add_argument("--no_memory", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variants = list(dict.fromkeys(args.variants))
    baseline = "plain" if "plain" in variants else variants[0]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    result = {"bench": "arch", "baseline": baseline, "env": environment(device), "results": {}}
    gen = torch.Generator().manual_seed(args.seed)
    for arch in args.archs:
        for task in args.tasks:
            size, classes, _ = TASKS[task]
            batch = 1 if task.endswith("_b1") else args.batch_size
            x = torch.randn(batch, 3, size, size, generator=gen).to(device)
            y = torch.randint(0, classes, (batch,), generator=gen).to(device)
            fns, memory = {}, {}
            for name in variants:
                model = build(name, arch, task, args, device)
                step, opt = make_step(model, task, x, y)
                step()  # warm-up
                if not args.no_memory:
                    static = tensor_bytes(model, x, y, *([opt] if opt else []))
                    memory[name] = round(peak_memory_mb(step, device, static), 1)
                fns[name] = step
            log(f"{arch} {task} (batch {batch})")
            rates = time_rounds(fns, args.rounds, args.min_time, device, log)
            entry = {"batch": batch}
            for name in variants:
                entry[name] = {"images_per_s": summarise(rates[name])}
                if name != baseline:
                    entry[name]["speedup_vs_" + baseline] = paired_ratios(
                        rates[name], rates[baseline]
                    )
                if memory:
                    entry[name]["peak_memory_mb"] = memory[name]
                s = entry[name]["images_per_s"]
                ratio = entry[name].get("speedup_vs_" + baseline, {}).get("median")
                log(
                    f"{arch:<8} {task:<13} {name:<8} {s['median']:9.1f} img/s "
                    f"[{s['min']:.1f}..{s['max']:.1f}]"
                    + (f"  x{ratio:.2f}" if ratio else "")
                    + (f"  peak {memory[name]:.0f} MB" if memory else "")
                )
            result["results"].setdefault(arch, {})[task] = entry
            del fns
    result["env"]["load_avg_1min_end"] = environment(device).get("load_avg_1min")
    print_json(result)
    return result


if __name__ == "__main__":
    main()
