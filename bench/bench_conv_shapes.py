"""Every convolution shape of a supernet, timed forward + backward: the library's kernel against ours.

Usage:
    python bench/bench_conv_shapes.py                       # fbnet at 32x32, batch 32 and 128
    python bench/bench_conv_shapes.py --batch_sizes 128 --kinds pointwise

``supernet_functions.speed`` replaces two kinds of convolution by exact hand-written forms, each only
where this script measured it faster on this project's CPU (docs/performance.md):

    pointwise  a 1x1 stride-1 convolution as one GEMM (``pointwise_conv2d``), on maps up to
               ``PointwiseConv2d.max_pixels`` pixels, against ``F.conv2d``
    depthwise  the depthwise weight gradient as a multiply-and-sum per kernel tap
               (``SmallMapDepthwiseConv2d.direct_weight_grad`` decides where), against the
               library's (trimmed) depthwise convolution

Both thresholds depend on the CPU and its libraries: on another machine, run this and compare the
``rule`` column with ``best``. Each shape is timed with channels_last inputs, alternating the two forms
``--repeats`` times; the per-step totals weight every shape by how often the supernet runs it. The last
stdout line is one JSON object with all of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from statistics import median

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import environment, print_json  # noqa: E402
from fbnet_building_blocks.search_space import get_search_space  # noqa: E402
from supernet_functions import speed  # noqa: E402
from supernet_functions.model_supernet import StochasticSuperNet  # noqa: E402


class _Costs:
    """Any positive cost table will do: only the convolutions' shapes matter here."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers

    def latency_vector(self, layer: int, ops) -> torch.Tensor:
        return torch.ones(len(ops))


def conv_shapes(search_space: str, input_size: int) -> dict[tuple, int]:
    """``{(kind, in_channels, map_size, out_channels, groups, kernel, stride): count}`` of a supernet."""
    space = get_search_space(search_space)
    net = StochasticSuperNet(search_space, _Costs(space.num_layers), 10, input_size)
    shapes: dict[tuple, int] = {}

    def record(module, inputs, output):
        x = inputs[0]
        if module.kernel_size == (1, 1) and speed.PointwiseConv2d.applies_to(module):
            kind = "pointwise"
        elif module.groups == module.in_channels == module.out_channels > 1:
            kind = "depthwise"
        else:
            return
        key = (kind, x.shape[1], x.shape[2], module.out_channels, module.groups)
        key += (module.kernel_size[0], module.stride[0])
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [m.register_forward_hook(record) for m in net.modules() if type(m) is torch.nn.Conv2d]
    with torch.no_grad():
        net(torch.randn(2, 3, input_size, input_size), 5.0)
    for h in hooks:
        h.remove()
    return shapes


def _forms(key: tuple):
    """``(library, ours, rule_picks_ours)`` callables ``(x, weight) -> y`` for one shape."""
    kind, _, size, _, groups, kernel, stride = key
    if kind == "pointwise":
        limit = speed.PointwiseConv2d.max_pixels

        def ours(x, w):
            speed.PointwiseConv2d.max_pixels = 1 << 30  # the GEMM on every map size
            try:
                return speed.pointwise_conv2d(x, w, None, groups)
            finally:
                speed.PointwiseConv2d.max_pixels = limit

        return (lambda x, w: F.conv2d(x, w, None, groups=groups)), ours, size * size <= limit
    rule = speed.SmallMapDepthwiseConv2d.direct_weight_grad
    descriptor = speed.SmallMapDepthwiseConv2d.__dict__["direct_weight_grad"]
    padding = (kernel // 2, kernel // 2)
    out = (size + 2 * padding[0] - kernel) // stride + 1
    taps = speed.used_taps(size, kernel, stride, padding[0])
    taps = (taps[1] - taps[0]) ** 2

    def forced(direct: bool):
        def run(x, w):
            speed.SmallMapDepthwiseConv2d.direct_weight_grad = classmethod(lambda c, *a: direct)
            try:
                return speed.depthwise_conv2d(x, w, (stride, stride), padding)
            finally:
                speed.SmallMapDepthwiseConv2d.direct_weight_grad = descriptor

        return run

    return forced(False), forced(True), rule(out * out, taps, (stride, stride))


def _time_ms(fn, x, w, upstream, calls: int) -> float:
    times = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        torch.autograd.grad(fn(x, w), (x, w), upstream)
        times.append(time.perf_counter() - start)
    return median(times[1:]) * 1e3  # the first call warms up


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--search_space", default="fbnet")
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument(
        "--kinds", nargs="+", default=["pointwise", "depthwise"], choices=["pointwise", "depthwise"]
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two forms")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per form and repeat")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    shapes = conv_shapes(args.search_space, args.input_size)
    shapes = {k: n for k, n in shapes.items() if k[0] in args.kinds}
    rows, totals = [], {}
    print(f"{len(shapes)} shapes of {args.search_space} at {args.input_size}x{args.input_size}")
    for batch in args.batch_sizes:
        for key, count in sorted(shapes.items(), key=lambda kv: (kv[0][0], -kv[0][2], kv[0][1:])):
            kind, cin, size, cout, groups, kernel, stride = key
            library, ours, rule = _forms(key)
            weight = torch.randn(cout, cin // groups, kernel, kernel, requires_grad=True)
            x = torch.randn(batch, cin, size, size).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            with torch.no_grad():
                upstream = torch.randn_like(library(x, weight))
            ms = {"library": [], "ours": []}
            for r in range(args.repeats):
                order = ("library", "ours") if r % 2 == 0 else ("ours", "library")
                for name in order:
                    fn = library if name == "library" else ours
                    ms[name].append(_time_ms(fn, x, weight, upstream, args.calls))
            lib, own = median(ms["library"]), median(ms["ours"])
            row = {
                "batch": batch,
                "kind": kind,
                "in_channels": cin,
                "map": size,
                "out_channels": cout,
                "groups": groups,
                "kernel": kernel,
                "stride": stride,
                "count": count,
                "library_ms": round(lib, 3),
                "ours_ms": round(own, 3),
                "rule": "ours" if rule else "library",
                "best": "ours" if own < lib else "library",
            }
            rows.append(row)
            t = totals.setdefault(f"{kind} b{batch}", {"library": 0.0, "ours": 0.0, "rule": 0.0})
            t["library"] += lib * count
            t["ours"] += own * count
            t["rule"] += (own if rule else lib) * count
            print(
                f"b{batch:<4d} {kind:9s} in {cin:4d} map {size:2d}x{size:<2d} out {cout:4d} g{groups} "
                f"k{kernel} s{stride} x{count:<2d} library {lib:7.2f} ms  ours {own:7.2f} ms  "
                f"x{lib / own:5.2f}  rule: {row['rule']:7s} best: {row['best']}",
                flush=True,
            )
    for name, t in totals.items():
        print(
            f"{name}: ms per supernet pass, all library {t['library']:.0f}, all ours "
            f"{t['ours']:.0f}, the rule {t['rule']:.0f}"
        )
    result = {
        "env": environment(torch.device("cpu")),
        "args": vars(args),
        "rows": rows,
        "totals": totals,
    }
    print_json(result)
    return result


if __name__ == "__main__":
    main()
