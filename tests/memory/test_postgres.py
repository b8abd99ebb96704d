"""What only the PostgreSQL backend has: lock order under concurrent writers, namespaces, the
URL/config forms that choose it, the pgvector-missing error, the HNSW opt-in, search equal to
SQLite's, and the throwaway test server itself. (Everything else runs on both backends through
the ``location`` fixture.) The hash embedder or random vectors stand in for the model here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest
from pgtemp import _alive, sweep_stale
from psycopg.conninfo import conninfo_to_dict

from hivemem import Memory
from hivemem.memory import filters as flt
from hivemem.memory.records import prepare
from hivemem.memory.storage.locate import PostgresLocation, resolve
from hivemem.memory.storage.postgres import PgVectorMissing, PostgresStorage
from hivemem.memory.storage.sqlite import SQLiteStorage

DIM = 384


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _storage(url: str, **kw: Any) -> PostgresStorage:
    where = resolve(url)
    assert isinstance(where, PostgresLocation)
    return PostgresStorage(where.conninfo, schema=where.schema, **kw)


def _write(go: threading.Barrier, out: dict, name: str, s: PostgresStorage, mems: list) -> None:
    vecs = _unit(np.random.default_rng(len(out)), len(mems), 8)
    go.wait()
    out[name] = s.insert(mems, vecs)


def test_writers_of_the_same_keys_in_opposite_order_never_deadlock(pg_url: Callable[[], str]) -> None:
    """Two writers insert the same 400 texts, one in reverse order, at the same moment: every
    text is stored once, both get its id, and no transaction had to be retried after a deadlock
    (each batch takes its row locks in (scope, hash) order)."""
    url = pg_url()
    a, b = _storage(url), _storage(url)
    for s in (a, b):
        s.bind_model("test/rand", 8)
    for rnd in range(4):
        texts = [f"round {rnd} fact {i}" for i in range(400)]
        mems_a = [m for t in texts for m in prepare(t, user_id="shared")]
        mems_b = [m for t in reversed(texts) for m in prepare(t, user_id="shared")]
        out: dict[str, list] = {}
        go = threading.Barrier(2)
        jobs = (("a", a, mems_a), ("b", b, mems_b))
        ts = [threading.Thread(target=_write, args=(go, out, *job)) for job in jobs]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        got_a = dict(zip(texts, out["a"], strict=True))
        got_b = dict(zip(reversed(texts), out["b"], strict=True))
        for text in texts:
            (id_a, ev_a), (id_b, ev_b) = got_a[text], got_b[text]
            assert id_a == id_b and sorted((ev_a, ev_b)) == ["ADD", "NONE"]
    assert a.count() == 1600 and a.retries == 0 and b.retries == 0
    a.close()
    b.close()


def test_schemas_are_separate_stores(pg_url: Callable[[], str], hash_embedder: Any) -> None:
    one, two = Memory(pg_url(), embedder=hash_embedder), Memory(pg_url(), embedder=hash_embedder)
    one.add_batch([{"messages": f"one {i}", "user_id": "u"} for i in range(5)])
    two.add_batch([{"messages": f"two {i}", "user_id": "u"} for i in range(3)])
    one.delete_all(user_id="u")
    assert one.count() == 0 and two.count() == 3
    one.add("one again", user_id="u")
    two.reset()
    assert one.count() == 1 and two.count() == 0
    assert [r["memory"] for r in one.search("again", user_id="u")["results"]] == ["one again"]
    one.close()
    two.close()


def test_openers_of_a_new_database_at_once_all_succeed(pg_dsn: str) -> None:
    """Three openers of one store in a database without pgvector, at the same moment: the first
    creates the extension and the schema, the others queue on the DDL locks and must then find
    both. Before the fix they waited for the schema's lock inside a transaction, and on a database
    whose extension had just been created that transaction still read the catalog without the
    first opener's schema: ``CREATE SCHEMA IF NOT EXISTS`` failed with a duplicate key on
    ``pg_namespace`` (every time, in this test)."""
    from psycopg.conninfo import make_conninfo

    db = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    try:
        conninfo = make_conninfo(pg_dsn, dbname=db)
        go = threading.Barrier(3)
        out: dict[int, Any] = {}

        def open_one(i: int) -> None:
            go.wait()
            try:
                out[i] = PostgresStorage(conninfo, schema="fresh")
            except Exception as exc:  # the failure is what the test reports
                out[i] = exc

        threads = [threading.Thread(target=open_one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        errors = [repr(v) for v in out.values() if isinstance(v, Exception)]
        assert len(out) == 3 and not errors, errors
        for s in out.values():
            s.close()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.mark.parametrize("path", ["scan", "int8 copy"])
def test_search_top10_equals_sqlite(
    tmp_path: Path, pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Exact search: the same data in both backends gives the same top-10, with and without
    filters, and the same scores (float32 inner products), whether PostgreSQL scans the
    candidates itself or the in-process int8 copy ranks them first."""
    from hivemem.memory.storage import postgres

    monkeypatch.setattr(postgres, "INDEX_MIN", 10**9 if path == "scan" else 500)
    rng = np.random.default_rng(7)
    sq, pg = SQLiteStorage(tmp_path / "s.sqlite"), _storage(pg_url())
    mems = [m for i in range(3000) for m in prepare(f"m {i}", user_id=f"u{i % 3}", metadata={"n": i % 10})]
    vecs = _unit(rng, len(mems))
    for s in (sq, pg):
        s.bind_model("test/rand", DIM)
        s.insert(mems, vecs)
    wheres = [None, flt.parse({"user_id": "u1"}), flt.parse({"n": {"gte": 5}, "NOT": [{"user_id": "u2"}]})]
    for q in _unit(rng, 10):
        for where in wheres:
            a, b = sq.search(q, where, 10, None), pg.search(q, where, 10, None)
            assert [r["id"] for r in a] == [r["id"] for r in b]
            assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b, strict=True)) < 1e-5
    cut = sq.search(vecs[0], None, 50, 0.1)
    assert [r["id"] for r in pg.search(vecs[0], None, 50, 0.1)] == [r["id"] for r in cut]
    assert (pg._index is None) == (path == "scan")
    sq.close()
    pg.close()


