"""Figures written to files: training curves, an ablation's curves side by side, and photos with their generated and
reference captions."""

from __future__ import annotations

import itertools
import math

from modeling_xattn.training.data.schema import load_image


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures go to files, no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_panels(history: list[dict]) -> list[tuple[list[str], str]]:
    """The panels of `plot_training_curves`: `(keys, title)` for the losses, the validation metrics, the ranks, the
    training throughput and the learning rate."""
    keys = sorted({k for row in history for k in row if k != "step" and isinstance(row[k], (int, float))})
    losses = [k for k in keys if "loss" in k]
    ranks = [k for k in keys if "rank" in k]
    speed = [k for k in keys if k.endswith("samples_per_s")]
    gates = [k for k in keys if k.startswith("gate_")]
    metrics = [k for k in keys if k not in losses and k not in ranks and k not in speed and k not in gates
               and k != "lr"]
    panels = [(losses, "losses"), (metrics, "validation metrics"), (ranks, "validation ranks (lower is better)"),
              (speed, "training samples/s")]
    if gates:
        panels.append((gates, "cross-attention gates, tanh(g)"))
    return panels + [(["lr"], "learning rate")]


def curve_points(history: list[dict], key: str) -> list[tuple[int, float]]:
    """`(step, value)` of every row of `history` that logged `key` with a finite value."""
    return [(row["step"], row[key]) for row in history if key in row and math.isfinite(row[key])]


def plot_training_curves(history: list[dict], path: str) -> None:
    """A PNG of every loss and metric in `history` against the step: losses, the validation metrics (recall in %,
    accuracy), the ranks (mean and median, on their own axis: in the hundreds, they would flatten recall), the
    training samples per second and the learning rate."""
    plt = pyplot()

    panels = curve_panels(history)
    figure, axes = plt.subplots(1, len(panels), figsize=(24, 4.5))
    for ax, (group, title) in zip(axes, panels):
        for key in group:
            points = curve_points(history, key)
            if points:
                ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if group:
            ax.legend(fontsize=7)
    axes[-1].set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_ablation_curves(histories: dict[str, list[tuple[int, list[dict]]]], path: str,
                         metrics: list[str] | None = None) -> list[str]:
    """A PNG of every validation metric and gate against the step, one panel per metric, one colour per
    configuration and one line style per seed: `histories` maps a configuration's name to its runs' `(seed,
    history)`; `metrics` picks the panels (default: every validation metric and gate the runs logged). Runs at equal
    time end at different steps; the curves compare them at equal steps too. Returns the metrics drawn (none: no
    file is written)."""
    plt = pyplot()

    runs = [history for named in histories.values() for _, history in named]
    keys = sorted({k for history in runs for row in history for k in row
                   if (k.startswith("val_") or k.startswith("gate_")) and isinstance(row[k], (int, float))})
    keys = [k for k in metrics if k in keys] if metrics is not None else keys
    if not keys:
        return keys
    columns = min(4, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for ax, key in zip(axes.flat, keys):
        for colour, (name, named) in zip(itertools.cycle(colours), histories.items()):
            for number, (seed, history) in enumerate(named):
                points = curve_points(history, key)
                if points:
                    ax.plot(*zip(*points), color=colour, linestyle=styles[number % len(styles)],
                            marker="." if len(points) < 30 else None, label=f"{name}, seed {seed}")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    legend = {}  # every run once, whichever panels it has (a model without cross-attention has no gates)
    for ax in axes.flat:
        handles, labels = ax.get_legend_handles_labels()
        legend.update(zip(labels, handles))
    labels, handles = list(legend), list(legend.values())
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    figure.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 4), 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return keys


def plot_caption_samples(images, predictions: list[str], references: list[list[str]], path: str, columns: int = 3):
    """A PNG grid: each photo above its generated caption and its reference captions."""
    import textwrap

    plt = pyplot()


    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(2 * rows, columns, figsize=(4.6 * columns, 7.0 * rows), squeeze=False,
                                gridspec_kw={"height_ratios": [3, 2] * rows})
    for ax in axes.flat:
        ax.axis("off")
    for index, (image, predicted, refs) in enumerate(zip(images, predictions, references)):
        row, column = divmod(index, columns)
        axes[2 * row, column].imshow(load_image(image).convert("RGB"))
        lines = textwrap.wrap(f"generated: {predicted}", 52) + ["references:"]
        for reference in refs[:5]:
            lines += textwrap.wrap(f"- {reference}", 52)
        axes[2 * row + 1, column].text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8,
                                       transform=axes[2 * row + 1, column].transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
