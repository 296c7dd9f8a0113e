"""Which inference form to export: a trained network's batch-1 latency with and without the training
speed tricks (trimmed depthwise kernels, channels_last), eager PyTorch, one process.

Usage:
    python bench/bench_export_form.py runs/architectures_training/<run>/best.pth --threads 1

Variants, all the exporter's inference form (eval, BN folded, no dropout; the same weights):
    nchw               full depthwise kernels, contiguous weights
    channels_last      full depthwise kernels, channels_last weights (the exporter's default)
    trimmed            only the depthwise taps that touch the map (fbnet_building_blocks.trim_kernels)
    trimmed_cl         both

Each variant's latency is its median over interleaved rounds (supernet_functions.latency.validate.
measure_latencies, torch.inference_mode). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from architecture_functions.config_for_arch import ArchTrainConfig  # noqa: E402
from architecture_functions.export import inference_model  # noqa: E402
from fbnet_building_blocks.arch_specs import ArchSpec  # noqa: E402
from fbnet_building_blocks.trim_kernels import trim_depthwise_convs  # noqa: E402
from general_functions.checkpoint import load_checkpoint  # noqa: E402
from general_functions.config_utils import config_from_dict  # noqa: E402
from supernet_functions.latency.measure import num_threads  # noqa: E402
from supernet_functions.latency.validate import measure_latencies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--input_size", type=int, default=32)
    args = parser.parse_args()
    state = load_checkpoint(args.checkpoint, stage="architecture")
    cfg = config_from_dict(ArchTrainConfig, state["config"])
    spec = ArchSpec.from_dict(state["arch_spec"])
    classes = state["model"]["classifier.weight"].shape[0]
    nchw, _ = inference_model(cfg, spec, state["model"], classes, channels_last=False)
    trimmed = copy.deepcopy(nchw)
    n_trimmed = trim_depthwise_convs(trimmed)
    variants = {
        "nchw": nchw,
        "channels_last": copy.deepcopy(nchw).to(memory_format=torch.channels_last),
        "trimmed": trimmed,
        "trimmed_cl": copy.deepcopy(trimmed).to(memory_format=torch.channels_last),
    }
    x = torch.randn(1, 3, args.input_size, args.input_size)
    with num_threads(args.threads):
        median, iqr, info = measure_latencies(list(variants.values()), x, args.rounds)
    result = {
        "checkpoint": args.checkpoint,
        "architecture": spec.name,
        "threads": args.threads,
        "rounds": args.rounds,
        "trimmed_convs": n_trimmed,
        "median_ms": {k: round(float(v), 3) for k, v in zip(variants, median)},
        "iqr_ms": {k: round(float(v), 3) for k, v in zip(variants, iqr)},
        "round_speed_range": [info["round_speed_min"], info["round_speed_max"]],
        "torch": torch.__version__,
    }
    for name, ms in result["median_ms"].items():
        print(f"{name:14s} {ms:8.3f} ms (IQR {result['iqr_ms'][name]:.3f})", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
