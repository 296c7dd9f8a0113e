"""From learned thetas to architectures: argmax, or draws from every layer's softmax(thetas).

The paper samples six architectures from the learned distribution; ``sample`` with
``--num_samples 6`` saves the argmax and five distinct draws in one call (duplicates skipped).
A search run writes ``thetas.json`` into its folder after every epoch (thetas, the search space, the
candidate ops, the table it used), so sampling needs no checkpoint and works on a run copied into
``SAVED_LOGS``. Every sampled architecture is saved with
:func:`fbnet_building_blocks.arch_specs.save_arch` (validated name, never overwritten, JSON in the
registry folder that ``architecture_main_file.py --architecture_name NAME`` reads), and its source
(run, epoch, table, predicted latency) travels inside the JSON.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fbnet_building_blocks.arch_specs import ARCHS, ArchSpec, arch_registry_dir, save_arch
from fbnet_building_blocks.search_space import get_search_space
from general_functions.io_utils import read_json

__all__ = [
    "SAMPLING_MODES",
    "describe_run",
    "describe_thetas",
    "distinct_draws",
    "find_latest_run",
    "is_trial_run",
    "log_probability",
    "predicted_cost",
    "read_thetas",
    "sample_architecture",
    "sample_ops",
    "sample_and_save",
    "run_sampling",
    "thetas_summary",
]

logger = logging.getLogger(__name__)

SAMPLING_MODES = ("argmax", "sample")
THETAS_FILE = "thetas.json"
# thetas.json's format: 2 gives "epoch" as epochs done; files without "format" counted from 0
THETAS_FORMAT = 2
LUT_FILE = "lut.json"


def sample_ops(
    thetas: torch.Tensor,
    candidate_ops: Sequence[str],
    mode: str = "argmax",
    generator: torch.Generator | None = None,
) -> list[str]:
    """One op per layer from a ``[layers, ops]`` thetas matrix.

    ``argmax``: the most likely op of every layer. ``sample``: a draw from every layer's softmax(thetas).
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; use one of {SAMPLING_MODES}")
    thetas = torch.as_tensor(thetas, dtype=torch.float64)
    if thetas.dim() != 2 or thetas.shape[1] != len(candidate_ops):
        raise ValueError(
            f"thetas of shape {tuple(thetas.shape)} do not match {len(candidate_ops)} candidate ops"
        )
    if mode == "argmax":
        index = thetas.argmax(dim=1)
    else:
        index = torch.multinomial(torch.softmax(thetas, dim=1), 1, generator=generator).squeeze(1)
    return [candidate_ops[i] for i in index.tolist()]


def log_probability(
    thetas: torch.Tensor, candidate_ops: Sequence[str], ops: Sequence[str]
) -> float:
    """``log P(ops)`` under every layer's softmax(thetas): the sum over layers of the op's log-prob."""
    log_p = torch.log_softmax(torch.as_tensor(thetas, dtype=torch.float64), dim=1)
    index = [list(candidate_ops).index(op) for op in ops]
    return float(log_p[torch.arange(len(index)), torch.tensor(index)].sum())


def distinct_draws(
    thetas: torch.Tensor,
    candidate_ops: Sequence[str],
    count: int,
    generator: torch.Generator,
    exclude: Sequence[Sequence[str]] = (),
    max_draws: int | None = None,
) -> list[list[str]]:
    """Up to ``count`` distinct draws from softmax(thetas), none equal to one in ``exclude``.

    Duplicates are skipped and drawing goes on, at most ``max_draws`` times (default ``1000 * count``),
    so a peaked distribution that holds fewer distinct architectures returns fewer (in draw order).
    """
    seen = {tuple(ops) for ops in exclude}
    found: list[list[str]] = []
    for _ in range(max_draws if max_draws is not None else 1000 * count):
        if len(found) == count:
            break
        ops = sample_ops(thetas, candidate_ops, "sample", generator)
        if tuple(ops) not in seen:
            seen.add(tuple(ops))
            found.append(ops)
    return found


