"""The picture of one or more search-vs-random evaluations: top-1 against measured latency.

Every network of every evaluation (one per latency target) is a point at its seeds' mean measured latency
and mean top-1, with error bars of one standard deviation over the seeds; colour = target, marker = kind
(searched, random, heuristic, named). The Pareto front of all networks together is a step line: the best
top-1 reached at or below each latency. Evaluations trained with different proxy recipes are not
comparable in top-1: then every proxy gets its own front, and the legend names the recipe fields in which
the targets differ. Only the searched and named networks carry labels, small, each placed at the first of
a few offsets where it overlaps no label placed before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from general_functions.io_utils import atomic_write
from supernet_functions.experiments.evaluation_stats import pareto_front

__all__ = ["MARKERS", "place_labels", "plot_evaluations", "recipe_differences"]

MARKERS = {"random": "o", "heuristic": "D", "named": "s", "searched": "*"}
SIZES = {"random": 5, "heuristic": 6, "named": 6, "searched": 12}
# label offsets (points) tried in turn: right, above, below, left, then further out
_OFFSETS = [(6, 4), (6, -10), (-6, 4), (-6, -10), (0, 12), (0, -16), (14, 14), (-14, -20), (18, -4)]


def _target_label(summary: dict[str, Any], proxy: str = "") -> str:
    target = summary.get("target_latency_ms")
    runs = summary.get("runs") or [{}]
    name = Path(runs[0].get("run", "?")).name
    label = f"target {target:g} ms" if target else f"no target ({name})"
    return f"{label} ({proxy})" if proxy else label


def recipe_differences(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Per summary, its proxy recipe's fields that differ between the summaries (``"lr 0.1"``);
    all empty when they share one recipe."""
    recipes = [s.get("recipe") or {} for s in summaries]
    keys = sorted({k for r in recipes for k in r})
    differ = [k for k in keys if len({repr(r.get(k)) for r in recipes}) > 1]
    return [", ".join(f"{k} {r.get(k)}" for k in differ) for r in recipes]


def place_labels(ax, points: Sequence[tuple[float, float]], texts: Sequence[str], fontsize=6):
    """Annotate ``points`` with ``texts`` so that no two labels overlap where an offset allows it.

    Each label takes the first offset of ``_OFFSETS`` whose box (in display coordinates) overlaps no
    label already placed; when none is free, the one with the least overlap. The points must lie inside
    the axes' limits (matplotlib draws no annotation of a point outside). Returns the annotations.
    """
    fig = ax.figure
    ax.autoscale_view()  # the final data limits, so that the boxes measured below stay where they are
    renderer = fig.canvas.get_renderer()
    placed, boxes = [], []
    for (x, y), text in zip(points, texts):
        best = None
        for dx, dy in _OFFSETS:
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx >= 0 else "right",
                fontsize=fontsize,
            )
            box = ann.get_window_extent(renderer)
            overlap = sum(
                max(0.0, min(box.x1, b.x1) - max(box.x0, b.x0))
                * max(0.0, min(box.y1, b.y1) - max(box.y0, b.y0))
                for b in boxes
            )
            if best is None or overlap < best[0]:
                if best is not None:
                    best[1].remove()
                best = (overlap, ann, box)
            else:
                ann.remove()
            if overlap == 0:
                break
        placed.append(best[1])
        boxes.append(best[2])
    return placed


def plot_evaluations(summaries: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Draw every network of ``summaries`` (each an evaluation's ``summary.json``) into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7.0, 4.8), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    proxies = recipe_differences(summaries)
    every: dict[str, list[tuple[float, float]]] = {}  # the points of each proxy recipe
    labelled = []
    for t, summary in enumerate(summaries):
        colour = colours[t % len(colours)]
        for net in summary["networks"]:
            kind = net["kind"]
            ax.errorbar(
                net["measured_latency_ms"],
                net["top1_mean"],
                xerr=net.get("measured_latency_std") or None,
                yerr=net.get("top1_std") or None,
                fmt=MARKERS.get(kind, "o"),
                ms=SIZES.get(kind, 5),
                color=colour,
                ecolor=colour,
                elinewidth=0.7,
                capsize=2,
                alpha=0.9 if kind in ("searched", "heuristic", "named") else 0.6,
            )
            point = (net["measured_latency_ms"], net["top1_mean"])
            every.setdefault(proxies[t], []).append(point)
            if kind in ("searched", "named"):
                target = summary.get("target_latency_ms")
                several = len(summaries) > 1 and target  # which target a label belongs to
                labelled.append(
                    (point, f"{net['name']}, {target:g} ms" if several else net["name"])
                )
    # one front per proxy recipe: the top-1s of two recipes are not comparable
    for points in every.values():
        front = [points[i] for i in pareto_front(points)]
        if front:
            xs = [p[0] for p in front] + [max(p[0] for p in points)]
            ys = [p[1] for p in front] + [front[-1][1]]
            ax.step(xs, ys, where="post", color="0.3", lw=0.9, ls="--", zorder=0)
    ax.set_xlabel("measured latency, batch 1 (ms)")
    ax.set_ylabel("test top-1 after the proxy recipe (%)")
    recipe = summaries[0].get("recipe", {}) if summaries else {}
    shared = "" if len(every) == 1 else "; one front per proxy"
    ax.set_title(
        f"searched vs random; proxy {recipe.get('dataset', '?')}, "
        f"{recipe.get('epochs', '?')} epochs; bars: 1 std over seeds{shared}",
        fontsize=8,
    )
    handles = [
        Line2D(
            [], [], color=colours[t % len(colours)], marker="o", ls="", label=_target_label(s, p)
        )
        for t, (s, p) in enumerate(zip(summaries, proxies))
    ]
    handles += [
        Line2D([], [], color="0.3", marker=m, ls="", label=kind) for kind, m in MARKERS.items()
    ]
    handles.append(Line2D([], [], color="0.3", ls="--", lw=0.9, label="Pareto front"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    place_labels(ax, [p for p, _ in labelled], [name for _, name in labelled])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path
