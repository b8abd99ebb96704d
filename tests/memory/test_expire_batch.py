"""Expiration (``expiration_date``, ``show_expired``, ``purge --expired``) and the all-or-nothing
``batch_update``/``batch_delete`` (issue 23 items 3 and 4), on SQLite and PostgreSQL (``location``).

The embedder here is ``HashEmbedder``, NOT a model: these tests measure storage (which rows are
stored, left out, changed, deleted, with which events), never ranking quality; a text's vector is
still a pure function of the text, so "the vector index kept exact" is checked by searching a new
text and finding its memory at cosine 1. The real model runs through the HTTP tests
(tests/service/test_http_memory.py)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memory_helpers import HashEmbedder
from typer.testing import CliRunner

from hivemem import LimitExceeded, Memory, MemoryNotFound
from hivemem.app.cli import app
from hivemem.memory.batch import MAX_BATCH_CHANGES
from hivemem.memory.records import MAX_DATE_CHARS, expiry
from hivemem.memory.storage.locate import resolve
from hivemem.memory.transfer import export_lines, import_lines

pytestmark = pytest.mark.fast  # no model or torch; PostgreSQL only where `location` is postgres

PAST = "2000-01-01"
FUTURE = "2999-12-31"


class CountingEmbedder(HashEmbedder):
    """``HashEmbedder`` that records each ``embed`` call's texts."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return super().embed(texts)


@pytest.fixture
def emb() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
def m(location: str, emb: CountingEmbedder) -> Iterator[Memory]:
    store = Memory(location, embedder=emb)
    yield store
    store.close()


def _ids(found: dict[str, Any]) -> set[str]:
    return {r["id"] for r in found["results"]}


def _add(m: Memory, text: str, **kw: Any) -> str:
    return str(m.add(text, user_id="u", **kw)["results"][0]["id"])


def _rows(m: Memory) -> list[tuple[str, str, Any]]:
    return [
        (r["id"], r["memory"], r["metadata"]) for r in m.get_all(user_id="u", show_expired=True)["results"]
    ]


def _events(m: Memory, ids: list[str]) -> list[list[str]]:
    return [[h["event"] for h in m.history(i)] for i in ids]


# -- expiration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2026-12-31", "2027-01-01T00:00:00.000000+00:00"),  # a date: the end of that day, UTC
        ("20261231", "2027-01-01T00:00:00.000000+00:00"),
        (date(2026, 2, 28), "2026-03-01T00:00:00.000000+00:00"),
        ("2026-12-31T18:00:00", "2026-12-31T18:00:00.000000+00:00"),  # naive: UTC
        ("2026-12-31 18:00", "2026-12-31T18:00:00.000000+00:00"),
        ("2026-12-31T18:00:00Z", "2026-12-31T18:00:00.000000+00:00"),
        ("2026-12-31T18:00:00+02:00", "2026-12-31T16:00:00.000000+00:00"),  # aware: converted
        (
            datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=-3))),
            "2026-01-01T04:30:00.000000+00:00",
        ),
        (None, None),
    ],
)
def test_the_time_zone_rule(given: Any, stored: str | None) -> None:
    assert expiry(given) == stored


@pytest.mark.parametrize(
    "bad",
    [
        "tomorrow",
        "2026-13-01",
        "2026-02-30",
        "31/12/2026",
        "",
        "9999-12-31",
        "0001-01-01T00:00+05:00",
        20261231,
    ],
)
def test_a_malformed_date_is_refused_naming_the_field(m: Memory, bad: Any) -> None:
    keep = _add(m, "kept as it is")
    calls = [
        lambda: m.add("new one", user_id="u", expiration_date=bad),
        lambda: m.add_batch(
            [{"messages": "a", "user_id": "u"}, {"messages": "b", "user_id": "u", "expiration_date": bad}]
        ),
        lambda: m.update(keep, expiration_date=bad),
        lambda: m.batch_update([{"memory_id": keep, "text": "changed", "expiration_date": bad}]),
    ]
    for i, call in enumerate(calls):
        with pytest.raises((ValueError, TypeError), match="expiration_date") as caught:
            call()
        if i == 1:
            assert "items[1]" in str(caught.value)
    assert _rows(m) == [(keep, "kept as it is", None)]
    assert _events(m, [keep]) == [["ADD"]]