def test_hnsw_is_opt_in(pg_url: Callable[[], str], hash_embedder: Any) -> None:
    def indexes(m: Memory) -> set[str]:
        with m._storage._read() as conn:
            rows = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (m._storage.schema,)
            )
            return {r[0] for r in rows}

    exact = Memory(pg_url(), embedder=hash_embedder)
    approx = Memory(pg_url() + "&hnsw=true&ef_search=100", embedder=hash_embedder)
    for m in (exact, approx):
        m.add_batch([{"messages": f"note {i}", "user_id": "u"} for i in range(300)])
        assert m.search("note 17", user_id="u", top_k=3)["results"][0]["memory"] == "note 17"
    assert "memories_vec_hnsw" not in indexes(exact) and "memories_vec_hnsw" in indexes(approx)
    with approx._storage._read() as conn:
        assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "100"
    exact.close()
    approx.close()


def test_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: Callable[[], str]) -> None:
    with pytest.raises(ValueError, match="unsupported memory URL scheme 'postgresq://'"):
        Memory("postgresq://user@host/db")
    with pytest.raises(ValueError, match="looks like a URL"):
        Memory(Path("postgresql://user@host/db"))
    assert not list(tmp_path.iterdir()) and not Path("postgresq:").exists()
    assert resolve(f"sqlite://{tmp_path}/x.sqlite") == tmp_path / "x.sqlite"
    loc = resolve("postgres://u:secret@h:5433/db?sslmode=disable&schema=team_a&hnsw=on&maxconn=3")
    assert isinstance(loc, PostgresLocation)
    assert (loc.schema, loc.search, loc.maxconn) == ("team_a", "hnsw", 3)
    assert loc.conninfo == "postgres://u:secret@h:5433/db?sslmode=disable" and "secret" not in str(loc)
    with pytest.raises(ValueError, match="hnsw must be true or false"):
        resolve("postgresql://h/db?hnsw=maybe")
    with pytest.raises(ValueError, match="schema must be"):
        Memory("postgresql://h/db?schema=a;drop")
    url = pg_url()
    monkeypatch.setenv("HIVEMEM_MEMORY_URL", url)
    m = Memory()
    assert m.path is None and parse_qs(urlsplit(url).query)["schema"][0] in m.location
    m.close()
    with pytest.raises(ConnectionError, match=r"cannot connect .*u:\*\*\*@") as err:
        Memory("postgresql://u:hunter2@127.0.0.1:1/db?connect_timeout=2")
    assert "hunter2" not in str(err.value)


