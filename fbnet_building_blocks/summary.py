"""Summarise an architecture: parameters, multiply-adds and output shape.

python -m fbnet_building_blocks.summary --arch fbnet_a                      # paper macro, 224x224
python -m fbnet_building_blocks.summary --arch fbnet_c --search_space fbnet_cifar --cnt_classes 10
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .fbnet_builder import get_model

__all__ = ["count_params", "model_summary", "format_summary"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def model_summary(model: nn.Module, input_size: int, batch_size: int = 1) -> dict[str, Any]:
    """Parameters, multiply-adds (``torch.utils.flop_counter``: convs and matmuls) and output shape."""
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, 3, input_size, input_size, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
    model.train(was_training)
    return {
        "params": count_params(model),
        "macs": counter.get_total_flops() // 2 // batch_size,  # one multiply-add = 2 FLOPs
        "input_shape": [batch_size, 3, input_size, input_size],
        "output_shape": list(out.shape),
    }


def format_summary(summary: dict[str, Any], name: str = "") -> str:
    return (
        f"{name + ': ' if name else ''}params {summary['params'] / 1e6:.2f}M, "
        f"multiply-adds {summary['macs'] / 1e6:.1f}M, input {summary['input_shape']}, "
        f"output {summary['output_shape']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Print the parameters, multiply-adds and output shape of an FBNet architecture.",
    )
    parser.add_argument("--arch", default="fbnet_a", help="built-in name, saved name or JSON path")
    parser.add_argument("--search_space", default=None, help="fbnet | fbnet_cifar | tiny")
    parser.add_argument("--input_size", type=int, default=None)
    parser.add_argument("--cnt_classes", type=int, default=1000)
    parser.add_argument("--width_mult", type=float, default=None)
    parser.add_argument("--print_model", action="store_true", help="also print the module tree")
    args = parser.parse_args(argv)
    model = get_model(
        args.arch, args.cnt_classes, args.search_space, args.input_size, args.width_mult
    )
    if args.print_model:
        print(model)
    print(format_summary(model_summary(model, model.input_size), model.spec.name))


if __name__ == "__main__":
    main()
