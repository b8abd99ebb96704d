"""The memory REST API on a real ``hivemem serve --http`` (uvicorn on loopback), over real HTTP;
the tests that use ``api`` run with the store on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_helpers import ADMIN, ALICE, BOB, http_service
from service_helpers import ROOT

from hivemem.http.auth import Scope, load_keys


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(model_home: Path, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    memory = request.getfixturevalue("pg_url")() if request.param == "postgres" else None
    with (
        http_service(model_home, "--max-body", "65536", memory=memory) as svc,
        httpx.Client(base_url=svc["url"], timeout=60) as c,
    ):
        yield c


def _add(c: httpx.Client, headers: dict, **body) -> str:
    r = c.post("/v1/memories", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["id"]


def test_round_trip_every_route(api: httpx.Client) -> None:
    body = {"messages": "I am allergic to peanuts", "user_id": "carol", "metadata": {"severity": 3}}
    r = api.post("/v1/memories", json=body, headers=ADMIN)
    assert r.status_code == 200 and r.json()["results"][0]["event"] == "ADD"
    mid = r.json()["results"][0]["id"]
    assert api.post("/v1/memories", json=body, headers=ADMIN).json()["results"][0] == {
        **r.json()["results"][0],
        "event": "NONE",
    }
    turns = [{"role": "system", "content": "skip me"}, {"role": "user", "content": "Likes jazz", "name": "c"}]
    items = [
        {"messages": "Plays chess on Sundays", "user_id": "carol", "metadata": {"severity": 1}},
        {"messages": turns, "user_id": "carol"},
    ]
    batch = api.post("/v1/memories/batch", json={"items": items}, headers=ADMIN).json()["results"]
    assert [x["memory"] for x in batch] == ["Plays chess on Sundays", "Likes jazz"]
    assert batch[1]["actor_id"] == "c"

    hits = api.post("/v1/memories/search", json={"query": "food allergy", "user_id": "carol", "top_k": 2},
                    headers=ADMIN).json()["results"]  # fmt: skip
    assert hits[0]["id"] == mid and 0 < hits[0]["score"] <= 1 and len(hits) == 2
    flt = {"filters": {"user_id": "carol", "severity": {"gte": 2}}}
    assert [x["id"] for x in api.post("/v1/memories/list", json=flt, headers=ADMIN).json()["results"]] == [
        mid
    ]
    listed = api.get("/v1/memories", params={"user_id": "carol"}, headers=ADMIN).json()["results"]
    assert len(listed) == 3

    record = api.get(f"/v1/memories/{mid}", headers=ADMIN).json()
    assert record["memory"] == "I am allergic to peanuts" and record["metadata"] == {"severity": 3}
    assert "score" not in record
    assert (
        api.put(f"/v1/memories/{mid}", json={"text": "Allergic to cashews"}, headers=ADMIN).status_code == 200
    )
    assert api.get(f"/v1/memories/{mid}", headers=ADMIN).json()["memory"] == "Allergic to cashews"
    events = [h["event"] for h in api.get(f"/v1/memories/{mid}/history", headers=ADMIN).json()]
    assert events == ["ADD", "UPDATE"]
    assert api.delete(f"/v1/memories/{mid}", headers=ADMIN).json()["message"].startswith("Memory deleted")
    assert api.get(f"/v1/memories/{mid}", headers=ADMIN).status_code == 404
    assert [h["event"] for h in api.get(f"/v1/memories/{mid}/history", headers=ADMIN).json()][-1] == "DELETE"
    assert api.delete("/v1/memories", params={"user_id": "carol"}, headers=ADMIN).status_code == 200
    assert api.get("/v1/memories", params={"user_id": "carol"}, headers=ADMIN).json()["results"] == []


def test_scoping_alice_cannot_touch_bob(api: httpx.Client) -> None:
    a = _add(api, ALICE, messages="Alice drinks green tea")  # no user_id: forced into alice
    b = _add(api, BOB, messages="Bob drinks black coffee", user_id="bob")
    assert api.get(f"/v1/memories/{a}", headers=ALICE).json()["user_id"] == "alice"

    for r in (
        api.get(f"/v1/memories/{b}", headers=ALICE),
        api.put(f"/v1/memories/{b}", json={"text": "hacked"}, headers=ALICE),
        api.delete(f"/v1/memories/{b}", headers=ALICE),
        api.get(f"/v1/memories/{b}/history", headers=ALICE),
        api.post("/v1/memories", json={"messages": "x", "user_id": "bob"}, headers=ALICE),
        api.post(
            "/v1/memories/batch",
            json={"items": [{"messages": "x"}, {"messages": "y", "user_id": "bob"}]},
            headers=ALICE,
        ),
        api.post("/v1/memories/search", json={"query": "coffee", "user_id": "bob"}, headers=ALICE),
        api.post("/v1/memories/list", json={"user_id": "bob"}, headers=ALICE),
        api.get("/v1/memories", params={"user_id": "bob"}, headers=ALICE),
        api.delete("/v1/memories", params={"user_id": "bob"}, headers=ALICE),
    ):
        assert r.status_code == 403, (r.request.method, r.request.url, r.text)
        assert r.json()["error"]["type"] == "permission_error"

    # Filters naming bob are ANDed with alice: they find nothing of bob's.
    sneaky = {"OR": [{"user_id": "bob"}, {"memory": {"contains": "coffee"}}]}
    hits = api.post("/v1/memories/search", json={"query": "coffee", "filters": sneaky}, headers=ALICE).json()
    assert all(h["user_id"] == "alice" for h in hits["results"])
    listed = api.post("/v1/memories/list", json={"filters": {"user_id": "bob"}}, headers=ALICE).json()
    assert listed["results"] == []
    mine = api.get("/v1/memories", headers=ALICE).json()["results"]
    assert mine and {m["user_id"] for m in mine} == {"alice"}
    found = api.post("/v1/memories/search", json={"query": "coffee"}, headers=ALICE).json()["results"]
    assert b not in {h["id"] for h in found}

    # Bob's memory is untouched; alice's own delete-all removes only hers.
    assert api.delete("/v1/memories", headers=ALICE).status_code == 200
    assert api.get(f"/v1/memories/{b}", headers=BOB).json()["memory"] == "Bob drinks black coffee"
    assert api.get("/v1/memories", headers=ALICE).json()["results"] == []
    assert api.get(f"/v1/memories/{b}", headers=ADMIN).status_code == 200  # admins see everyone


def test_status_codes(api: httpx.Client) -> None:
    body = {"messages": "hello", "user_id": "dave"}
    assert api.post("/v1/memories", json=body).status_code == 401
    assert api.post("/v1/memories", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        api.post("/v1/memories", json=body, headers={"Authorization": "Basic alice-key-0001"}).status_code
        == 401
    )
    assert api.get("/v1/memories/x", headers={}).status_code == 401
    assert api.post("/v1/embeddings", json={"input": "hi"}).status_code == 401
    assert api.get("/metrics").status_code == 401
    assert api.get("/health").status_code == 200
    assert api.post("/v1/embeddings", json={"input": "hi"}, headers=ALICE).status_code == 200
    assert api.get("/metrics", headers=BOB).status_code == 200

    r = api.post("/v1/memories", json={"messages": 5, "user_id": "dave"}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "messages"]
    r = api.post("/v1/memories/search", json={"query": "x", "top_k": 0}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "top_k"]
    r = api.post("/v1/memories", json={"messages": "x", "user_id": "d", "bogus": 1}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "bogus"]
    assert api.post("/v1/memories", content=b"{not json", headers=ADMIN).status_code == 422

    # Memory's own refusals: 422 with its message, never a 500.
    cases = [
        ("/v1/memories", {"messages": "no scope"}, "at least one of user_id"),
        ("/v1/memories", {"messages": "  ", "user_id": "d"}, "is empty"),
        ("/v1/memories", {"messages": "x", "user_id": "d", "metadata": {"id": 1}}, "reserved"),
        ("/v1/memories", {"messages": "x", "user_id": "d", "infer": True}, "no LLM"),
        ("/v1/memories/search", {"query": "x", "filters": {"k": {"gtee": 1}}}, "unknown operator 'gtee'"),
        ("/v1/memories/list", {"filters": {"k": [1, 2]}}, "ambiguous"),
    ]
    for path, payload, message in cases:
        r = api.post(path, json=payload, headers=ADMIN)
        assert r.status_code == 422, (payload, r.text)
        assert message in r.json()["error"]["message"]
    r = api.put("/v1/memories/nope", json={}, headers=ADMIN)
    assert r.status_code == 404  # the id is checked before the body's content
    mid = _add(api, ADMIN, messages="to update", user_id="dave")
    r = api.put(f"/v1/memories/{mid}", json={}, headers=ADMIN)
    assert r.status_code == 422 and "text and/or metadata" in r.json()["error"]["message"]
    assert api.delete("/v1/memories", headers=ADMIN).status_code == 422  # admin delete-all needs a scope

    for r in (
        api.get("/v1/memories/unknown-id", headers=ADMIN),
        api.put("/v1/memories/unknown-id", json={"text": "x"}, headers=ADMIN),
        api.delete("/v1/memories/unknown-id", headers=ADMIN),
        api.get("/v1/memories/unknown-id/history", headers=ADMIN),
        api.get("/v1/memories/unknown-id", headers=ALICE),
    ):
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"

    big = {"messages": "x" * 70_000, "user_id": "dave"}
    r = api.post("/v1/memories", json=big, headers=ADMIN)
    assert r.status_code == 413 and "65536" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"messages": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'", "user_id": "dave"}'

    r = api.post("/v1/memories", content=chunks(), headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert (
        api.get("/v1/memories", params={"user_id": "dave"}, headers=ADMIN).json()["results"][0]["id"] == mid
    )


def test_event_loop_stays_free_during_a_big_batch(model_home: Path) -> None:
    """A batch that embeds for seconds runs in a thread: /health answers while it is in flight.

    The batch is large (1,000 distinct 60-word texts: seconds of embedding even on a fast CPU) and
    /health is polled from the moment the batch is sent, so the test does not depend on how fast
    the machine embeds: on a blocked event loop no health reply could arrive before the batch's.
    """
    words = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
    ]
    items = [
        {
            "messages": f"loop test {i}: " + " ".join(words[(i * 7 + j) % len(words)] for j in range(60)),
            "user_id": "erin",
        }
        for i in range(1000)  # MAX_BATCH
    ]

    async def main() -> tuple[int, bool]:
        done = asyncio.Event()
        answered_during_batch = 0
        async with httpx.AsyncClient(base_url=base, timeout=300, headers=ADMIN) as c:

            async def batch() -> None:
                r = await c.post("/v1/memories/batch", json={"items": items})
                assert r.status_code == 200
                done.set()

            async def health() -> None:
                nonlocal answered_during_batch
                while not done.is_set():
                    r = await c.get("/health")
                    assert r.status_code == 200
                    if not done.is_set():
                        answered_during_batch += 1
                    await asyncio.sleep(0.05)

            await asyncio.gather(batch(), health())
        return answered_during_batch, done.is_set()

    with http_service(model_home) as svc:  # its own service: the module's has a 64 KiB body limit
        base = svc["url"]
        answered, finished = asyncio.run(main())
    assert finished
    assert answered >= 3  # one poll could be answered before the batch starts; dozens come while it runs


def test_openapi_published_and_committed(api: httpx.Client) -> None:
    live = api.get("/openapi.json").json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert set(live["paths"]) == set(committed["paths"]) - {"/v1/agent/stream"}  # no --agent here
    schemas = committed["components"]["schemas"]
    assert live["components"]["schemas"] == {k: v for k, v in schemas.items() if k != "AgentRequest"}
    for path in (
        "/v1/memories",
        "/v1/memories/search",
        "/v1/memories/{memory_id}/history",
        "/v1/agent/stream",
    ):
        assert path in committed["paths"]
    # The committed file is exactly what the generator writes now (regenerate when routes change).
    check = subprocess.run([sys.executable, "-m", "hivemem.http.openapi", "--check"], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_keys_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"k1": {"user_id": " al "}, "k2": {"admin": True}}))
    assert load_keys(path) == {"k1": Scope(user_id="al"), "k2": Scope(admin=True)}
    bad = [
        ("[1]", "non-empty JSON object"),
        ("{", "not valid JSON"),
        ('{"k": {"user_id": ""}}', "non-empty 'user_id'"),
        ('{"k": {"admin": true, "user_id": "a"}}', "cannot also be limited"),
        ('{"k": {"role": "x"}}', "must be"),
        ('{" k": {"admin": true}}', "surrounding spaces"),
    ]
    for text, message in bad:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_keys(path)
    with pytest.raises(ValueError, match="cannot read keys file"):
        load_keys(tmp_path / "missing.json")


def test_history_route_shows_only_the_keys_user(model_home: Path, local_embedder, tmp_path: Path) -> None:
    """Issue 26 (8): a store made before events kept their scope, holding the leak itself (alice's
    id deleted, then given to bob): bob's key reads only bob's events; an admin reads them all."""
    import sqlite3

    from hivemem import Memory

    path = tmp_path / "old.sqlite"
    with Memory(path, embedder=local_embedder) as m:
        m.add_batch([{"messages": "alice's diagnosis", "user_id": "alice", "id": "doc"}])
        m.delete("doc")
        m.add_batch([{"messages": "bob's note", "user_id": "bob", "id": "doc2"}])
    with sqlite3.connect(path) as db:  # what the old code let happen, in the old layout
        db.execute("ALTER TABLE history DROP COLUMN scope")
        db.execute("UPDATE memories SET id = 'doc' WHERE id = 'doc2'")
        db.execute("UPDATE history SET memory_id = 'doc' WHERE memory_id = 'doc2'")
    with http_service(model_home, memory=str(path)) as svc, httpx.Client(base_url=svc["url"]) as c:
        mine = c.get("/v1/memories/doc/history", headers=BOB)
        assert mine.status_code == 200
        assert [(h["event"], h["new_memory"]) for h in mine.json()] == [("ADD", "bob's note")]
        everything = c.get("/v1/memories/doc/history", headers=ADMIN).json()
        assert [h["event"] for h in everything] == ["ADD", "DELETE", "ADD"]
        assert c.get("/v1/memories/doc/history", headers=ALICE).status_code == 403


def test_batch_update_and_delete_are_scoped_and_all_or_nothing(api: httpx.Client) -> None:
    """``PUT``/``DELETE /v1/memories/batch`` (Mem0's platform batch routes, under hivemem's prefix):
    another user's id or an unknown id changes nothing; over the limit is a 422."""
    mine = [_add(api, ALICE, messages=f"Alice batch note {i}") for i in range(3)]
    theirs = _add(api, BOB, messages="Bob's private batch note")

    def texts(headers: dict, ids: list[str]) -> list[str]:
        return [api.get(f"/v1/memories/{i}", headers=headers).json()["memory"] for i in ids]

    before = texts(ALICE, mine)
    for other, status in ((theirs, 403), ("no-such-memory-id", 404)):
        body = {"memories": [{"memory_id": i, "text": f"changed {i}"} for i in [*mine, other]]}
        assert api.put("/v1/memories/batch", json=body, headers=ALICE).status_code == status
        gone = {"memory_ids": [{"memory_id": i} for i in [*mine, other]]}
        assert api.request("DELETE", "/v1/memories/batch", json=gone, headers=ALICE).status_code == status
        assert texts(ALICE, mine) == before
    assert texts(BOB, [theirs]) == ["Bob's private batch note"]
    # an admin naming an unknown id: 404 from Memory itself, still nothing changed
    body = {
        "memories": [{"memory_id": mine[0], "text": "x"}, {"memory_id": "no-such-memory-id", "text": "y"}]
    }
    assert api.put("/v1/memories/batch", json=body, headers=ADMIN).status_code == 404
    assert texts(ALICE, mine) == before

    over = {"memories": [{"memory_id": f"m{i}", "metadata": {"n": i}} for i in range(1001)]}
    assert api.put("/v1/memories/batch", json=over, headers=ALICE).status_code == 422

    body = {
        "memories": [
            {"memory_id": mine[0], "text": "Alice batch note zero, rewritten"},
            {"memory_id": mine[1], "metadata": {"kept": True}, "expiration_date": "2000-01-01"},
        ]
    }
    r = api.put("/v1/memories/batch", json=body, headers=ALICE)
    assert r.status_code == 200 and r.json() == {"message": "Successfully updated 2 memories"}
    assert texts(ALICE, mine)[0] == "Alice batch note zero, rewritten"
    hits = api.post("/v1/memories/search", json={"query": "batch note zero rewritten", "top_k": 1},
                    headers=ALICE).json()["results"]  # fmt: skip
    assert hits[0]["id"] == mine[0]
    listed = {x["id"] for x in api.get("/v1/memories", headers=ALICE).json()["results"]}
    assert mine[1] not in listed and mine[0] in listed  # expired: left out
    shown = api.get("/v1/memories", params={"show_expired": "true"}, headers=ALICE).json()["results"]
    assert {x["id"]: x.get("expiration_date") for x in shown}[mine[1]] == "2000-01-02T00:00:00.000000+00:00"
    events = [h["event"] for h in api.get(f"/v1/memories/{mine[1]}/history", headers=ALICE).json()]
    assert events == ["ADD", "UPDATE"]

    gone = {"memory_ids": [{"memory_id": i} for i in mine]}
    r = api.request("DELETE", "/v1/memories/batch", json=gone, headers=ALICE)
    assert r.status_code == 200 and r.json() == {"message": "Successfully deleted 3 memories"}
    assert all(api.get(f"/v1/memories/{i}", headers=ALICE).status_code == 404 for i in mine)
    assert texts(BOB, [theirs]) == ["Bob's private batch note"]


