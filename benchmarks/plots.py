"""PNG charts for the benchmarks: each script draws its figures next to its final JSON line.

    from plots import add_plot_options, bars, lines
    add_plot_options(parser)                       # --plot-dir (default docs/img), --no-plots
    bars(args, "embed_throughput", "Engine throughput", ["a", "b"], {"texts/s": [1.0, 2.0]}, ylabel="texts/s")

matplotlib comes with the ``bench`` extra and is imported only here, on first use: without it a
benchmark still prints its table and JSON line and says that the charts were skipped. The charts
are small (about 100 dpi, a few tens of KB) so that docs/img/ can hold them in git.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "docs" / "img"
SIZE = (6.4, 3.6)
DPI = 100


def add_plot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plot-dir", type=Path, default=DEFAULT_DIR, help="where the PNG charts go (default: docs/img)"
    )
    parser.add_argument("--no-plots", action="store_true", help="print the table and JSON only")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _target(args: argparse.Namespace | None, name: str) -> Path | None:
    if args is not None and getattr(args, "no_plots", False):
        return None
    directory = Path(getattr(args, "plot_dir", None) or DEFAULT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.png"


def _save(fig: Any, plt: Any, path: Path, note: str | None) -> Path:
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: stable files
    plt.close(fig)
    print(f"plot: {path}")
    return path


def bars(
    args: argparse.Namespace | None,
    name: str,
    title: str,
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    ylabel: str,
    fmt: str = "{:.0f}",
    labels: dict[str, Sequence[str]] | None = None,
    note: str | None = None,
    horizontal: bool = False,
) -> Path | None:
    """Bars per category; several series are drawn side by side. Each bar is labelled with its
    value (``fmt``) or with the series' own text in ``labels``."""
    path = _target(args, name)
    plt = _pyplot() if path else None
    if plt is None:
        if path:
            print(f"plot {name}: skipped (matplotlib is not installed: pip install 'hivemem[bench]')")
        return None
    size = (8.0, 1.2 + 0.42 * len(categories) * len(series)) if horizontal else SIZE
    fig, ax = plt.subplots(figsize=size)
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        pos = [i + (k - (len(series) - 1) / 2) * width for i in range(len(categories))]
        draw = ax.barh if horizontal else ax.bar
        rects = draw(pos, values, width, label=label if len(series) > 1 else None)
        text = (labels or {}).get(label) or [fmt.format(v) for v in values]
        ax.bar_label(rects, labels=list(text), fontsize=7, padding=2)
    ticks = range(len(categories))
    if horizontal:
        ax.set_yticks(list(ticks), list(categories), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
        ax.margins(x=0.22)
    else:
        ax.set_xticks(list(ticks), list(categories), fontsize=8)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.15)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    return _save(fig, plt, path, note)


def lines(
    args: argparse.Namespace | None,
    name: str,
    title: str,
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    hlines: dict[str, float] | None = None,
    note: str | None = None,
) -> Path | None:
    """One line (with markers) per series over ``x``; ``hlines``: labelled horizontal references."""
    path = _target(args, name)
    plt = _pyplot() if path else None
    if plt is None:
        if path:
            print(f"plot {name}: skipped (matplotlib is not installed: pip install 'hivemem[bench]')")
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    for label, values in series.items():
        ax.plot(list(x), list(values), marker="o", label=label)
    for label, value in (hlines or {}).items():
        ax.axhline(value, linestyle="--", color="0.4", linewidth=1, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xticks(list(x), [f"{v:g}" for v in x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path, note)
