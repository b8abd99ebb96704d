"""Caller-chosen ids (``add_batch`` items' ``"id"``): kept, validated, and never silently replaced.
Storage logic only, so the hash embedder stands in for the model (see conftest); on both backends."""

from __future__ import annotations

import pytest

from hivemem import Memory

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


@pytest.fixture
def hmem(location: str, hash_embedder) -> Memory:
    m = Memory(location, embedder=hash_embedder)
    yield m
    m.close()


def test_given_ids_are_kept_and_generated_ones_are_uuids(hmem: Memory) -> None:
    out = hmem.add_batch(
        [
            {"messages": "likes tea", "user_id": "al", "id": "doc-1"},
            {"messages": "likes jazz", "user_id": "al"},
        ]
    )["results"]
    assert out[0]["id"] == "doc-1" and len(out[1]["id"]) == 36
    assert hmem.get("doc-1")["memory"] == "likes tea"
    again = hmem.add_batch([{"messages": "likes tea", "user_id": "al", "id": "doc-1"}])["results"]
    assert again == [{**out[0], "event": "NONE"}]


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"id": 5}, "items\\[1\\]: id must be a string"),
        ({"id": ""}, "1 to 256 characters, got 0"),
        ({"id": "x" * 257}, "1 to 256 characters, got 257"),
        ({"id": "a\nb"}, "control characters"),
        (
            {"id": "a", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "2 non",
        ),
    ],
)
def test_bad_ids_fail_before_anything_is_written(hmem: Memory, item: dict, error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        hmem.add_batch([{"messages": "ok", "user_id": "al"}, {"messages": "fine", "user_id": "al", **item}])
    assert hmem.count() == 0


def test_a_given_id_never_becomes_another_memory(hmem: Memory) -> None:
    hmem.add_batch([{"messages": "likes tea", "user_id": "al", "id": "a"}])
    with pytest.raises(ValueError, match="already stored in this scope as memory 'a'"):
        hmem.add_batch(
            [{"messages": "new", "user_id": "al"}, {"messages": "likes tea", "user_id": "al", "id": "b"}]
        )
    with pytest.raises(ValueError, match="already stored in this scope as memory 'c'"):
        hmem.add_batch(
            [
                {"messages": "same", "user_id": "al", "id": "c"},
                {"messages": "same", "user_id": "al", "id": "d"},
            ]
        )
    with pytest.raises(ValueError, match="'a' is already taken"):  # the id names a memory of another scope
        hmem.add_batch(
            [{"messages": "new", "user_id": "bo"}, {"messages": "other", "user_id": "bo", "id": "a"}]
        )
    assert hmem.count() == 1
    # the same text under the same id in another scope is fine: ids are global, texts per scope
    assert hmem.add_batch([{"messages": "likes tea", "user_id": "bo"}])["results"][0]["event"] == "ADD"


# -- issue 26 (8): an id is never reused across scopes, and history stays within its scope --------


def test_a_deleted_id_is_never_given_to_another_scope(hmem: Memory) -> None:
    hmem.add_batch([{"messages": "alice's secret plan", "user_id": "alice", "id": "doc-1"}])
    hmem.update("doc-1", "alice's revised secret plan")
    hmem.delete("doc-1")
    for item in (
        {"messages": "bob's note", "user_id": "bob", "id": "doc-1"},
        {"messages": "alice's note", "user_id": "alice", "agent_id": "helper", "id": "doc-1"},
    ):
        with pytest.raises(ValueError, match="'doc-1' was used by another user/agent/run"):
            hmem.add_batch([{"messages": "unrelated", "user_id": "bob"}, item])
    assert hmem.count() == 0 and hmem.history("doc-1", user_id="bob") == []
    # the scope that used it may use it again (delete, then re-add a document under its id)
    hmem.add_batch([{"messages": "alice's new plan", "user_id": "alice", "id": "doc-1"}])
    events = hmem.history("doc-1", user_id="alice")
    assert [e["event"] for e in events] == ["ADD", "UPDATE", "DELETE", "ADD"]
    assert hmem.history("doc-1") == events
    assert hmem.history("doc-1", user_id="bob") == []
    with pytest.raises(ValueError, match="already taken"):
        hmem.add_batch([{"messages": "bob's note", "user_id": "bob", "id": "doc-1"}])


def test_history_is_read_within_the_callers_scope(hmem: Memory) -> None:
    hmem.add_batch([{"messages": "tea", "user_id": "al", "agent_id": "a1", "id": "t"}])
    assert [e["event"] for e in hmem.history("t", user_id="al")] == ["ADD"]
    assert [e["event"] for e in hmem.history("t", user_id="al", agent_id="a1")] == ["ADD"]
    assert hmem.history("t", agent_id="a2") == [] and hmem.history("t", user_id="bo") == []
    with pytest.raises(ValueError, match="not a valid id"):
        hmem.history("t", user_id="*")


def test_events_of_an_older_store_keep_their_owner_unknown(location: str, hash_embedder) -> None:
    """A store made before events kept their scope, holding the leak itself (alice's id deleted,
    then given to bob): after the upgrade bob sees only his events, and nobody may take the id."""
    with Memory(location, embedder=hash_embedder) as m:
        m.add_batch([{"messages": "alice's secret", "user_id": "alice", "id": "x"}])
        m.delete("x")
        m.add_batch([{"messages": "kept", "user_id": "carol", "id": "y"}])
        m.delete("y")
    _make_old(location, ["x", "y"])
    _old_insert(location, "x", "bob's note", '["bob",null,null]')
    with Memory(location, embedder=hash_embedder) as m:
        assert [e["new_memory"] for e in m.history("x", user_id="bob")] == ["bob's note"]
        assert [e["event"] for e in m.history("x")] == ["ADD", "DELETE", "ADD"]  # unscoped: all of it
        assert m.history("y", user_id="carol") == []  # deleted before the upgrade: owner unknown
        with pytest.raises(ValueError, match="'y' was used"):
            m.add_batch([{"messages": "again", "user_id": "carol", "id": "y"}])
        m.update("x", "bob's new note")
        assert [e["event"] for e in m.history("x", user_id="bob")] == ["ADD", "UPDATE"]


def _make_old(location: str, ids: list[str]) -> None:
    """Turn the store into one of the layout before history kept scopes (no ``scope`` column)."""
    if location.startswith("postgresql"):
        import psycopg

        from hivemem.memory.storage.locate import resolve

        pg = resolve(location)
        with psycopg.connect(pg.conninfo, autocommit=True) as conn:
            conn.execute(f'ALTER TABLE "{pg.schema}".history DROP COLUMN scope')
            conn.execute(f"UPDATE \"{pg.schema}\".meta SET value = '1' WHERE key = 'layout'")
    else:
        import sqlite3

        with sqlite3.connect(location) as db:
            db.execute("ALTER TABLE history DROP COLUMN scope")


def _old_insert(location: str, memory_id: str, text: str, scope: str) -> None:
    """What the old code did for ``add_batch([{"id": memory_id, …}])`` in another scope."""
    cols = "id, memory_id, old_memory, new_memory, event, created_at, updated_at, is_deleted"
    if location.startswith("postgresql"):
        import psycopg

        from hivemem.memory.storage.locate import resolve

        pg = resolve(location)
        ns = f'"{pg.schema}"'
        with psycopg.connect(pg.conninfo, autocommit=True) as conn:
            vec = conn.execute(f"SELECT vec::text FROM {ns}.memories LIMIT 1").fetchone()
            conn.execute(
                f"INSERT INTO {ns}.memories (id, scope, hash, memory, user_id, created_at, updated_at, vec)"
                " VALUES (%s, %s, 'h', %s, 'bob', 'now', 'now', %s::vector)",
                (memory_id, scope, text, vec[0] if vec else "[" + ",".join(["0.25"] * 16) + "]"),
            )
            conn.execute(
                f"INSERT INTO {ns}.history ({cols}) VALUES ('e', %s, NULL, %s, 'ADD', 'now', 'now', false)",
                (memory_id, text),
            )
    else:
        import sqlite3

        with sqlite3.connect(location) as db:
            vec = db.execute("SELECT vec FROM memories LIMIT 1").fetchone()
            db.execute(
                "INSERT INTO memories (id, scope, hash, memory, user_id, created_at, updated_at, vec)"
                " VALUES (?, ?, 'h', ?, 'bob', 'now', 'now', ?)",
                (memory_id, scope, text, vec[0] if vec else bytes(4 * 16)),
            )
            db.execute(
                f"INSERT INTO history ({cols}) VALUES ('e', ?, NULL, ?, 'ADD', 'now', 'now', 0)",
                (memory_id, text),
            )
