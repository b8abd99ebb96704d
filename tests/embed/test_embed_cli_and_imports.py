"""CLI verbs and the promise that ``import hivemem`` stays light."""

import json
import re
import subprocess
import sys

from typer.testing import CliRunner

from hivemem.app.cli import app

runner = CliRunner()


def test_model_prepare_and_info_report_the_variants():
    result = runner.invoke(app, ["model", "prepare"])  # prepared by the session: returns the manifest
    assert result.exit_code == 0, result.output
    assert "default variant" in result.output and "int8" in result.output
    info = runner.invoke(app, ["model", "info"])
    assert info.exit_code == 0 and "top-5 overlap" in info.output


def test_cache_preload_then_stats_then_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HIVEMEM_CACHE", str(tmp_path / "cli-cache.sqlite"))
    texts = tmp_path / "tools.txt"
    texts.write_text('search the web\n"send an email"\n\nread a file\n')
    result = runner.invoke(app, ["cache", "preload", str(texts)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["texts"] == 3
    stats = json.loads(runner.invoke(app, ["cache", "stats"]).output)
    assert stats["entries"] == 3
    assert json.loads(runner.invoke(app, ["cache", "clear"]).output) == {"deleted": 3}


def test_import_hivemem_loads_no_torch():
    code = (
        "import sys, hivemem; from hivemem import Embedder;"
        "e = Embedder(cache=False); e.embed(['x']); e.close();"
        "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_demo_runs_the_fleet_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """`make demo` stays true: worker processes share one service, one task library and one memory
    store (batch-added memories for several users, scoped search, real model), the table compares
    them with processes that each load model and library, and no process is left behind."""
    import psutil

    monkeypatch.setenv("HIVEMEM_SOCKET", str(tmp_path / "demo.sock"))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = runner.invoke(app, ["demo", "--workers", "2", "--quick"])
    assert result.exit_code == 0, result.output
    assert "add_batch: 60 memories for 4 users by 2 workers" in result.output
    assert "each loading model + library" in result.output and "x less with 2 workers" in result.output
    assert len(re.findall(r"^  -?\d\.\d{3}  ", result.output, re.M)) >= 3  # neighbours for the questions
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    assert not (tmp_path / "demo.sock").exists()  # the service it started was stopped
