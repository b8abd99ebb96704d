"""``hivemem memory …`` round trip: add, search, list, export, import, delete — JSON out."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from hivemem.cli import app


def test_cli_round_trip(tmp_path: Path, hm_home: Path) -> None:
    run = CliRunner()
    db, copy, dump = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite"), tmp_path / "dump.jsonl"
    out = run.invoke(
        app, ["memory", "add", "I like sushi", "--user-id", "al", "--metadata", '{"k": 1}', "--path", db]
    )
    assert out.exit_code == 0, out.output
    mid = json.loads(out.output)["results"][0]["id"]
    found = json.loads(run.invoke(app, ["memory", "search", "food", "--user-id", "al", "--path", db]).output)
    assert found["results"][0]["id"] == mid
    listed = run.invoke(app, ["memory", "list", "--filters", '{"k": {"gte": 1}}', "--path", db])
    assert [r["id"] for r in json.loads(listed.output)["results"]] == [mid]
    dump.write_text(run.invoke(app, ["memory", "export", "--path", db]).output)
    imported = run.invoke(app, ["memory", "import", str(dump), "--path", copy])
    assert json.loads(imported.output) == {"added": 1, "skipped": 0}
    again = run.invoke(app, ["memory", "list", "--user-id", "al", "--path", copy])
    assert json.loads(again.output)["results"][0]["metadata"] == {"k": 1}
    bad = run.invoke(app, ["memory", "list", "--filters", '{"k": {"bad": 1}}', "--path", db])
    assert bad.exit_code == 2 and "valid operators" in bad.output
    assert run.invoke(app, ["memory", "delete", mid, "--path", db]).exit_code == 0
    assert json.loads(run.invoke(app, ["memory", "list", "--path", db]).output)["results"] == []
