"""How much of a single-path weight step (the ``cpu_cifar10`` preset's) is the path's own network?

    python bench/bench_single_path.py --rounds 5 --out SAVED_LOGS/benchmarks/bench_single_path.json

Three steps (SGD, momentum 0.9, batch 128, 32x32 inputs in channels_last), alternating round by round:

- ``owned``: a uniformly drawn path through a supernet whose ops have their own weights
  (``forward_path``): a fixed network made of the same blocks, the floor for the step;
- ``shared``: the same draws through the weights the ops of a layer share (``--weight_sharing True``);
- ``search``: the preset's weight step (``train_weights_epoch`` with ``--w_mixing sampled``): a path drawn
  from softmax(thetas) inside every layer, the latency and the loss ``CE * alpha * log(LAT)^beta``, ten
  steps per call (the phase's own set-up is paid once an epoch in a search).

Every supernet is made by ``prepare_supernet`` with the search's defaults and the committed 32x32 table's
block structure. Unlike the other benchmarks this one leaves ``OMP_WAIT_POLICY`` as it finds it, as the
search does. Prints images/s per round; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (  # noqa: E402
    environment,
    preset_supernet,
    print_json,
    summarise,
    time_rounds,
)
from general_functions.io_utils import atomic_write_json  # noqa: E402
from supernet_functions.loss import SupernetLoss  # noqa: E402
from supernet_functions.training_functions_supernet import (  # noqa: E402
    _weights_mixing,
    train_weights_epoch,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min_time", type=float, default=3.0, help="seconds per variant and round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen)

    def supernet(shared: bool):
        net = preset_supernet(shared)
        for t in net.arch_parameters():
            t.requires_grad_(False)
        sgd = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        return net, sgd

    def path_step(shared: bool):
        net, sgd = supernet(shared)
        draws = random.Random(1)  # the same paths for owned and shared

        def step() -> int:
            path = [draws.randrange(len(layer.ops)) for layer in net.stages]
            sgd.zero_grad(set_to_none=True)
            F.cross_entropy(net.forward_path(x, path), y).backward()
            sgd.step()
            return args.batch_size

        return step

    def search_step():
        net, sgd = supernet(True)
        criterion = SupernetLoss()
        phase = [(x, y)] * 10  # steps per call: the phase's own setup is paid once per epoch

        def step() -> int:
            with _weights_mixing(net, "sampled"):
                train_weights_epoch(net, phase, criterion, sgd, 5.0)
            return args.batch_size * len(phase)

        return step

    variants = {"owned": path_step(False), "shared": path_step(True), "search": search_step()}
    for step in variants.values():  # warm-up
        step()
    per_round = time_rounds(variants, args.rounds, args.min_time, device)
    result = {
        "batch_size": args.batch_size,
        "img_per_s": {k: summarise(v) for k, v in per_round.items()},
        "per_round": per_round,
        "env": environment(device),
    }
    print_json(result)
    if args.out:
        atomic_write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