def test_expiration_over_rest(api: httpx.Client) -> None:
    old = _add(
        api, ALICE, messages="Alice's expired coupon code", expiration_date="2000-01-01T10:00:00+02:00"
    )
    bad = api.post("/v1/memories", json={"messages": "x", "expiration_date": "next week"}, headers=ALICE)
    assert bad.status_code == 422 and "expiration_date" in bad.text
    query = {"query": "expired coupon code", "top_k": 5}
    hits = api.post("/v1/memories/search", json=query, headers=ALICE).json()["results"]
    assert old not in {h["id"] for h in hits}
    hits = api.post("/v1/memories/search", json={**query, "show_expired": True}, headers=ALICE).json()[
        "results"
    ]
    assert hits[0]["id"] == old
    listed = api.post("/v1/memories/list", json={"show_expired": True}, headers=ALICE).json()["results"]
    assert {x["id"]: x.get("expiration_date") for x in listed}[old] == "2000-01-01T08:00:00.000000+00:00"
    assert api.put(f"/v1/memories/{old}", json={"expiration_date": None}, headers=ALICE).status_code == 200
    assert old in {x["id"] for x in api.get("/v1/memories", headers=ALICE).json()["results"]}


def test_timestamp_over_rest(api: httpx.Client) -> None:
    """Mem0's ``timestamp`` on the add and batch add endpoints: Unix seconds or an ISO date or
    datetime become created_at (and updated_at, and the ADD event's time); a malformed one is 422
    naming the field, and nothing of the call is stored."""
    one = _add(api, ALICE, messages="Alice moved to Lisbon", timestamp=1683554160)
    items = [{"messages": "Alice adopted a cat", "timestamp": "2023-06-01"},
             {"messages": "Alice ran a marathon", "timestamp": "2023-07-02T09:00-03:00"}]  # fmt: skip
    batch = {"items": items}
    r = api.post("/v1/memories/batch", json=batch, headers=ALICE)
    assert r.status_code == 200, r.text
    two, three = (x["id"] for x in r.json()["results"])
    want = {one: "2023-05-08T13:56:00.000000+00:00", two: "2023-06-01T00:00:00.000000+00:00",
            three: "2023-07-02T12:00:00.000000+00:00"}  # fmt: skip
    for memory_id, created in want.items():
        record = api.get(f"/v1/memories/{memory_id}", headers=ALICE).json()
        assert record["created_at"] == record["updated_at"] == created
        (event,) = api.get(f"/v1/memories/{memory_id}/history", headers=ALICE).json()
        assert event["created_at"] == created
    before = len(api.get("/v1/memories", headers=ALICE).json()["results"])
    for bad in ("next week", True, "9" * 80, 1e300):
        r = api.post("/v1/memories", json={"messages": "never stored", "timestamp": bad}, headers=ALICE)
        assert r.status_code in (413, 422) and "timestamp" in r.text, (bad, r.text)
        items = {"items": [{"messages": "never stored either"}, {"messages": "nor this", "timestamp": bad}]}
        r = api.post("/v1/memories/batch", json=items, headers=ALICE)
        assert r.status_code in (413, 422) and "timestamp" in r.text, (bad, r.text)
    assert len(api.get("/v1/memories", headers=ALICE).json()["results"]) == before


