"""Every searched layer of a supernet, forward + backward: its candidates one by one against merged.

Usage:
    python bench/bench_fused_layers.py                      # fbnet at 32x32, batch 128
    python bench/bench_fused_layers.py --batch_sizes 32 128 --repeats 7
    python bench/bench_fused_layers.py --weight_sharing --step thetas   # the cpu_cifar10 preset's

``--fuse_ops`` (``supernet_functions/fused_candidates.py``) runs a layer's inverted-residual candidates
together where this script measured it faster on this project's CPU: at most
``FusedCandidates.max_rows`` rows (batch x output pixels). The threshold depends on the CPU and its
libraries: on another machine, run this and compare the ``rule`` column with ``best``.
With ``--weight_sharing`` the merged form is :class:`~supernet_functions.shared_ops.SharedMixture`
(each shared channel computed once), which applies at every size in training mode.

Each layer gets its own input (the layer's input shape, channels_last) and a fixed output gradient;
one call is the mixture's forward pass and its backward pass, with every weight and mixing-weight
gradient, as in a weight step (``--step weights``), or with the weights frozen, as in a theta step
(``--step thetas``). The two forms run alternately, ``--repeats`` times, and the table gives the
median of each. The last stdout line is one JSON object with all of it.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from statistics import median

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import environment, print_json  # noqa: E402
from fbnet_building_blocks.search_space import get_search_space  # noqa: E402
from supernet_functions.model_supernet import StochasticSuperNet  # noqa: E402
from supernet_functions.speed import prepare_supernet  # noqa: E402


def _call(layer, x, weights, grad, merged: bool) -> None:
    x = x.detach().requires_grad_(True)
    w = weights.detach().requires_grad_(True)
    if merged:
        out = layer.fused(x, w)
    else:
        out = sum(wi * op(x) for wi, op in zip(w, layer.ops))
    out.backward(grad)


def time_layers(args) -> list[dict]:
    space = get_search_space(args.search_space)
    rows = []
    for batch in args.batch_sizes:
        torch.manual_seed(args.seed)
        net = StochasticSuperNet(
            space, None, 10, args.input_size, weight_sharing=args.weight_sharing
        )
        prepare_supernet(net, torch.device("cpu"), recompute=False)
        net.train()
        for p in net.weight_parameters():
            p.requires_grad_(args.step == "weights")
        inputs = []
        hooks = [
            layer.register_forward_pre_hook(lambda m, a, seen=inputs: seen.append(a[0].detach()))
            for layer in net.stages
        ]
        x = torch.randn(batch, 3, args.input_size, args.input_size)
        with torch.no_grad():
            net(x.contiguous(memory_format=torch.channels_last), 5.0)
        for h in hooks:
            h.remove()
        for index, (layer, x) in enumerate(zip(net.stages, inputs)):
            if layer.fused is None:
                continue
            gen = torch.Generator().manual_seed(index)
            weights = torch.softmax(torch.randn(len(layer.ops), generator=gen), 0)
            with torch.no_grad():
                out = layer.fused(x, weights)
            grad = torch.randn(out.shape, generator=gen).contiguous(
                memory_format=torch.channels_last
            )
            state = copy.deepcopy(layer.state_dict())
            times = {False: [], True: []}
            for _ in range(args.repeats):
                for merged in (False, True):
                    layer.zero_grad(set_to_none=True)
                    start = time.perf_counter()
                    _call(layer, x, weights, grad, merged)
                    times[merged].append(time.perf_counter() - start)
            layer.load_state_dict(state)  # the running statistics, as before
            one_by_one, together = median(times[False]) * 1e3, median(times[True]) * 1e3
            out_pixels = out.shape[2] * out.shape[3]
            rows.append(
                {
                    "batch": batch,
                    "layer": index,
                    "in_shape": list(x.shape),
                    "out_map": f"{out.shape[2]}x{out.shape[3]}",
                    "one_by_one_ms": round(one_by_one, 2),
                    "merged_ms": round(together, 2),
                    "ratio": round(one_by_one / together, 2),
                    "rule": "merged" if layer.fused.applies(x, weights) else "one by one",
                    "best": "merged" if together < one_by_one else "one by one",
                    "rows": batch * out_pixels,
                }
            )
            r = rows[-1]
            print(
                f"b{batch:<4d} layer {index:2d} in {tuple(x.shape[1:])!s:15s} out {r['out_map']:5s} "
                f"one by one {one_by_one:7.1f} ms  merged {together:7.1f} ms  x{r['ratio']:.2f}  "
                f"rule: {r['rule']:10s} best: {r['best']}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--search_space", default="fbnet")
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--repeats", type=int, default=5, help="alternating calls of each form")
    parser.add_argument("--weight_sharing", action="store_true", help="the layers share weights")
    parser.add_argument(
        "--step",
        choices=("weights", "thetas"),
        default="weights",
        help="weights: every gradient, as in a weight step; thetas: the weights frozen",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(b < 1 for b in args.batch_sizes):
        parser.error("--repeats and --batch_sizes must be positive")
    torch.set_num_threads(args.threads)
    rows = time_layers(args)
    totals = {}
    for batch in args.batch_sizes:
        sel = [r for r in rows if r["batch"] == batch]
        rule = sum(r["merged_ms"] if r["rule"] == "merged" else r["one_by_one_ms"] for r in sel)
        plain = sum(r["one_by_one_ms"] for r in sel)
        totals[batch] = {"one_by_one_ms": round(plain, 1), "rule_ms": round(rule, 1)}
        print(f"b{batch}: all layers one by one {plain:.0f} ms, with the rule {rule:.0f} ms")
    result = {
        "bench": "fused_layers",
        "env": environment(torch.device("cpu")),
        "args": vars(args),
        "layers": rows,
        "totals": totals,
    }
    print_json(result)
    return result


if __name__ == "__main__":
    main()
