"""What a search writes besides its checkpoints: ``thetas.json``, ``arch.json``, TensorBoard images.

``thetas.json`` holds the thetas, their softmax and the table's predictions after each epoch;
``arch.json`` is the argmax architecture of the last thetas, in the architecture-file format that
``architecture_main_file.py --architecture_name`` reads.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from fbnet_building_blocks.arch_specs import ArchSpec
from fbnet_building_blocks.search_space import get_search_space
from general_functions.curves import pictures_enabled
from general_functions.io_utils import atomic_write_json
from general_functions.logging_utils import MetricWriter
from supernet_functions.sampling import THETAS_FORMAT, predicted_cost, sample_ops

__all__ = ["argmax_spec", "git_sha", "latency_summary", "log_thetas", "thetas_state", "write_arch"]


def _heatmap(probs: torch.Tensor, ops: list[str], title: str):
    """A layers x ops image of softmax(thetas) as an HWC uint8 array (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = probs.shape[0]
    fig, ax = plt.subplots(figsize=(0.55 * len(ops) + 2.0, 0.28 * layers + 1.6), dpi=80)
    im = ax.imshow(probs.numpy(), aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(layers), [str(i) for i in range(layers)], fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def thetas_state(model, epoch, temperature, lut, lut_source, run_dir) -> dict[str, Any]:
    """What ``thetas.json`` holds after ``epoch`` (epochs done): thetas, softmax, the table's sums."""
    probs = model.probabilities()
    latency = model.latency_matrix()
    argmax_ops = sample_ops(model.thetas_matrix(), model.candidate_ops, "argmax")
    return {
        "format": THETAS_FORMAT,
        "run": run_dir.name,
        "epoch": epoch,
        "search_space": model.space.name,
        "input_size": model.input_size,
        "candidate_ops": list(model.candidate_ops),
        "temperature": temperature,
        "thetas": model.thetas_matrix().tolist(),
        "probabilities": probs.tolist(),
        "expected_layers_cost": float((probs * latency).sum()),
        "uniform_layers_cost": float(latency.mean(dim=1).sum()),
        "argmax_ops": argmax_ops,
        "argmax_cost": predicted_cost(lut, argmax_ops),
        "lut_path": lut_source,
        "lut_device": lut.meta.get("device_name") or lut.meta.get("device"),
        "lut_unit": lut.meta.get("unit", "ms"),
    }


def latency_summary(state: dict[str, Any], lut) -> dict[str, float]:
    """Whole-network predictions of a ``thetas.json`` state: argmax, expected, uniform-thetas expected."""
    return {
        "argmax_cost": state["argmax_cost"]["predicted_cost"],
        "expected_cost": state["expected_layers_cost"] + lut.fixed_cost,
        "uniform_cost": state["uniform_layers_cost"] + lut.fixed_cost,
    }


def log_thetas(writer: MetricWriter, model, epoch: int, ops: list[str]) -> None:
    """softmax(thetas) after ``epoch`` (epochs done) to TensorBoard: per-layer histograms, a heatmap."""
    if writer.tb is None:
        return
    probs = model.probabilities()
    for i, row in enumerate(probs):
        writer.tb.add_histogram(f"thetas/layer_{i:02d}", row.numpy(), epoch)
    if pictures_enabled():  # matplotlib: most of a short run's epoch
        image = _heatmap(probs, ops, f"softmax(thetas), epoch {epoch}")
        writer.tb.add_image("thetas/heatmap", image, epoch, dataformats="HWC")
    writer.tb.flush()


def argmax_spec(state: dict[str, Any], run_dir: Path) -> ArchSpec:
    """The argmax architecture of a ``thetas.json`` state, with where it came from."""
    space = get_search_space(state["search_space"])
    return ArchSpec(
        name=f"{run_dir.name}_argmax",
        ops=state["argmax_ops"],
        search_space=state["search_space"],
        input_size=None if state["input_size"] == space.input_size else state["input_size"],
        source={
            "run": str(run_dir),
            "epoch": state["epoch"],
            "sampling": "argmax",
            "lut_path": state["lut_path"],
            "lut_device": state["lut_device"],
            **state["argmax_cost"],
        },
    )


def write_arch(run_dir: Path, state: dict[str, Any]) -> None:
    """``arch.json``: the argmax architecture of ``state`` (the last thetas), as an architecture file."""
    atomic_write_json(run_dir / "arch.json", argmax_spec(state, run_dir).to_dict())