def test_explain_over_rest_only_when_asked_and_only_the_keys_user(api: httpx.Client) -> None:
    assert api.delete("/v1/memories", headers=ALICE).status_code == 200
    texts = [
        "Alice's kite is called Zephyr",
        "Zephyr flew over the dunes",
        "Alice bakes sourdough on Sundays",
    ]
    mine = [_add(api, ALICE, messages=t) for t in texts]
    bobs = _add(api, BOB, messages="Zephyr, Zephyr: Bob's kite is called Zephyr too", user_id="bob")
    query = {"query": "kite called Zephyr", "top_k": 10}
    plain = api.post("/v1/memories/search", json=query, headers=ALICE).json()["results"]
    assert len(plain) == 3 and all("score_details" not in h for h in plain)  # the default is unchanged
    hits = api.post("/v1/memories/search", json={**query, "explain": True}, headers=ALICE).json()["results"]
    assert [h["id"] for h in hits] == [h["id"] for h in plain] and set(mine) == {h["id"] for h in hits}
    details = [h["score_details"] for h in hits]
    # the ranks are among alice's memories only: bob's (the best keyword match) took none of them
    assert sorted(d["vector_rank"] for d in details) == [1, 2, 3]
    assert sorted(d["keyword_rank"] for d in details if d["keyword_rank"] is not None) == [1, 2]
    for h, d in zip(hits, details, strict=True):
        w = d["keyword_weight"]
        assert (
            d["fused"] == h["score"] == pytest.approx((d["cosine"] + w * d["keyword_normalized"]) / (1 + w))
        )
    everyone = {**query, "explain": True, "filters": {"memory": {"contains": "Zephyr"}}}
    admin = api.post("/v1/memories/search", json=everyone, headers=ADMIN).json()["results"]
    assert bobs in {h["id"] for h in admin} and all("score_details" in h for h in admin)
    assert (
        api.post("/v1/memories/search", json={**query, "explain": "maybe"}, headers=ALICE).status_code == 422
    )


