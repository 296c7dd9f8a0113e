"""Supernet training-step throughput: the plain reference against the fast supernet, side by side.

Usage:
    flock /tmp/fbnet_heavy.lock python bench/bench_supernet.py                 # batch 32 and 128, 32x32
    python bench/bench_supernet.py --batch_sizes 32 --rounds 3 --variants reference fast
    python bench/bench_supernet.py --variants reference reference_cl frozen frozen_cl fast hard

Variants (each builds the same supernet from the same seed, so all share the same weights):
    reference     ReferenceSuperNet: every op in a Python loop, sum of m * op(x), NCHW, every gradient
                  computed in both steps (the original reproduction's way)
    reference_cl  the reference in channels_last (still every gradient)
    frozen        the search's step on StochasticSuperNet in NCHW, full kernels (idle set frozen)
    frozen_cl     ... plus channels_last
    fast_conv1x1  frozen idle set, channels_last, trimmed depthwise kernels with direct weight
                  gradients on tiny maps, 1x1 convolutions left to the library's convolution
    fast_separate ``fast_conv1x1`` with the 1x1 convolutions as matrix products on a CPU
                  (``PointwiseConv2d``), every candidate op run on its own, activations kept
    fast_keep     ``fast_separate`` with each layer's inverted-residual candidates merged on
                  at most 2048 rows, 4x4 outputs at batch 128 (``--fuse_ops``, ``fused_candidates.py``)
    fast          the search's default path (``train_weights_epoch`` / ``train_thetas_epoch`` on a
                  supernet made by ``prepare_supernet``): ``fast_keep`` whose weight steps compute
                  the outputs of BN + ReLU and of the expansion convolutions again in the backward
                  pass (``--recompute``, ``recompute.py``)
    hard          ``fast`` with ``mixing="hard_gumbel"`` (straight-through; only the sampled op runs)

For every batch size it times a weight step (SGD on the weights, thetas frozen) and a theta step (Adam
on the thetas, weights frozen) of every variant, alternating the variants within each round, and
reports images/s (median and range over the rounds), the per-round ratio to ``reference``, and the peak
tensor memory of one step. The last stdout line is one JSON object with all of it.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    environment,
    paired_ratios,
    peak_memory_mb,
    print_json,
    summarise,
    tensor_bytes,
    time_rounds,
)
from general_functions.utils import resolve_device  # noqa: E402
from supernet_functions.loss import SupernetLoss  # noqa: E402
from supernet_functions.model_supernet import MIXING_MODES, StochasticSuperNet  # noqa: E402
from supernet_functions.reference_supernet import (  # noqa: E402
    ReferenceSuperNet,
    reference_train_step,
)
from supernet_functions.speed import prepare_supernet  # noqa: E402
from supernet_functions.training_functions_supernet import (  # noqa: E402
    train_thetas_epoch,
    train_weights_epoch,
)

VARIANTS = (
    "reference",
    "reference_cl",
    "frozen",
    "frozen_cl",
    "fast_conv1x1",
    "fast_separate",
    "fast_keep",
    "fast",
    "hard",
)
STEPS = ("weights", "thetas")
# A latency-like cost per op so the loss has its latency term (any positive table works for timing).
_COST_MS = 0.05


class _Table:
    """A stand-in cost table: every op of every layer costs the same (enough for timing)."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers

    def latency_vector(self, layer: int, ops) -> torch.Tensor:
        return torch.full((len(ops),), _COST_MS)


