"""``hivemem memory …``: add, search, list, delete — JSON out — on each backend; and export/import
moving a store SQLite → PostgreSQL → SQLite with its ids, timestamps, metadata and history."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from hivemem import Embedder, Memory
from hivemem.app.cli import app
from hivemem.memory import records


def test_cli_round_trip(location: str, tmp_path: Path, hm_home: Path) -> None:
    run = CliRunner()
    db, copy, dump = location, str(tmp_path / "b.sqlite"), tmp_path / "dump.jsonl"
    out = run.invoke(
        app, ["memory", "add", "I like sushi", "--user-id", "al", "--metadata", '{"k": 1}', "--url", db]
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


def test_cli_add_takes_a_timestamp(tmp_path: Path, hm_home: Path) -> None:
    """``memory add --timestamp``: Unix seconds or an ISO date/datetime become created_at, as the
    library reads the same text (8 digits: the basic date, not seconds in 1970); a malformed one is
    refused naming it (exit 2, one line, nothing stored)."""
    run, db = CliRunner(), str(tmp_path / "t.sqlite")
    want = {
        "1683554160": "2023-05-08T13:56:00.000000+00:00",
        "2023-05-08": "2023-05-08T00:00:00.000000+00:00",
        "20230508": "2023-05-08T00:00:00.000000+00:00",
        "99999999.5": "1973-03-03T09:46:39.500000+00:00",
    }
    assert all(records.created(stamp) == at for stamp, at in want.items())
    for stamp in want:
        args = ["memory", "add", f"went out {stamp}", "--user-id", "al", "--timestamp", stamp, "--path", db]
        out = run.invoke(app, args)
        assert out.exit_code == 0, out.output
    listed = json.loads(run.invoke(app, ["memory", "list", "--path", db]).output)["results"]
    assert [r["created_at"] for r in listed] == list(want.values())
    bad = run.invoke(app, ["memory", "add", "never", "--user-id", "al", "--timestamp", "soon", "--path", db])
    assert bad.exit_code != 0 and "timestamp" in bad.output and "Traceback" not in bad.output
    assert len(json.loads(run.invoke(app, ["memory", "list", "--path", db]).output)["results"]) == len(want)


def test_export_import_moves_a_store_between_backends(
    tmp_path: Path, pg_url: Callable[[], str], embedder: Embedder
) -> None:
    run = CliRunner()
    src, pg, back = str(tmp_path / "src.sqlite"), pg_url(), str(tmp_path / "back.sqlite")
    m = Memory(src, embedder=embedder)
    meta = {"sev": 3, "big": 1e300, "ü": "é"}
    kept = m.add_batch(
        [
            {"messages": "Allergic to peanuts", "user_id": "al", "metadata": meta},
            {"messages": [{"role": "assistant", "content": "Noted, no peanuts", "name": "bot"}],
             "agent_id": "diet", "run_id": "r1"},
            {"messages": "Lives in Lisbon", "user_id": "al"},
            {"messages": "Plays chess", "user_id": "bo", "metadata": {"tags": ["a", 1]}},
        ]
    )["results"]  # fmt: skip
    m.update(kept[2]["id"], text="Lives in Porto", metadata={"moved": True})
    m.delete(kept[3]["id"])
    m.close()

    def export(where: str) -> list[dict]:
        out = run.invoke(app, ["memory", "export", "--path", where])
        assert out.exit_code == 0, out.output
        return [json.loads(line) for line in out.output.splitlines()]

    first = export(src)
    assert [r.get("memory") for r in first] == [
        "Allergic to peanuts",
        "Noted, no peanuts",
        "Lives in Porto",
        None,
    ]
    assert [e["event"] for e in first[2]["history"]] == ["ADD", "UPDATE"]
    assert first[3]["deleted"] and [e["event"] for e in first[3]["history"]] == ["ADD", "DELETE"]
    dump = tmp_path / "first.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in first))
    for target in (pg, back):
        done = run.invoke(app, ["memory", "import", str(dump), "--url", target])
        assert json.loads(done.output) == {"added": 3, "skipped": 0}, done.output
        assert export(target) == first  # ids, timestamps, metadata, history: all kept, in order
        again = run.invoke(app, ["memory", "import", str(dump), "--url", target])
        assert json.loads(again.output) == {"added": 0, "skipped": 3}
        dump = tmp_path / "second.jsonl"  # the next hop starts from what PostgreSQL exported
        dump.write_text(run.invoke(app, ["memory", "export", "--path", target]).output)
    moved = Memory(pg, embedder=embedder)
    hit = moved.search("nut allergy", user_id="al", top_k=1)["results"][0]
    assert hit["id"] == kept[0]["id"] and hit["metadata"] == meta
    assert moved.history(kept[3]["id"])[-1]["event"] == "DELETE"
    moved.close()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(dump.read_text() + '{"memory": "no scope here"}\n')
    out = run.invoke(app, ["memory", "import", str(bad), "--path", str(tmp_path / "never.sqlite")])
    assert out.exit_code == 2 and "line 5: at least one of user_id" in out.output
    assert Memory(str(tmp_path / "never.sqlite")).count() == 0  # a bad line: nothing imported
