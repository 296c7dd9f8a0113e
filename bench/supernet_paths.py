"""Which way of training the supernet's weights makes single paths through them work?

    python bench/supernet_paths.py --data_dir ../shared/data/cifar10 --steps 300 \\
        --out SAVED_LOGS/benchmarks/supernet_paths.json

Every variant trains the weights of a fresh ``fbnet`` supernet (32x32, the default structure, BN scales
U(0, 1) as the cpu_cifar10 preset) on the same 6,000 CIFAR-10 training images for ``--steps`` SGD steps
(batch 128, momentum 0.9, weight decay 1e-4, constant lr), thetas fixed, and scores paths every
``--every`` steps with :func:`supernet_functions.path_probe.probe_paths` on 1,000 other training images:
the argmax path and the mean of 5 paths drawn from softmax(thetas).

- ``fixed``: one path (``ir_k3_e6`` at every layer) is the only one ever trained: a plain network, the
  ceiling;
- ``soft``: the paper's soft Gumbel mixture at T = 5 (uniform thetas);
- ``sampled``: one uniformly drawn path per step (``--w_mixing sampled``), every op with its own weights;
- ``sampled_shared``: the same with the ops of a layer sharing their weights (``--weight_sharing True``).

With uniform thetas the "argmax" is simply layer-wise op 0; the drawn paths are what matter. The last
line of stdout is the JSON written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from general_functions.dataloaders import load_dataset, make_loader, split_train  # noqa: E402
from general_functions.io_utils import atomic_write_json  # noqa: E402
from supernet_functions.model_supernet import StochasticSuperNet  # noqa: E402
from supernet_functions.path_probe import probe_paths  # noqa: E402
from supernet_functions.speed import prepare_supernet  # noqa: E402
from supernet_functions.training_functions_supernet import _weights_mixing  # noqa: E402

VARIANTS = ("fixed", "soft", "sampled", "sampled_shared")


def run_variant(name: str, data, args) -> list[dict]:
    torch.manual_seed(args.seed)
    weights, probe = data
    net = StochasticSuperNet(
        "fbnet", None, 10, 32, bn_init="uniform", weight_sharing=name == "sampled_shared"
    )
    net = prepare_supernet(net, torch.device("cpu"))
    if name == "fixed":
        with torch.no_grad():
            for layer in net.stages:
                layer.thetas[3] = 50.0  # ir_k3_e6: every draw picks it
    for p in net.arch_parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(net.weight_parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    mixing = "same" if name == "soft" else "sampled"
    rows, step, start = [], 0, time.perf_counter()
    net.train()
    while step < args.steps:
        for x, y in weights:
            with _weights_mixing(net, mixing):
                logits, _ = net(x, 5.0)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % args.every == 0 or step == args.steps:
                paths = probe_paths(net, probe, 5, seed=args.seed + step)
                rows.append(
                    {"step": step, "loss": round(loss.item(), 4)}
                    | {k: round(v, 2) for k, v in paths.items()}
                    | {"wall_s": round(time.perf_counter() - start, 1)}
                )
                print(name, json.dumps(rows[-1]), flush=True)
            if step >= args.steps:
                break
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data_dir", default="../shared/data/cifar10")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    data = load_dataset("cifar10", args.data_dir, False, seed=args.seed)
    w, rest = split_train(data.train, 0.5, args.seed, 12000)
    loaders = (
        make_loader(w, 128, True, "cpu", "tensor", data.mean, data.std, seed=args.seed),
        make_loader(
            rest.subset(torch.arange(1000)), 250, False, "cpu", "tensor", data.mean, data.std
        ),
    )
    result = {
        "command": "python bench/supernet_paths.py " + " ".join(argv or sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "variants": {name: run_variant(name, loaders, args) for name in args.variants},
    }
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