def test_a_date_over_the_length_limit_is_a_limit(m: Memory) -> None:
    with pytest.raises(LimitExceeded, match="MAX_DATE_CHARS") as caught:
        m.add("x", user_id="u", expiration_date="2026-12-31" + " " * MAX_DATE_CHARS)
    assert caught.value.field == "expiration_date"


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_expired_memories_are_left_out_before_ranking(m: Memory, mode: str) -> None:
    old = _add(m, "the parking code is 4711", expiration_date=PAST)
    later = _add(m, "the parking code is 9000", expiration_date=FUTURE)
    never = _add(m, "the parking garage closes at midnight")
    # the expired text is the query itself (cosine 1, every keyword): were it ranked and then
    # dropped, top_k=1 would come back empty
    hits = m.search("the parking code is 4711", user_id="u", top_k=1, mode=mode)["results"]
    assert len(hits) == 1 and hits[0]["id"] != old
    assert old not in _ids(m.search("parking code", user_id="u", top_k=10, mode=mode))
    shown = m.search("the parking code is 4711", user_id="u", top_k=1, mode=mode, show_expired=True)
    assert [r["id"] for r in shown["results"]] == [old]
    assert _ids(m.get_all(user_id="u")) == {later, never}
    assert _ids(m.get_all(filters={"user_id": "u"}, show_expired=True)) == {old, later, never}
    record = m.get(old)
    assert record is not None and record["expiration_date"] == "2000-01-02T00:00:00.000000+00:00"
    assert "expiration_date" not in (m.get(never) or {})


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_search_results_carry_the_expiration_date(m: Memory, mode: str) -> None:
    """As ``get``/``get_all``: ``expiration_date`` on a hit that expires, absent on one that never does."""
    later = _add(m, "the parking code is 9000", expiration_date=FUTURE)
    never = _add(m, "the parking garage code closes at midnight")
    gone = _add(m, "the parking code was 4711", expiration_date=PAST)
    hits = {
        r["id"]: r for r in m.search("parking code", user_id="u", mode=mode, show_expired=True)["results"]
    }
    assert set(hits) == {later, never, gone}
    for mid in (later, gone):
        assert hits[mid]["expiration_date"] == (m.get(mid) or {})["expiration_date"]
    assert "expiration_date" not in hits[never]
    explained = m.search("parking code", user_id="u", mode=mode, explain=True)["results"]
    assert {r["id"]: r.get("expiration_date") for r in explained} == {
        later: hits[later]["expiration_date"],
        never: None,
    }


def test_a_memory_drops_out_when_its_moment_passes(m: Memory) -> None:
    """The search filter bounds ``expires_at`` by the next expiry after now (a value that stays
    the same between searches): once that moment passes, the bound moves on."""
    _add(m, "expired long ago", expiration_date=PAST)  # something is expired: the filter is on
    soon = _add(m, "expires in a moment", expiration_date=datetime.now(UTC) + timedelta(seconds=1.5))
    never = _add(m, "never expires")
    assert _ids(m.get_all(user_id="u")) == {soon, never}
    assert _ids(m.search("expires in a moment", user_id="u", mode="keyword")) == {soon, never}
    time.sleep(2.0)
    assert _ids(m.get_all(user_id="u")) == {never}
    assert _ids(m.search("expires in a moment", user_id="u", mode="keyword")) == {never}


def test_show_expired_must_be_a_bool(m: Memory) -> None:
    with pytest.raises(TypeError, match="show_expired"):
        m.get_all(user_id="u", show_expired="yes")  # type: ignore[arg-type]


def test_update_sets_and_clears_the_expiration(m: Memory) -> None:
    mid = _add(m, "a note that will expire")
    m.update(mid, expiration_date=PAST)
    assert _ids(m.get_all(user_id="u")) == set()
    m.update(mid, metadata={"k": 1})  # expiration_date left out: unchanged
    assert _ids(m.get_all(user_id="u")) == set()
    m.update(mid, expiration_date=None)  # None: never expires
    assert _ids(m.get_all(user_id="u")) == {mid}
    assert _events(m, [mid]) == [["ADD", "UPDATE", "UPDATE", "UPDATE"]]


def test_add_batch_items_expire_one_by_one(m: Memory) -> None:
    out = m.add_batch(
        [
            {"messages": "first", "user_id": "u", "expiration_date": PAST},
            {"messages": "second", "user_id": "u"},
        ]
    )["results"]
    assert _ids(m.get_all(user_id="u")) == {out[1]["id"]}


