"""The report's charts, drawn by matplotlib's SVG backend, as SVG text.

Reproducible: a fixed hash salt for the ids, no creation date, text kept as text (not glyph
paths), so the same data give the same bytes with the same matplotlib version.
"""
from __future__ import annotations

import io
import re

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

STYLE = {"svg.hashsalt": "imdb-lstm-report", "svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": "#e5e5e5"}
SIZE = (4.8, 3.0)  # inches


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # no XML prolog: the same text is inlined in the HTML
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S).strip() + "\n"  # RDF boilerplate


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
               diagonal: bool = False, integer_x: bool = False) -> str:
    """One line per series (with markers when it has few points); a legend from two series on."""
    with rc_context(STYLE):
        fig = Figure(figsize=SIZE, layout="constrained")
        ax = fig.add_subplot()
        if diagonal:
            ax.plot([0, 1], [0, 1], linestyle="--", color="#bbbbbb", linewidth=1)
        for name, points in series.items():
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.plot(xs, ys, label=name, linewidth=1.6, marker="o" if len(points) <= 30 else None, markersize=3)
        if x_range:
            ax.set_xlim(*x_range)
        if y_range:
            ax.set_ylim(*y_range)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if len(series) > 1:
            ax.legend(frameon=False)
        return _svg(fig)


def confusion_chart(title: str, m: list[list[int]], labels: list[str]) -> str:
    """A heat map of counts, each cell with its share of the actual class."""
    side = max(3.0, 0.55 * len(labels) + 1.4)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(side + 0.2, side), layout="constrained")
        ax = fig.add_subplot()
        peak = max(max(r) for r in m) or 1
        ax.imshow(m, cmap="Blues", vmin=0, vmax=peak)
        for i, row in enumerate(m):
            total = sum(row) or 1
            for j, v in enumerate(row):
                ax.text(j, i, f"{v}\n{100 * v / total:.1f}%", ha="center", va="center", fontsize=7 if len(labels) > 4 else None,
                        color="white" if v / peak > 0.55 else "#222222")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set(title=title, xlabel="predicted", ylabel="actual")
        return _svg(fig)


def bar_chart(title: str, groups: dict[str, list[tuple[str, float, int]]], xlabel: str) -> str:
    """Horizontal bars in [0, 1], grouped by label: {series: [(label, value, count), ...]}."""
    labels = list(dict.fromkeys(label for bars in groups.values() for label, _, _ in bars))
    height = 0.8 / max(len(groups), 1)
    with rc_context(STYLE):
        fig = Figure(figsize=(SIZE[0], 0.9 + 0.45 * len(labels) * max(len(groups), 1) ** 0.5), layout="constrained")
        ax = fig.add_subplot()
        for k, (name, bars) in enumerate(groups.items()):
            values = dict((label, (v, n)) for label, v, n in bars)
            ys = [i + (k - (len(groups) - 1) / 2) * height for i, label in enumerate(labels) if label in values]
            vs = [values[label][0] for label in labels if label in values]
            ax.barh(ys, vs, height=height, label=name)
            for y, label in zip(ys, (lb for lb in labels if lb in values)):
                v, n = values[label]
                ax.text(min(v, 1.0) + 0.01, y, f"{v:.3f} ({n})", va="center", fontsize=7)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.15)
        ax.set(title=title, xlabel=xlabel)
        if len(groups) > 1:  # below the axes, where no bar can hide it
            fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=len(groups), frameon=False)
        return _svg(fig)