def test_mem0_pgvector_config(
    pg_dsn: str, pg_url: Callable[[], str], hm_home: Path, hash_embedder: Any
) -> None:
    schema = parse_qs(urlsplit(pg_url()).query)["schema"][0]
    parts = {
        k: v
        for k, v in conninfo_to_dict(pg_dsn).items()
        if k in ("dbname", "user", "password", "host", "port")
    }
    cfg = {
        "provider": "pgvector",
        "config": {**parts, "collection_name": schema, "embedding_model_dims": 384},
    }
    m = Memory.from_config({"vector_store": cfg})
    assert m._storage.schema == schema and m._embedder is None
    m.add("from a Mem0 config", user_id="u")  # the real model: 384 dimensions, as configured
    assert m.search("Mem0 config", user_id="u")["results"][0]["memory"] == "from a Mem0 config"
    m.close()
    wrong = {**cfg, "config": {**cfg["config"], "embedding_model_dims": 1536}}
    with pytest.raises(ValueError, match="embedding_model_dims=1536"):
        Memory.from_config({"vector_store": wrong}).add("x", user_id="u")
    with pytest.raises(ValueError, match="unknown pgvector config keys"):
        Memory.from_config({"vector_store": {"provider": "pgvector", "config": {"dbnmae": "x"}}})
    with pytest.raises(ValueError, match="diskann"):
        Memory.from_config({"vector_store": {"provider": "pgvector", "config": {**parts, "diskann": True}}})