def test_purge_expired_deletes_them_with_history(m: Memory, location: str) -> None:
    gone = [_add(m, f"expired note {i}", expiration_date=PAST) for i in range(3)]
    kept = [_add(m, "lives on", expiration_date=FUTURE), _add(m, "never expires")]
    run = CliRunner()
    refused = run.invoke(app, ["memory", "purge", "--path", location])
    assert refused.exit_code == 2 and "--expired" in refused.output
    done = run.invoke(app, ["memory", "purge", "--expired", "--path", location])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"deleted": 3}
    assert _ids(m.get_all(user_id="u", show_expired=True)) == set(kept)
    assert _events(m, gone) == [["ADD", "DELETE"]] * 3
    assert m.purge_expired() == 0


def test_export_and_import_keep_the_expiration(m: Memory, tmp_path: Path) -> None:
    old = _add(m, "expired before the move", expiration_date=PAST)
    later = _add(m, "expires after the move", expiration_date="2999-12-31T12:00:00-05:00")
    dump = list(export_lines(m))  # what `hivemem memory export | … import -` moves
    with Memory(tmp_path / "moved.sqlite", embedder=m.embedder) as moved:
        import_lines(moved, dump)
        for mid in (old, later):
            assert (moved.get(mid) or {})["expiration_date"] == (m.get(mid) or {})["expiration_date"]
        assert _ids(moved.get_all(user_id="u")) == {later}


def test_a_store_made_before_expiration_is_migrated_on_open(location: str, emb: CountingEmbedder) -> None:
    with Memory(location, embedder=emb) as m:
        old = _add(m, "stored by an older hivemem")
    where = resolve(location)
    if isinstance(where, Path):  # SQLite: the file as it was (no column, no index)
        db = sqlite3.connect(where)
        db.execute("DROP INDEX memories_expires")
        db.execute("ALTER TABLE memories DROP COLUMN expires_at")
        db.commit()
        db.close()
    else:  # PostgreSQL: layout 2
        import psycopg

        with psycopg.connect(where.conninfo, autocommit=True) as conn:
            ns = f'"{where.schema}"'
            conn.execute(f"ALTER TABLE {ns}.memories DROP COLUMN expires_at")
            conn.execute(f"UPDATE {ns}.meta SET value = '2' WHERE key = 'layout'")
    with Memory(location, embedder=emb) as m:
        new = _add(m, "stored after the upgrade", expiration_date=PAST)
        assert _ids(m.get_all(user_id="u")) == {old}
        assert _ids(m.get_all(user_id="u", show_expired=True)) == {old, new}
    if not isinstance(where, Path):
        import psycopg

        with psycopg.connect(where.conninfo) as conn:
            layout = conn.execute(f'SELECT value FROM "{where.schema}".meta WHERE key = %s', ("layout",))
            assert layout.fetchone() == ("3",)


# -- batch update / delete -------------------------------------------------------------------------


def test_batch_update_changes_all_in_one_embed_call(m: Memory, emb: CountingEmbedder) -> None:
    ids = [_add(m, f"original text {i}", metadata={"n": i}) for i in range(5)]
    emb.calls.clear()
    out = m.batch_update(
        [
            {"memory_id": ids[0], "text": "new text zero"},
            {"memory_id": ids[1], "metadata": {"n": 10}},
            {"memory_id": ids[2], "text": "new text two", "metadata": {"n": 20}},
            {"memory_id": ids[3], "expiration_date": PAST},
        ]
    )
    assert out == {"message": "Successfully updated 4 memories"}
    assert emb.calls == [["new text zero", "new text two"]]  # one call, the new texts only
    assert _rows(m) == [
        (ids[0], "new text zero", {"n": 0}),
        (ids[1], "original text 1", {"n": 10}),
        (ids[2], "new text two", {"n": 20}),
        (ids[3], "original text 3", {"n": 3}),
        (ids[4], "original text 4", {"n": 4}),
    ]
    assert _events(m, ids) == [["ADD", "UPDATE"]] * 4 + [["ADD"]]
    history = m.history(ids[0])[-1]
    assert (history["old_memory"], history["new_memory"]) == ("original text 0", "new text zero")
    assert ids[3] not in _ids(m.get_all(user_id="u"))
    # the vector index follows: a new text finds its memory at cosine 1, an old text no longer does
    for text, mid in (("new text zero", ids[0]), ("new text two", ids[2])):
        hit = m.search(text, user_id="u", top_k=1, mode="vector")["results"][0]
        assert hit["id"] == mid and hit["score"] == pytest.approx(1.0, abs=1e-4)
    best = m.search("original text 0", user_id="u", top_k=1, mode="vector")["results"][0]
    assert best["score"] < 0.99