def build_variant(name: str, args, device: torch.device):
    """``(model, {"weights": step_fn, "thetas": step_fn})`` of one variant; step_fn(x, y) -> None."""
    torch.manual_seed(args.seed)
    from fbnet_building_blocks.search_space import get_search_space

    table = _Table(get_search_space(args.search_space).num_layers)
    criterion = SupernetLoss()
    if name.startswith("reference"):
        model = ReferenceSuperNet(args.search_space, table, 10, args.input_size).to(device)
        if name == "reference_cl":
            model.to(memory_format=torch.channels_last)
    else:
        mixing = "hard_gumbel" if name == "hard" else "gumbel"
        if mixing not in MIXING_MODES:
            raise SystemExit(f"variant {name!r} needs mixing={mixing!r}, which this supernet lacks")
        model = StochasticSuperNet(args.search_space, table, 10, args.input_size, mixing=mixing)
        prepare_supernet(
            model,
            device,
            channels_last=name != "frozen",
            trim_kernels=name in ("fast_conv1x1", "fast_separate", "fast_keep", "fast", "hard"),
            pointwise_gemm=name in ("fast_separate", "fast_keep", "fast", "hard"),
            recompute=name in ("fast", "hard"),
            fuse_ops=name in ("fast_keep", "fast", "hard"),
        )
    model.train()
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    t_opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3, weight_decay=5e-4)
    temperature = 5.0

    if name.startswith("reference"):
        cl = name == "reference_cl"

        def make(opt):
            def step(x, y):
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                reference_train_step(model, opt, criterion, x, y, temperature)

            return step

        return model, {"weights": make(w_opt), "thetas": make(t_opt)}, (w_opt, t_opt)

    def make(epoch_fn, opt):
        def step(x, y):  # what the search runs: one phase over a one-batch loader
            epoch_fn(model, [(x, y)], criterion, opt, temperature)

        return step

    steps = {"weights": make(train_weights_epoch, w_opt), "thetas": make(train_thetas_epoch, t_opt)}
    return model, steps, (w_opt, t_opt)


def _profile(name: str, kind: str, batch: int, step, rows: int, log) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    log(f"---- profile: {name}, {kind} step, batch {batch}")
    log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    log(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=rows, max_shapes_column_width=60
        )
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--search_space", default="fbnet", help="fbnet (the original's) | fbnet_cifar"
    )
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument(
        "--variants", nargs="+", default=["reference", "fast", "hard"], choices=VARIANTS
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per batch size")
    parser.add_argument(
        "--min_time", type=float, default=1.0, help="seconds per variant and round (>= 1 step)"
    )
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="print the N most expensive ops (torch.profiler) of one step per variant and kind",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variants = list(dict.fromkeys(args.variants))
    baseline = "reference" if "reference" in variants else variants[0]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    result = {
        "bench": "supernet",
        "search_space": args.search_space,
        "input_size": args.input_size,
        "baseline": baseline,
        "env": environment(device),
        "results": {},
    }
    built = {name: build_variant(name, args, device) for name in variants}
    gen = torch.Generator().manual_seed(args.seed)
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.input_size, args.input_size, generator=gen).to(device)
        y = torch.randint(0, 10, (batch,), generator=gen).to(device)
        per_batch = {}
        for kind in STEPS:
            log(f"batch {batch}, {kind} step: warm-up")
            fns = {}
            memory = {}
            for name in variants:
                model, steps, opts = built[name]
                step = steps[kind]
                step(x, y)  # warm-up (oneDNN primitives, optimizer state)
                if args.profile:
                    _profile(name, kind, batch, lambda s=step, a=x, b=y: s(a, b), args.profile, log)
                if not args.no_memory:
                    static = tensor_bytes(model, *opts, x, y)
                    memory[name] = round(
                        peak_memory_mb(lambda s=step, a=x, b=y: s(a, b), device, static), 1
                    )

                def timed(s=step, n=batch, a=x, b=y):
                    s(a, b)
                    return n

                fns[name] = timed
            rates = time_rounds(fns, args.rounds, args.min_time, device, log)
            entry = {}
            for name in variants:
                entry[name] = {"images_per_s": summarise(rates[name])}
                if name != baseline:
                    entry[name]["speedup_vs_" + baseline] = paired_ratios(
                        rates[name], rates[baseline]
                    )
                if memory:
                    entry[name]["peak_memory_mb"] = memory[name]
            per_batch[kind] = entry
            for name in variants:
                s = entry[name]["images_per_s"]
                ratio = entry[name].get("speedup_vs_" + baseline, {}).get("median")
                log(
                    f"batch {batch:4d} {kind:<7} {name:<14} {s['median']:9.1f} img/s "
                    f"[{s['min']:.1f}..{s['max']:.1f}]"
                    + (f"  x{ratio:.2f}" if ratio else "")
                    + (f"  peak {memory[name]:.0f} MB" if memory else "")
                )
        result["results"][str(batch)] = per_batch
    result["env"]["load_avg_1min_end"] = environment(device).get("load_avg_1min")
    print_json(result)
    return result


if __name__ == "__main__":
    main()