def thetas_summary(thetas: torch.Tensor) -> dict[str, Any]:
    """How far the learned distribution is from uniform: per-layer largest probability and entropy.

    Entropy in nats; a uniform layer over K ops has ``ln K`` (2.197 for the 9 FBNet ops), a one-hot
    layer 0. ``normalised_entropy`` is the mean entropy over ``ln K`` (1: uniform).
    """
    probs = torch.softmax(torch.as_tensor(thetas, dtype=torch.float64), dim=1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-300))).sum(dim=1)
    largest = probs.max(dim=1).values
    uniform = math.log(probs.shape[1])
    return {
        "largest_probability": [round(float(v), 4) for v in largest],
        "entropy": [round(float(v), 4) for v in entropy],
        "largest_probability_min": round(float(largest.min()), 4),
        "largest_probability_median": round(float(largest.median()), 4),
        "largest_probability_max": round(float(largest.max()), 4),
        "entropy_mean": round(float(entropy.mean()), 4),
        "entropy_uniform": round(uniform, 4),
        "normalised_entropy": round(float(entropy.mean()) / uniform, 4) if uniform else 0.0,
    }


def describe_thetas(stats: dict[str, Any]) -> list[str]:
    """Log lines for a :func:`thetas_summary`: the overview, then the per-layer values."""
    return [
        "final thetas: largest probability per layer min {:.3f} median {:.3f} max {:.3f}; entropy "
        "mean {:.3f} nats (uniform {:.3f}, normalised {:.3f})".format(
            stats["largest_probability_min"],
            stats["largest_probability_median"],
            stats["largest_probability_max"],
            stats["entropy_mean"],
            stats["entropy_uniform"],
            stats["normalised_entropy"],
        ),
        "  largest probability per layer: " + " ".join(map(str, stats["largest_probability"])),
        "  entropy per layer (nats): " + " ".join(map(str, stats["entropy"])),
    ]


def sample_architecture(
    supernet,
    mode: str = "argmax",
    name: str = "sampled",
    generator: torch.Generator | None = None,
    source: dict[str, Any] | None = None,
) -> ArchSpec:
    """An :class:`ArchSpec` from a :class:`~supernet_functions.model_supernet.StochasticSuperNet`."""
    ops = sample_ops(supernet.thetas_matrix(), supernet.candidate_ops, mode, generator)
    return _spec(name, ops, supernet.space.name, supernet.input_size, source or {})


def _spec(name: str, ops: list[str], space_name: str, input_size: int, source: dict) -> ArchSpec:
    space = get_search_space(space_name)
    return ArchSpec(
        name=name,
        ops=tuple(ops),
        search_space=space_name,
        input_size=None if input_size == space.input_size else input_size,
        source=source,
    )


def predicted_cost(lut, ops: Sequence[str]) -> dict[str, Any]:
    """The table's prediction for ``ops``: whole network (fixed parts included) and the layers alone."""
    unit = lut.meta.get("unit", "ms")
    whole = lut.predict(ops, include_fixed=True)
    layers = lut.predict(ops, include_fixed=False)
    out: dict[str, Any] = {"predicted_cost": whole, "predicted_layers_cost": layers, "unit": unit}
    out["predicted_latency_ms"] = whole if unit == "ms" else None
    return out