@pytest.mark.parametrize("where", [0, 2, 4])
def test_an_unknown_id_in_a_batch_changes_nothing(m: Memory, emb: CountingEmbedder, where: int) -> None:
    ids = [_add(m, f"text {i}") for i in range(4)]
    before = _rows(m)
    items: list[dict[str, Any]] = [{"memory_id": i, "text": f"changed {i}"} for i in ids]
    items.insert(where, {"memory_id": "no-such-id", "text": "never stored"})
    emb.calls.clear()
    with pytest.raises(MemoryNotFound, match="no-such-id"):
        m.batch_update(items)
    assert emb.calls == []  # refused before the embed call
    with pytest.raises(MemoryNotFound, match="no-such-id"):
        m.batch_delete([{"memory_id": i} for i in [*ids[:where], "no-such-id", *ids[where:]]])
    assert _rows(m) == before
    assert _events(m, ids) == [["ADD"]] * 4


def test_a_batch_whose_id_vanishes_before_its_transaction_changes_nothing(m: Memory) -> None:
    ids = [_add(m, f"text {i}") for i in range(3)]
    storage = m._storage
    real = storage.unknown
    storage.unknown = lambda wanted: (storage.delete(ids[2]), real(wanted))[1][:0]  # type: ignore[method-assign]
    with pytest.raises(MemoryNotFound, match=ids[2]):
        m.batch_update([{"memory_id": i, "text": f"changed {i}"} for i in ids])
    storage.unknown = real  # type: ignore[method-assign]
    assert _rows(m) == [(ids[0], "text 0", None), (ids[1], "text 1", None)]


def test_a_text_clash_inside_a_batch_changes_nothing(m: Memory) -> None:
    ids = [_add(m, f"text {i}") for i in range(3)]
    before = _rows(m)
    with pytest.raises(ValueError, match="already has this text"):
        m.batch_update([{"memory_id": ids[0], "text": "same"}, {"memory_id": ids[1], "text": "same"}])
    with pytest.raises(ValueError, match="already has this text"):
        m.batch_update([{"memory_id": ids[0], "metadata": {"a": 1}}, {"memory_id": ids[1], "text": "text 2"}])
    assert _rows(m) == before


def test_batch_delete_removes_all_with_history(m: Memory) -> None:
    ids = [_add(m, f"text {i}") for i in range(4)]
    assert m.batch_delete([{"memory_id": ids[1]}, {"memory_id": ids[3]}]) == {
        "message": "Successfully deleted 2 memories"
    }
    assert [r[0] for r in _rows(m)] == [ids[0], ids[2]]
    assert _events(m, ids) == [["ADD"], ["ADD", "DELETE"], ["ADD"], ["ADD", "DELETE"]]
    assert m.search("text 1", user_id="u", top_k=4, mode="vector")["results"][0]["id"] not in (ids[1], ids[3])


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        (
            [{"memory_id": f"m{i}", "text": "x"} for i in range(MAX_BATCH_CHANGES + 1)],
            LimitExceeded,
            "MAX_BATCH_CHANGES",
        ),
        ([], ValueError, "at least one"),
        ({"memory_id": "a"}, TypeError, "list"),
        ([{"memory_id": "a", "text": "x"}, {"memory_id": "a", "text": "y"}], ValueError, "named twice"),
        ([{"memory_id": "a"}], ValueError, "needs text and/or metadata"),
        ([{"memory_id": "a", "text": "x", "user_id": "v"}], ValueError, "unknown keys"),
        ([{"memory_id": 5, "text": "x"}], TypeError, "memory_id"),
        ([{"memory_id": "a", "text": "   "}], ValueError, r"items\[0\]: text"),
        ([{"memory_id": "a", "metadata": {"user_id": "v"}}], ValueError, "reserved"),
    ],
)
def test_hostile_batches_are_refused_before_anything(
    m: Memory, emb: CountingEmbedder, items: Any, error: type[Exception], match: str
) -> None:
    mid = _add(m, "untouched")
    emb.calls.clear()
    with pytest.raises(error, match=match):
        m.batch_update(items)
    assert emb.calls == [] and _rows(m) == [(mid, "untouched", None)]


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        ([{"memory_id": f"m{i}"} for i in range(MAX_BATCH_CHANGES + 1)], LimitExceeded, "MAX_BATCH_CHANGES"),
        ([], ValueError, "at least one"),
        ([{"memory_id": "a"}, {"memory_id": "a"}], ValueError, "named twice"),
        ([{"memory_id": "a", "text": "x"}], ValueError, "unknown keys"),
        (["a"], TypeError, "dict"),
    ],
)
def test_hostile_batch_deletes_are_refused(m: Memory, items: Any, error: type[Exception], match: str) -> None:
    mid = _add(m, "untouched")
    with pytest.raises(error, match=match):
        m.batch_delete([*items, {"memory_id": mid}] if items else items)
    assert _rows(m) == [(mid, "untouched", None)]


