"""Mem0 parity: names, arguments and return shapes from Mem0's documented behaviour, on the real
model, each test on a real SQLite file and on a real PostgreSQL schema (``location``)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from hivemem import AsyncMemory, Embedder, EmbedderLike, Memory

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def test_add_string_returns_mem0_shape(mem: Memory) -> None:
    out = mem.add("I like green tea", user_id="alice")
    assert list(out) == ["results"]
    (r,) = out["results"]
    assert r["event"] == "ADD" and r["memory"] == "I like green tea" and r["role"] == "user"
    rec = mem.get(r["id"])
    assert rec is not None
    assert rec["memory"] == "I like green tea" and rec["user_id"] == "alice"
    assert {"id", "memory", "hash", "metadata", "created_at", "updated_at"} <= set(rec)
    assert rec["hash"] == "af266e5686e3de8785f9ef6840e981c2"  # md5, as Mem0 stores it
    assert "agent_id" not in rec  # Mem0 promotes only the ids that are set


def test_messages_list_skips_system_and_keeps_roles(mem: Memory) -> None:
    out = mem.add(
        [
            {"role": "system", "content": "You are helpful"},
            {"role": "user", "content": "I moved to Lisbon", "name": "al"},
            {"role": "assistant", "content": "Lisbon is lovely"},
        ],
        agent_id="travel",
        metadata={"source": "chat"},
    )
    res = out["results"]
    assert [(r["memory"], r["role"], r["actor_id"]) for r in res] == [
        ("I moved to Lisbon", "user", "al"),
        ("Lisbon is lovely", "assistant", None),
    ]
    rec = mem.get(res[0]["id"])
    assert rec["metadata"] == {"source": "chat"} and rec["agent_id"] == "travel" and rec["actor_id"] == "al"


def test_duplicate_in_scope_returns_existing_id_with_event_none(mem: Memory) -> None:
    first = mem.add("Prefers window seats", user_id="u")["results"][0]
    again = mem.add("Prefers window seats", user_id="u")["results"][0]
    assert again == {**first, "event": "NONE"}
    other_scope = mem.add("Prefers window seats", user_id="v")["results"][0]
    assert other_scope["event"] == "ADD" and other_scope["id"] != first["id"]
    assert mem.count() == 2


def test_search_ranks_by_meaning_and_scopes(mem: Memory) -> None:
    mem.add_batch(
        [
            {"messages": "I am allergic to peanuts", "user_id": "alice"},
            {"messages": "My favourite sport is tennis", "user_id": "alice"},
            {"messages": "I am allergic to cats", "user_id": "bob"},
        ]
    )
    res = mem.search("food allergies", filters={"user_id": "alice"}, top_k=5)["results"]
    assert [r["memory"] for r in res] == ["I am allergic to peanuts", "My favourite sport is tennis"]
    assert res[0]["score"] > res[1]["score"]
    assert mem.search("food allergies", user_id="bob")["results"][0]["user_id"] == "bob"
    assert len(mem.search("anything", filters={"user_id": "alice"}, top_k=1)["results"]) == 1
    assert mem.search("food allergies", user_id="alice", threshold=0.99)["results"] == []


def test_get_all_update_history_delete(mem: Memory) -> None:
    mid = mem.add("Lives in Berlin", user_id="c", metadata={"k": 1})["results"][0]["id"]
    assert [r["id"] for r in mem.get_all(filters={"user_id": "c"})["results"]] == [mid]
    assert mem.update(mid, text="Lives in Munich") == {"message": "Memory updated successfully!"}
    assert mem.search("Bavaria city", user_id="c")["results"][0]["memory"] == "Lives in Munich"
    mem.update(mid, metadata={"k": 2})
    assert mem.get(mid)["metadata"] == {"k": 2}
    assert mem.delete(mid) == {"message": "Memory deleted successfully!"}
    assert mem.get(mid) is None
    events = [(h["event"], h["old_memory"], h["new_memory"], h["is_deleted"]) for h in mem.history(mid)]
    assert events == [
        ("ADD", None, "Lives in Berlin", False),
        ("UPDATE", "Lives in Berlin", "Lives in Munich", False),
        ("UPDATE", "Lives in Munich", "Lives in Munich", False),
        ("DELETE", "Lives in Munich", None, True),
    ]


def test_delete_all_and_reset(mem: Memory) -> None:
    mem.add_batch([{"messages": f"fact {i}", "user_id": "d" if i % 2 else "e"} for i in range(6)])
    with pytest.raises(ValueError, match="reset"):
        mem.delete_all()
    mem.delete_all(user_id="d")
    assert {r["user_id"] for r in mem.get_all()["results"]} == {"e"}
    mem.reset()
    assert mem.count() == 0 and mem.search("fact", user_id="e")["results"] == []


def test_bad_input_is_refused_and_nothing_written(mem: Memory) -> None:
    with pytest.raises(ValueError, match="user_id, agent_id or run_id"):
        mem.add("no scope")
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        mem.add("x", user_id="u", metadata={"when": object()})
    with pytest.raises(TypeError, match=r"messages\[0\]\['content'\] must be a string"):
        mem.add([{"role": "user", "content": 42}], user_id="u")
    with pytest.raises(ValueError, match="valid operators: eq, ne, in"):
        mem.search("q", filters={"user_id": "u", "n": {"gtee": 1}})
    with pytest.raises(ValueError, match="no LLM is configured"):
        mem.add("x", user_id="u", infer=True)
    # one bad item anywhere in a batch: nothing of the batch is stored
    with pytest.raises(ValueError, match=r"items\[2\]: at least one of"):
        mem.add_batch(
            [{"messages": "a", "user_id": "u"}, {"messages": "b", "user_id": "u"}, {"messages": "c"}]
        )
    assert mem.count() == 0
    assert mem.get("no-such-id") is None
    with pytest.raises(ValueError, match="not found"):
        mem.delete("no-such-id")
    with pytest.raises(ValueError, match="not found"):
        mem.update("no-such-id", text="x")


def test_other_model_is_refused(mem: Memory, location: str, hash_embedder: EmbedderLike) -> None:
    mem.add("fact", user_id="u")
    with pytest.raises(ValueError, match="different models"):
        Memory(location, embedder=hash_embedder)


@pytest.mark.model  # embeds with the real model, without a fixture that says so
def test_from_config_and_lazy_embedder(location: str, hm_home: Path) -> None:
    if location.startswith("postgresql://"):
        store = {"provider": "pgvector", "config": {"connection_string": location}}
    else:
        store = {"provider": "sqlite", "config": {"path": location}}
    m = Memory.from_config({"vector_store": store})
    assert m._embedder is None and m.get_all()["results"] == []  # listing loads no model
    m.add("config works", run_id="r1")
    assert m.search("config", run_id="r1")["results"][0]["memory"] == "config works"
    m.close()
    with pytest.raises(ValueError, match="unknown config keys"):
        Memory.from_config({"vektor_store": {}})
    with pytest.raises(ValueError, match="not available"):
        Memory.from_config({"vector_store": {"provider": "qdrant"}})


def test_async_memory(location: str, embedder: Embedder) -> None:
    async def main() -> None:
        async with AsyncMemory(location, embedder=embedder) as m:
            outs = await asyncio.gather(*(m.add(f"async fact number {i}", user_id="z") for i in range(10)))
            assert all(o["results"][0]["event"] == "ADD" for o in outs)
            res = await m.search("async fact number 3", user_id="z", top_k=1)
            assert res["results"][0]["memory"] == "async fact number 3"
            assert len((await m.get_all(filters={"user_id": "z"}))["results"]) == 10

    asyncio.run(main())


def test_file_is_wal_with_integrity(tmp_path: Path, embedder: Embedder) -> None:
    mem = Memory(tmp_path / "wal.sqlite", embedder=embedder)
    mem.add("x marks the spot", user_id="u")
    mem.close()
    db = sqlite3.connect(tmp_path / "wal.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
