"""benchmarks/plots.py draws real PNGs, and skips (saying so) when asked to."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import plots  # noqa: E402

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

PNG = b"\x89PNG\r\n\x1a\n"


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    plots.add_plot_options(ap)
    return ap.parse_args(["--plot-dir", str(tmp_path), *extra])


def test_bars_and_lines_write_small_pngs(tmp_path: Path, capsys) -> None:
    args = _args(tmp_path)
    a = plots.bars(args, "b", "Bars", ["x", "y"], {"one": [1.0, 2.0], "two": [3.0, 4.0]}, ylabel="v")
    b = plots.bars(
        args, "h", "Horizontal", ["x"], {"v": [5.0]}, ylabel="v", labels={"v": ["5 (1×)"]}, horizontal=True
    )
    c = plots.lines(args, "l", "Lines", [10, 100, 1000], {"s": [1, 2, 3]}, xlabel="n", ylabel="v", logx=True,
                    hlines={"ref": 2.5}, note="a note")  # fmt: skip
    for path in (a, b, c):
        assert path is not None and path.read_bytes().startswith(PNG) and path.stat().st_size < 200_000
    assert f"plot: {c}" in capsys.readouterr().out


def test_no_plots_writes_nothing(tmp_path: Path) -> None:
    assert plots.bars(_args(tmp_path, "--no-plots"), "b", "B", ["x"], {"v": [1.0]}, ylabel="v") is None
    assert list(tmp_path.iterdir()) == []