def test_batch_at_the_limit_runs(m: Memory) -> None:
    out = m.add_batch([{"messages": f"note {i}", "user_id": "u"} for i in range(MAX_BATCH_CHANGES)])
    ids = [r["id"] for r in out["results"]]
    m.batch_update([{"memory_id": i, "metadata": {"seen": True}} for i in ids])
    assert all(r["metadata"] == {"seen": True} for r in m.get_all(user_id="u", top_k=2000)["results"])
    m.batch_delete([{"memory_id": i} for i in ids])
    assert m.count() == 0


def test_purge_uses_the_expiry_index(tmp_path: Path, hash_embedder: HashEmbedder) -> None:
    """SQLite plans the probe and the purge as index seeks (at 1M memories a scan would not do)."""
    with Memory(tmp_path / "m.sqlite", embedder=hash_embedder) as m:
        _add(m, "x")
    db = sqlite3.connect(tmp_path / "m.sqlite")
    moment = datetime.now(UTC).isoformat()
    probe = (
        "SELECT (SELECT min(expires_at) FROM memories),"
        " (SELECT min(expires_at) FROM memories WHERE expires_at > ?)"
    )
    purge = "SELECT id, memory, actor_id, role, rid, scope FROM memories WHERE expires_at <= ?"
    for sql in (probe, purge):
        plan = [r[-1] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", (moment,))]
        scans = [p for p in plan if p.startswith(("SCAN", "SEARCH")) and p != "SCAN CONSTANT ROW"]
        assert scans and all("INDEX memories_expires" in p for p in scans), plan
    db.close()


def test_async_memory_has_the_batch_and_expiry_calls(location: str, emb: CountingEmbedder) -> None:
    import asyncio

    from hivemem import AsyncMemory

    async def run() -> None:
        async with AsyncMemory(location, embedder=emb) as am:
            out = await am.add_batch([{"messages": f"async note {i}", "user_id": "u"} for i in range(3)])
            ids = [r["id"] for r in out["results"]]
            await am.update(ids[0], expiration_date=PAST)
            await am.batch_update([{"memory_id": ids[1], "text": "async note, changed"}])
            assert _ids(await am.get_all(user_id="u")) == set(ids[1:])
            assert await am.purge_expired() == 1
            await am.batch_delete([{"memory_id": ids[1]}])
            assert _ids(await am.get_all(user_id="u", show_expired=True)) == {ids[2]}

    asyncio.run(run())


def test_the_expired_rows_filter_stays_small_at_huge_row_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pgkeyword._alive`` (PostgreSQL's keyword search with expired rows): a lookup table up to
    the highest expired row id took 100 MB a search at row id 10⁸; far above the number of
    expired ids it searches them instead, with the same mask as the table (storage only: no
    embedder, no server)."""
    import tracemalloc

    from hivemem.memory.storage import pgkeyword

    rng = np.random.default_rng(7)
    rids = np.unique(rng.integers(1, 10**8, 20_000)).astype(np.int64)
    expired = np.concatenate([rng.choice(rids, 500, replace=False), [10**8, 10**8 + 7]])
    rids = np.concatenate([rids, [10**8, 10**8 + 1, 10**8 + 7, 10**8 + 8, 0]])  # at, between, above the top
    tracemalloc.start()
    try:
        alive = pgkeyword._alive(expired)
        assert alive is not None
        mask = alive(rids)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak:,} bytes traced for {len(rids):,} row ids"
    assert np.array_equal(mask, ~np.isin(rids, expired)) and mask.sum() == len(rids) - 502
    monkeypatch.setattr(pgkeyword, "_TABLE_BYTES", 2**40)  # the lookup table, whatever the ids
    table = pgkeyword._alive(expired)
    assert table is not None and np.array_equal(table(rids), mask)
    small = pgkeyword._alive(expired % 1000)  # a few ids under a small top: the table, as before
    assert small is not None and np.array_equal(small(rids % 1000), ~np.isin(rids % 1000, expired % 1000))