def test_rerank_over_rest_without_a_reranker_is_a_clear_422(api: httpx.Client) -> None:
    r = api.post("/v1/memories/search", json={"query": "kite", "rerank": True}, headers=ALICE)
    assert r.status_code == 422 and "HIVEMEM_LLM_URL" in r.text, r.text
    assert (
        api.post("/v1/memories/search", json={"query": "kite", "rerank": "yes"}, headers=ALICE).status_code
        == 422
    )


def test_rerank_over_rest_with_a_scripted_llm(model_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's LLM reranker (``HIVEMEM_LLM_URL``: a scripted OpenAI-compatible server on
    loopback whose answers the test writes) reorders the REST search when ``rerank`` is true only."""
    sys.path.insert(0, str(ROOT / "tests" / "memory"))
    from scripted_llm import scripted_llm

    def sourdough_first(body: dict) -> tuple[int, str]:
        return 200, "0.9" if "sourdough" in body["messages"][-1]["content"] else "0.1"

    with scripted_llm(sourdough_first) as llm:
        monkeypatch.setenv("HIVEMEM_LLM_URL", llm.url)
        monkeypatch.setenv("HIVEMEM_LLM_MODEL", "scripted")
        with http_service(model_home) as svc, httpx.Client(base_url=svc["url"], timeout=60) as c:
            for text in (
                "Alice's kite is called Zephyr",
                "Zephyr flew over the dunes",
                "Alice bakes sourdough",
            ):
                _add(c, ALICE, messages=text)
            query = {"query": "kite called Zephyr", "top_k": 3}
            plain = c.post("/v1/memories/search", json=query, headers=ALICE).json()["results"]
            assert plain[0]["memory"] != "Alice bakes sourdough" and not llm.requests
            hits = c.post("/v1/memories/search", json={**query, "rerank": True}, headers=ALICE)
            assert hits.status_code == 200, hits.text
            assert hits.json()["results"][0]["memory"] == "Alice bakes sourdough"
            assert len(llm.requests) == 3  # one scoring request per candidate


def test_concurrent_searches_answer_as_each_alone(api: httpx.Client) -> None:
    """24 searches at once (their queries embedded in shared engine batches, the searches run in
    groups) answer exactly as the same searches one at a time (then from the embedding cache)."""
    from hivemem.embed.corpus import sentences

    texts = sentences(84, seed=2512)
    items = [{"messages": t, "user_id": "erin"} for t in texts[:60]]
    assert api.post("/v1/memories/batch", json={"items": items}, headers=ADMIN).status_code == 200
    bodies = [{"query": q, "user_id": "erin", "top_k": 5} for q in texts[60:]]

    async def all_at_once() -> list[dict]:
        async with httpx.AsyncClient(base_url=str(api.base_url), timeout=60) as c:
            replies = await asyncio.gather(
                *(c.post("/v1/memories/search", json=b, headers=ADMIN) for b in bodies)
            )
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        return [r.json()["results"] for r in replies]

    together = asyncio.run(all_at_once())
    alone = [api.post("/v1/memories/search", json=b, headers=ADMIN).json()["results"] for b in bodies]
    assert together == alone and all(len(r) == 5 for r in alone)
    assert api.delete("/v1/memories", params={"user_id": "erin"}, headers=ADMIN).status_code == 200
