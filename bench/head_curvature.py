"""Why a wide BN head diverges at lr 0.1: the curvature of the classifier block against SGD's limit.

Usage:
    python bench/head_curvature.py --data_dir ../shared/data/cifar10            # at initialisation
    python bench/head_curvature.py --data_dir ../shared/data/cifar10 --trace 20 \
        --variants head_1984 head_1504                                           # along training

The logits are linear in the classifier weight W, so the loss Hessian of that block is exactly
``H_W = mean_i (diag(p_i) - p_i p_i^T) (x) f_i f_i^T`` (``f_i``: the pooled head features of image i,
``p_i``: its softmax). Its largest eigenvalue ``lambda`` (power iteration on ``V -> mean_i H_i V f_i f_i^T``)
is a lower bound on the whole network's largest Hessian eigenvalue. Gradient descent with heavy-ball
momentum ``beta`` is stable on a quadratic only while ``lr * lambda < 2 (1 + beta)`` (3.8 at momentum
0.9), so ``lr * lambda`` above 3.8 means the step overshoots along that direction and grows each step.

For each variant and seed the script builds FBNet-B (``--arch``) as the trainer would, draws one training
batch of ``--batch_size`` augmented images in training mode, and prints ``lr * lambda``, the mean energy of
the classifier's input ``E|f|^2`` and the squared norm of its mean ``|mean f|^2``. With ``--trace N`` it
trains N SGD steps (the trainer's optimiser) and prints the same figures, the loss and the spread of the
batch-mean logits over the classes at every step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from architecture_functions.config_for_arch import ArchTrainConfig  # noqa: E402
from architecture_functions.training_functions import build_loaders, build_model  # noqa: E402
from fbnet_building_blocks.arch_specs import load_arch  # noqa: E402
from general_functions.dataloaders import load_cifar10  # noqa: E402

# The authors' structure initialised as PyTorch does today (the trainer's defaults are the original
# reproduction as it ran, with BN scales U(0, 1)).
AUTHORS = {
    "head": "conv_bn_relu",
    "head_channels": 0,
    "dw_bn_relu": True,
    "init": "fan_out",
    "bn_init": "ones",
    "dropout": 0.0,
    "normalization": "dataset",
}
# name -> trainer settings (ArchTrainConfig fields)
VARIANTS: dict[str, dict] = {
    "head_1984": {**AUTHORS, "head_channels": 1984},
    "head_1504": {**AUTHORS, "head_channels": 1504},
    "head_1024": {**AUTHORS, "head_channels": 1024},
    "head_conv_bn_1984": {**AUTHORS, "head": "conv_bn", "head_channels": 1984},
    "head_conv_bias_1984": {**AUTHORS, "head": "conv_bias", "head_channels": 1984},
    "head_1984_bn_uniform": {**AUTHORS, "head_channels": 1984, "bn_init": "uniform"},
    "original_recipe_bn_ones": {"bn_init": "ones"},  # the defaults on PyTorch >= 1.2's BN init
    "original_recipe": {},  # the trainer's defaults: the original as it ran
}
BOUND = 2 * (1 + 0.9)


def fc_curvature(features: torch.Tensor, logits: torch.Tensor, iters: int = 50) -> float:
    """Largest eigenvalue of the cross-entropy Hessian w.r.t. the classifier weight."""
    probs = logits.softmax(1)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(logits.shape[1], features.shape[1], generator=gen)
    lam = 0.0
    for _ in range(iters):
        v = v / v.norm()
        z = features @ v.T  # V f_i
        hz = probs * z - probs * (probs * z).sum(1, keepdim=True)  # H_i V f_i
        hv = hz.T @ features / features.shape[0]
        lam = float((hv * v).sum())
        v = hv
    return lam


def _setup(args, name: str, seed: int):
    cfg = ArchTrainConfig(
        architecture_name=args.arch,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        seed=seed,
        progress=False,
        **VARIANTS[name],
    )
    torch.manual_seed(seed)
    model = build_model(cfg, load_arch(args.arch), 10, 32, torch.device("cpu")).train()
    loader = build_loaders(cfg, args.data, torch.device("cpu")).train
    loader.set_epoch(1)
    feats: dict[str, torch.Tensor] = {}
    # what the classifier sees: pooled features after dropout
    model.dropout.register_forward_hook(lambda m, i, o: feats.__setitem__("f", o.detach()))
    return cfg, model, loader, feats


def at_init(args) -> None:
    print(f"| variant | lr * lambda at init, seeds {args.seeds} | E|f|^2 | |mean f|^2 |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for name in args.variants:
            rows = []
            for seed in args.seeds:
                cfg, model, loader, feats = _setup(args, name, seed)
                x, _ = next(iter(loader))
                logits = model(x)
                f = feats["f"]
                rows.append(
                    (
                        cfg.lr * fc_curvature(f, logits),
                        float(f.pow(2).sum(1).mean()),
                        float(f.mean(0).pow(2).sum()),
                    )
                )
            lams = " / ".join(f"{r[0]:.2f}" for r in rows)
            energy = statistics.median(r[1] for r in rows)
            mean_sq = statistics.median(r[2] for r in rows)
            print(f"| `{name}` | {lams} | {energy:.0f} | {mean_sq:.0f} |", flush=True)
    print(f"(stability limit of heavy-ball SGD: lr * lambda < 2(1 + momentum) = {BOUND:.1f})")


def trace(args) -> None:
    for name in args.variants:
        seed = args.seeds[0]
        cfg, model, loader, feats = _setup(args, name, seed)
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        print(f"{name}, seed {seed}")
        for step, (x, y) in enumerate(loader):
            if step >= args.trace:
                break
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            f = feats["f"]
            lam = fc_curvature(f, logits.detach())
            mean_logits = logits.detach().mean(0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            print(
                f"  step {step:2d} loss {loss.item():6.3f} lr*lambda {cfg.lr * lam:5.2f} "
                f"E|f|^2 {float(f.pow(2).sum(1).mean()):7.0f} |mean f|^2 "
                f"{float(f.mean(0).pow(2).sum()):6.0f} logit spread "
                f"{float(mean_logits.max() - mean_logits.min()):6.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--arch", default="fbnet_b")
    parser.add_argument("--data_dir", default="../shared/data/cifar10")
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--trace", type=int, default=0, help="train this many steps and trace them")
    args = parser.parse_args()
    args.data = load_cifar10(args.data_dir)
    if args.trace:
        trace(args)
    else:
        at_init(args)


if __name__ == "__main__":
    main()