def test_without_pgvector_the_error_says_what_to_ask_a_dba(pg_dsn: str) -> None:
    """A database without the extension, opened by a role that may not create it."""
    name = f"nopgv_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw'")
        admin.execute(f"CREATE DATABASE {name} OWNER {name}")
    parts = urlsplit(pg_dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    url = urlunsplit((parts.scheme, f"{name}:pw@{host}", f"/{name}", parts.query, ""))
    try:
        with pytest.raises(
            PgVectorMissing,
            match=rf"Ask a database administrator to run: CREATE EXTENSION vector;  in database '{name}'",
        ):
            Memory(url)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {name}")


_OWNER = """
import sys, time
from pgtemp import TempPostgres
server = TempPostgres()
server.start()
print(server.proc.pid, server.root, flush=True)
time.sleep(600)
"""


def test_throwaway_server_dies_with_its_owner(hm_home: Path) -> None:
    """kill -9 of the process that started a throwaway server: the server stops by itself
    (PR_SET_PDEATHSIG), and the next start sweeps its directory away."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pid, root = owner.stdout.readline().split()
    assert _alive(int(pid))
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 30
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(int(pid)), "the server outlived its owner"
    assert Path(root).exists() and sweep_stale() >= 1 and not Path(root).exists()
    assert os.path.exists(sys.executable)


def _reference(storage: PostgresStorage) -> Callable[[np.ndarray, int, str | None], list[str]]:
    """Brute-force float32 top-k over the vectors now in the database."""
    with storage._read() as conn:
        rows = conn.execute(f"SELECT id, user_id, vec FROM {storage._ns}.memories").fetchall()
    ids = np.array([r[0] for r in rows])
    users = np.array([r[1] for r in rows])
    vecs = np.stack([r[2].to_numpy() for r in rows])

    def top(q: np.ndarray, k: int, user: str | None) -> list[str]:
        mask = np.ones(len(ids), dtype=bool) if user is None else users == user
        order = np.argsort(-(vecs[mask] @ q), kind="stable")[:k]
        return ids[mask][order].tolist()

    return top


def test_local_index_follows_every_writer(pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Large searches rank an in-process int8 copy first: it follows inserts, deletes and
    re-embeddings by another writer, a batch that commits after a later one (row ids are not
    commit order), a reset and a trimmed tombstone log, and stays equal to brute force."""
    from hivemem.memory.storage import int8, pgindex, postgres

    monkeypatch.setattr(postgres, "INDEX_MIN", 200)
    monkeypatch.setattr(int8, "RESCORE", 64)
    rng = np.random.default_rng(11)
    url = pg_url()
    reader, writer = _storage(url), _storage(url)
    for s in (reader, writer):
        s.bind_model("test/rand", DIM)
    mems = [m for i in range(2000) for m in prepare(f"memory {i}", user_id=f"u{i % 3}")]
    writer.insert(mems, _unit(rng, len(mems)))
    queries = _unit(rng, 6)

    def check() -> None:
        reference = _reference(reader)
        for q in queries:
            for user in (None, "u1"):
                where = flt.parse({"user_id": user}) if user else None
                assert [r["id"] for r in reader.search(q, where, 10, None)] == reference(q, 10, user)

    check()
    assert reader._index is not None and reader._index.reloads == 1
    ids = [m.id for m in mems]
    for mid in ids[:40:2]:
        writer.delete(mid)
    for mid in ids[1:41:2]:
        writer.update(mid, f"rewritten {mid}", _unit(rng, 1)[0], None, uuid.uuid4().hex)
    target = [r["id"] for r in reader.search(queries[0], None, 5, None)]  # the rows nearest a query
    writer.delete(target[0])
    writer.update(target[1], "moved away", -queries[0], None, uuid.uuid4().hex)
    check()

    # a batch that draws its row ids first but commits after a later batch
    slow, release = threading.Event(), threading.Event()
    real = writer._insert_history

    def held(conn: Any, rows: list) -> None:
        real(conn, rows)
        slow.set()
        assert release.wait(30)

    monkeypatch.setattr(writer, "_insert_history", held)
    early = [m for i in range(50) for m in prepare(f"early {i}", user_id="u1")]
    early_vecs = _unit(rng, 50)
    early_vecs[0] = queries[1]  # one of them is the best match of a query
    t = threading.Thread(target=writer.insert, args=(early, early_vecs))
    t.start()
    assert slow.wait(30)
    other = _storage(url)
    other.bind_model("test/rand", DIM)
    other.insert([m for i in range(50) for m in prepare(f"late {i}", user_id="u1")], _unit(rng, 50))
    check()  # sees the later batch, not the uncommitted earlier one
    release.set()
    t.join(30)
    monkeypatch.setattr(writer, "_insert_history", real)
    check()
    assert reader.search(queries[1], None, 1, None)[0]["id"] == early[0].id
    assert reader._index.reloads == 1  # all of it followed incrementally

    monkeypatch.setattr(pgindex, "KEPT_TOMBSTONES", 5)
    monkeypatch.setattr(pgindex, "TRIM_EVERY", 1)
    for mid in ids[100:130]:
        other.delete(mid)
    check()
    assert reader._index.reloads == 2  # the log it needed was trimmed: reloaded
    writer.reset()
    writer.bind_model("test/rand", DIM)
    writer.insert(mems[:300], _unit(rng, 300))
    check()
    assert reader._index.reloads == 3
    for s in (reader, writer, other):
        s.close()


def test_a_copied_install_still_finds_its_libraries(tmp_path: Path) -> None:
    """As root, with the virtual environment where ``nobody`` cannot read it (e.g. under /root),
    the throwaway server runs from a copy of the binaries: they must still load their libraries."""
    from pgtemp import _copy_install, find_bin_dir

    bin_dir = _copy_install(find_bin_dir(), tmp_path / "pg")
    for tool in ("initdb", "postgres"):
        done = subprocess.run([str(bin_dir / tool), "--version"], capture_output=True, text=True)
        assert done.returncode == 0 and "PostgreSQL" in done.stdout, done.stderr


def test_nul_characters_are_refused_up_front(pg_url: Callable[[], str], hash_embedder: Any) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000 (SQLite can): a clear error naming the field,
    never a driver error, and nothing of the batch is stored."""
    m = Memory(pg_url(), embedder=hash_embedder)
    cases = [
        (
            lambda: m.add_batch(
                [{"messages": "fine", "user_id": "u"}, {"messages": "a\x00b", "user_id": "u"}]
            ),
            "memory",
        ),
        (lambda: m.add("x", user_id="u", metadata={"k": ["ok", "n\x00l"]}), "metadata"),
        (lambda: m.add("x", user_id="u\x00v"), "user_id"),
        (lambda: m.get_all(filters={"k": {"in": ["a", "b\x00"]}}), "filter values"),
        (lambda: m.search("q", filters={"k": {"contains": "\x00"}}), "filter values"),
    ]
    for call, what in cases:
        with pytest.raises(ValueError, match=f"{what}.*NUL"):
            call()
    assert m.count() == 0
    m.add("a\\u0000 is fine as text", user_id="u", metadata={"raw": "\\u0000"})  # a backslash, not NUL
    assert m.get_all(filters={"raw": "\\u0000"})["results"][0]["metadata"] == {"raw": "\\u0000"}
    m.close()