def read_thetas(run_dir: str | Path) -> dict[str, Any]:
    """The ``thetas.json`` a search run wrote (with a clear error when it is absent or broken)."""
    path = Path(run_dir) / THETAS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run `supernet_main_file.py --train_or_sample train` first, or "
            "name the run with --run_name (and its folder with --log_dir)"
        )
    state = read_json(path, "thetas file")
    try:
        _ = state["thetas"], state["candidate_ops"], state["search_space"], state["epoch"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a thetas file of a search run: {err}") from None
    if "format" not in state and isinstance(state["epoch"], int):  # written counting from 0
        state = {**state, "format": THETAS_FORMAT, "epoch": state["epoch"] + 1}
    return state


def find_latest_run(log_dir: str | Path, nested: bool = False) -> Path:
    """The run folder under ``log_dir`` whose ``thetas.json`` was written last, preferring real
    searches: a smoke or test run (:func:`is_trial_run`) is taken only when there is no other.

    ``nested``: also look one level deeper, i.e. treat ``log_dir`` as a folder of ``--log_dir``
    folders (``runs/`` holds ``runs/supernet/`` and the smoke preset's ``runs/supernet_smoke/``).
    """
    patterns = [f"*/{THETAS_FILE}", f"*/*/{THETAS_FILE}"] if nested else [f"*/{THETAS_FILE}"]
    found = [path.parent for pattern in patterns for path in Path(log_dir).glob(pattern)]
    runs = sorted(found, key=lambda run: (run / THETAS_FILE).stat().st_mtime)
    if not runs:
        raise FileNotFoundError(
            f"no search run under {log_dir}: run `supernet_main_file.py --train_or_sample train` "
            "first, or point --log_dir / --run_name at one"
        )
    real = [run for run in runs if not is_trial_run(run)]
    return (real or runs)[-1]


def is_trial_run(run_dir: str | Path) -> bool:
    """True for a smoke or test search: the 4-layer ``tiny`` space or synthetic data (``fake``)."""
    run_dir = Path(run_dir)
    try:
        space = read_json(run_dir / THETAS_FILE, "thetas file").get("search_space")
        config = run_dir / "config.json"
        dataset = read_json(config, "config file").get("dataset") if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        return False  # a broken file: sampling the run says what is wrong with it
    return space == "tiny" or dataset == "fake"


def describe_run(run_dir: Path, latest_under: Path | None = None) -> str:
    """The line ``sample`` prints first: the run it reads, why that one (named by ``--run_name``, or
    the newest under ``latest_under``: :func:`find_latest_run`), and how far that search got."""
    state = read_thetas(run_dir)
    if latest_under is None:
        why = "--run_name"
    elif is_trial_run(run_dir):
        why = (
            f"the newest search under {latest_under}, a smoke or test run: no real search is there"
        )
    else:
        why = f"the newest real search under {latest_under}"
    return (
        f"sampling {run_dir} ({why}): thetas after epoch {state['epoch']}, "
        f"search space {state['search_space']}"
    )


def sample_and_save(
    run_dir: str | Path,
    name: str,
    mode: str = "argmax",
    num_samples: int = 1,
    seed: int = 0,
    arch_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Sample architectures from a run and save them; returns one record per saved architecture.

    - ``argmax``, one sample: the argmax, saved as ``name`` (the original's behaviour);
    - ``argmax``, ``num_samples`` N > 1: the argmax as ``name_argmax`` and N - 1 distinct draws from
      softmax(thetas) as ``name_1 ..`` (the paper's six: ``num_samples=6``);
    - ``sample``: N distinct draws, ``name`` for one and ``name_1 .. name_N`` for several.

    Draws equal to the argmax or to an earlier draw are skipped (:func:`distinct_draws`, seeded by
    ``seed``); when the distribution holds fewer distinct architectures, fewer are saved, with a warning.
    Every name is checked before anything is written, and an existing name is an error (nothing is
    overwritten). Each JSON's ``source`` records the run, the epoch, how it was drawn, its probability
    under the thetas and the table's predicted latency.
    """
    if not name:
        raise ValueError("--architecture_name is required: the name to save the architecture under")
    if num_samples < 1:
        raise ValueError(f"--num_samples must be at least 1, got {num_samples}")
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; use one of {SAMPLING_MODES}")
    run_dir = Path(run_dir)
    state = read_thetas(run_dir)
    lut = _read_run_lut(run_dir)
    thetas = torch.tensor(state["thetas"], dtype=torch.float64)
    ops_all = state["candidate_ops"]
    gen = torch.Generator().manual_seed(seed)
    picks: list[tuple[str, str, list[str]]] = []  # (name, how, ops)
    if mode == "argmax":
        argmax = sample_ops(thetas, ops_all, "argmax")
        picks.append((name if num_samples == 1 else f"{name}_argmax", "argmax", argmax))
        draws = distinct_draws(thetas, ops_all, num_samples - 1, gen, exclude=[argmax])
    else:
        draws = distinct_draws(thetas, ops_all, num_samples, gen)
    single = mode == "sample" and num_samples == 1
    picks += [(name if single else f"{name}_{i}", "sample", ops) for i, ops in enumerate(draws, 1)]
    if len(picks) < num_samples:
        logger.warning(
            "softmax(thetas) gave fewer distinct architectures than asked (duplicates skipped): "
            "saving %d of %d",
            len(picks),
            num_samples,
        )
    specs = []
    for arch_name, how, ops in picks:
        cost = predicted_cost(lut, ops) if lut is not None else {"predicted_latency_ms": None}
        log_p = log_probability(thetas, ops_all, ops)
        source = {
            "run": str(run_dir),
            "epoch": state["epoch"],
            "sampling": how,
            "seed": seed,
            "log_probability": round(log_p, 6),
            "probability": math.exp(log_p),
            "lut_path": state.get("lut_path"),
            "lut_device": state.get("lut_device"),
            **cost,
        }
        specs.append(
            _spec(arch_name, ops, state["search_space"], state.get("input_size", 0), source)
        )
    folder = Path(arch_dir) if arch_dir else arch_registry_dir()
    for spec in specs:  # check every spec and name before the first write
        spec.validate()
        if spec.name in ARCHS or (folder / f"{spec.name}.json").exists():
            raise FileExistsError(
                f"architecture {spec.name!r} already exists (built-in or in {folder}); "
                "choose another --architecture_name"
            )
    records = []
    for spec in specs:
        path = save_arch(spec, arch_dir)
        logger.info("saved architecture %s to %s", spec.name, path)
        records.append(
            {
                "name": spec.name,
                "sampling": spec.source["sampling"],
                "ops": list(spec.ops),
                "search_space": spec.search_space,
                "probability": spec.source["probability"],
                "predicted_latency_ms": spec.source.get("predicted_latency_ms"),
                "path": str(path),
            }
        )
    return records


def _read_run_lut(run_dir: Path):
    path = run_dir / LUT_FILE
    if not path.is_file():
        logger.warning("%s is absent: no predicted latency for the sampled architectures", path)
        return None
    return load_table(path)


def load_table(path: str | Path):
    """Read and check a cost table (:meth:`LatencyLookupTable.load`)."""
    from supernet_functions.latency.table import LatencyLookupTable

    return LatencyLookupTable.load(path)


def run_sampling(cfg) -> list[dict[str, Any]]:
    """``--train_or_sample sample``: the run ``--run_name`` under ``--log_dir``, by default the latest
    real search (:func:`find_latest_run`); the first line on stderr names the run and why.

    With ``--log_dir`` at its default, the latest run is looked for in every folder beside it
    (``runs/*/<run>``), so ``sample`` finds what ``train --preset smoke`` wrote to
    ``runs/supernet_smoke`` as well as the default ``runs/supernet``.
    """
    from supernet_functions.config_for_supernet import SupernetConfig

    default_log_dir = SupernetConfig.__dataclass_fields__["log_dir"].default
    latest_under = None
    if cfg.run_name:
        run_dir = Path(cfg.log_dir) / cfg.run_name
    elif Path(cfg.log_dir) == Path(default_log_dir):
        latest_under = Path(default_log_dir).parent
        run_dir = find_latest_run(latest_under, nested=True)
    else:
        latest_under = Path(cfg.log_dir)
        run_dir = find_latest_run(latest_under)
    print(describe_run(run_dir, latest_under), file=sys.stderr, flush=True)
    mode = "argmax" if cfg.hardsampling_bool_value else "sample"
    records = sample_and_save(
        run_dir, cfg.architecture_name, mode, cfg.num_samples, cfg.seed, cfg.arch_dir or None
    )
    return [{**record, "run": str(run_dir)} for record in records]
