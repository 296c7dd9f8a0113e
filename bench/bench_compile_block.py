"""Does ``torch.compile`` speed up the blocks a single-path weight step runs (the ``cpu_cifar10`` preset's)?

    python bench/bench_compile_block.py --blocks 0:ir_k3_e6 2:ir_k5_e6 14:ir_k3_e6 19:ir_k5_e3

For every ``layer:op`` it takes that op of the preset's supernet (``fbnet`` at 32x32, shared weights, the
committed 32x32 table's block structure, made by ``prepare_supernet``) and times forward + backward at
batch 128 in channels_last: eager, then the first call of ``torch.compile(op, dynamic=False)`` (the
compilation, from a reset compiler: every block for its own shapes), then compiled, then eager again
(medians of ``--repeats`` calls). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import environment, preset_supernet, print_json  # noqa: E402


def _fwd_bwd(block, x: torch.Tensor) -> None:
    y = block(x)
    y.backward(torch.ones_like(y))


def _median_ms(block, x: torch.Tensor, repeats: int) -> float:
    for _ in range(3):
        _fwd_bwd(block, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _fwd_bwd(block, x)
        times.append(time.perf_counter() - start)
    return round(sorted(times)[len(times) // 2] * 1e3, 2)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--blocks", nargs="+", default=["0:ir_k3_e6", "14:ir_k3_e6"], help="layer:op")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = preset_supernet(weight_sharing=True)
    shapes = net.space.layer_shapes(32)
    rows = []
    for spec in args.blocks:
        layer, op_name = spec.split(":")
        shape = shapes[int(layer)]
        block = net.stages[int(layer)].ops[net.candidate_ops.index(op_name)]
        x = torch.randn(args.batch_size, shape.in_channels, shape.input_hw, shape.input_hw)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        row = {"layer": int(layer), "op": op_name, "map": shape.input_hw}
        row["eager_ms"] = _median_ms(block, x, args.repeats)
        torch._dynamo.reset()  # each block compiled on its own, for its own shapes
        compiled = torch.compile(block, dynamic=False)
        start = time.perf_counter()
        _fwd_bwd(compiled, x)
        row["compile_s"] = round(time.perf_counter() - start, 1)
        row["compiled_ms"] = _median_ms(compiled, x, args.repeats)
        row["eager_again_ms"] = _median_ms(block, x, args.repeats)
        rows.append(row)
        print(row, flush=True)
    result = {
        "batch_size": args.batch_size,
        "blocks": rows,
        "env": environment(torch.device("cpu")),
    }
    print_json(result)
    return result


if __name__ == "__main__":
    main()
