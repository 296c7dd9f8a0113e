"""A run's curves in one picture, ``curves.png`` beside its ``metrics.csv``.

A training run gets loss and top-1 per epoch; a search gets them too (weight steps, theta steps, the
drawn and argmax paths), plus the normalised entropy of softmax(thetas) (1: uniform, 0: one op per
layer) and the table's prediction for the searched layers (expected under softmax(thetas), argmax).
Both trainers redraw it after every epoch from the rows they logged (a drawing takes 0.1-0.2 s on a
2-core CPU; importing matplotlib 0.4 s once per process). Without matplotlib a run says so in one log
line and trains on; ``FBNET_CURVES=0`` skips the drawing, and the search's TensorBoard heat map of
softmax(thetas) (:func:`pictures_enabled`; the test suite sets it). For a run folder
that has a ``metrics.csv`` (older runs included)::

    python -m general_functions.curves RUN_DIR [RUN_DIR ...]      # (re)draws RUN_DIR/curves.png
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .io_utils import atomic_write

__all__ = ["CURVES_FILE", "Curves", "draw_curves", "read_rows"]

logger = logging.getLogger(__name__)

CURVES_FILE = "curves.png"
ENTROPY = "search/thetas_normalised_entropy"
# search/{expected,argmax,uniform}_layers_<cost>; runs before the rename logged them without "layers_"
_COST = re.compile(r"^search/(expected|argmax|uniform)_(?:layers_)?(?P<tag>.+)$")
# (title, [(column, label)]) per panel; a panel is drawn when one of its columns holds a value
_TRAINING = [
    ("loss", [("train/loss", "train"), ("test/loss", "test")]),
    ("top-1 (%)", [("train/top1", "train"), ("test/top1", "test")]),
]
_SEARCH = [
    (
        "loss",
        [
            ("train_w/loss", "weight steps"),
            ("train_thetas/loss", "theta steps"),
            ("held_out/loss", "held-out"),
        ],
    ),
    (
        "top-1 (%)",
        [
            ("train_w/top1", "weight steps"),
            ("train_thetas/top1", "theta steps"),
            ("held_out/top1", "held-out"),
            ("paths/sampled_top1_mean", "drawn paths (mean)"),
            ("paths/argmax_top1", "argmax path"),
        ],
    ),
]


def pictures_enabled() -> bool:
    """False when ``FBNET_CURVES=0``: runs then draw no pictures (curves, heat maps)."""
    return os.environ.get("FBNET_CURVES", "1") != "0"


class Curves:
    """Redraws ``run_dir/curves.png`` from a run's metric rows (:meth:`draw`), on rank 0 only."""

    def __init__(self, run_dir: str | Path, log: logging.Logger = logger, enabled: bool = True):
        self.path = Path(run_dir) / CURVES_FILE
        self.figure = None
        if enabled and pictures_enabled():
            self.figure = _figure_class()
            if self.figure is None:
                log.info("no %s: matplotlib is not installed (pip install matplotlib)", CURVES_FILE)

    def draw(self, rows: Sequence[dict[str, Any]]) -> None:
        if self.figure is not None and rows:
            draw_curves(rows, self.path, self.figure)


def _figure_class():
    """matplotlib's ``Figure`` (it saves a PNG through the Agg canvas: no pyplot, no backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def read_rows(run_dir: str | Path) -> list[dict[str, str]]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: Sequence[dict[str, Any]], column: str, offset: int) -> tuple[list, list]:
    """(epochs, values) of ``column``, empty cells (or a cell a row lacks) left out."""
    points = [
        (int(float(r["step"])) + offset, float(r[column]))
        for r in rows
        if r.get(column) not in (None, "")
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _panels(columns: set[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The panels of a run with these metric columns: a search's or a training's."""
    if "train_w/loss" not in columns:
        return _TRAINING
    entropy = ("softmax(thetas) entropy / ln K (1: uniform)", [(ENTROPY, "mean over layers")])
    costs: dict[str, list[tuple[str, str]]] = {}
    for column in sorted(columns):
        if match := _COST.match(column):
            label = "uniform thetas" if match[1] == "uniform" else match[1]
            costs.setdefault(match["tag"], []).append((column, label))
    panels = [*_SEARCH, entropy]
    for tag, lines in costs.items():
        unit = tag.removeprefix("latency_")
        what = f"latency ({unit})" if unit != tag else tag
        panels.append((f"predicted {what} of the searched layers", lines))
    return panels


def draw_curves(rows: Sequence[dict[str, Any]], path: str | Path, figure=None) -> Path:
    """Draw the curves of ``rows`` (metrics.csv rows, strings or numbers) to ``path``, atomically."""
    figure = figure or _figure_class()
    if figure is None:
        raise ImportError(f"drawing {CURVES_FILE} needs matplotlib (pip install matplotlib)")
    from matplotlib.ticker import MaxNLocator

    columns = {c for r in rows for c in r}
    panels = _panels(columns)
    # epoch e is logged at step e; searches written with checkpoint format 1 logged it at e - 1
    offset = 1 if rows and int(float(rows[0]["step"])) == 0 else 0
    warmup_end = _series(rows, "warmup/train_top1", offset)[0]  # logged in its last epoch only
    epochs = [int(float(r["step"])) + offset for r in rows]
    grid = (len(panels) + 1) // 2, 2
    height = 2.9 * grid[0] + 0.6  # inches: 2.9 per row of panels, the margins fixed in inches
    fig = figure(figsize=(9, height), dpi=72)
    axes = list(fig.subplots(*grid, squeeze=False).flat)
    fig.subplots_adjust(
        left=0.07, right=0.98, bottom=0.45 / height, top=1 - 0.55 / height, hspace=0.4, wspace=0.2
    )
    for ax, (title, lines) in zip(axes, panels):
        drawn = False
        for column, label in lines:
            at, values = _series(rows, column, offset)
            if values:
                ax.plot(at, values, marker=".", label=label)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not in this run's metrics.csv", ha="center", transform=ax.transAxes)
            ax.set_yticks([])
        elif len(lines) > 1:
            ax.legend(fontsize=7)
        if warmup_end and drawn:  # the weights train alone until here
            ax.axvline(warmup_end[-1] + 0.5, color="0.6", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:  # an odd number of panels leaves one empty
        ax.set_visible(False)
    note = ", dashed: end of the warm-up" if warmup_end else ""
    fig.suptitle(f"{Path(path).parent.name}{note}", fontsize=10)
    atomic_write(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}))
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m general_functions.curves",
        description="Draw RUN_DIR/curves.png from RUN_DIR/metrics.csv (a search or a training run).",
        allow_abbrev=False,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    for run_dir in parser.parse_args(argv).run_dirs:
        print(draw_curves(read_rows(run_dir), Path(run_dir) / CURVES_FILE))


if __name__ == "__main__":
    main()
