"""Issue 26 (6): huge texts through every door at once — the Python client, the raw socket, HTTP
``/v1/embeddings`` and the memory REST API — are refused by ``MAX_TEXT_CHARS`` before anything
tokenizes them, while a second tenant's requests keep being served and the service stays small.

A real ``hivemem serve --http`` process with the real model. No timing threshold: the other
tenant's requests must all complete; the service's memory must not grow by anything like the
texts' tokenization (it grew by gigabytes before: 3 × 15 MiB texts took it to 10.7 GB).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import ALICE, BOB, http_service

from hivemem import LimitExceeded, connect
from hivemem.embed.validate import MAX_TEXT_CHARS
from hivemem.pool.workers import rss_bytes
from hivemem.service import wire

HUGE = 15 << 20  # characters: what the 16 MiB HTTP body still lets through


def _raw_embed(sock: Path, texts: list[str]) -> tuple[int, str]:
    """One EMBED frame from a client that skips the client library's checks → (code, message)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(str(sock))
        s.sendall(wire.frame(wire.EMBED, 7, wire.encode_texts(texts)))
        head = s.recv(wire.HEADER_SIZE, socket.MSG_WAITALL)
        ftype, rid, length = wire.parse_header(head, 1 << 30)
        body = s.recv(length, socket.MSG_WAITALL)
    assert (ftype, rid) == (wire.ERROR, 7), "the service embedded a text over the limit"
    return wire.decode_error(body)


def test_huge_texts_everywhere_at_once_are_refused_and_others_are_served(model_home: Path) -> None:
    with http_service(model_home) as svc:
        url, sock = svc["url"], svc["dir"] / "s.sock"
        pid = svc["proc"].pid
        with connect(sock, autostart=False) as client:
            client.embed(["warm up"])
        before = rss_bytes(pid)
        assert before is not None
        outcomes: dict[str, Any] = {}
        stop = threading.Event()
        served = {"socket": 0, "http": 0}

        def tenant() -> None:  # the other tenant: small requests over both transports, all answered
            with connect(sock, autostart=False) as other, httpx.Client(timeout=300) as http:
                i = 0
                while not stop.is_set() or i < 3:
                    assert other.embed([f"bob's note {i}"]).shape == (1, 384)
                    served["socket"] += 1
                    r = http.post(f"{url}/v1/embeddings", json={"input": [f"bob {i}"]}, headers=BOB)
                    assert r.status_code == 200, r.text
                    served["http"] += 1
                    i += 1

        def attempt(name: str, fn: Any) -> None:
            try:
                outcomes[name] = fn()
            except BaseException as exc:  # recorded, asserted below
                outcomes[name] = exc

        huge = "word " * (HUGE // 5)

        def http_embed() -> httpx.Response:
            return httpx.post(f"{url}/v1/embeddings", json={"input": [huge]}, headers=ALICE, timeout=300)

        def http_memory() -> httpx.Response:
            body = {"messages": huge[: 4 << 20], "user_id": "alice"}
            return httpx.post(f"{url}/v1/memories", json=body, headers=ALICE, timeout=300)

        def python_client() -> Any:
            with connect(sock, autostart=False) as c:
                return c.embed(["ok", huge])

        other = threading.Thread(target=attempt, args=("tenant", tenant))
        other.start()
        attackers = [
            threading.Thread(target=attempt, args=(name, fn))
            for name, fn in (
                ("socket", lambda: _raw_embed(sock, [huge])),
                ("http_embed", http_embed),
                ("http_memory", http_memory),
                ("python", python_client),
            )
        ]
        for t in attackers:
            t.start()
        for t in attackers:
            t.join(600)
        stop.set()
        other.join(600)
        after = rss_bytes(pid)

        code, message = outcomes["socket"]
        assert code == wire.E_BAD_REQUEST and "MAX_TEXT_CHARS" in message
        for name in ("http_embed", "http_memory"):
            r = outcomes[name]
            assert r.status_code == 422, (name, r.status_code, r.text[:300])
            assert r.json()["error"]["code"] == "limit_exceeded" and "MAX_TEXT_CHARS" in r.text
        assert isinstance(outcomes["python"], LimitExceeded)
        assert outcomes["tenant"] is None and served["socket"] >= 3 and served["http"] >= 3
        assert after is not None and after - before < 1 << 30, (before, after)
        # and the service still embeds a text right at the limit
        r = httpx.post(
            f"{url}/v1/embeddings", json={"input": ["é" * MAX_TEXT_CHARS]}, headers=ALICE, timeout=60
        )
        assert r.status_code == 200


def test_memory_api_refuses_long_texts_everywhere(tmp_path: Path, model_home: Path) -> None:
    from hivemem import Memory

    long = "x" * (MAX_TEXT_CHARS + 1)
    with Memory(path=tmp_path / "m.sqlite") as m:
        with pytest.raises(LimitExceeded, match=r"messages has 65,537 characters"):
            m.add(long, user_id="u")
        with pytest.raises(LimitExceeded, match=r"items\[1\]: messages\[0\]\['content'\]"):
            m.add_batch([{"messages": "fine", "user_id": "u"},
                         {"messages": [{"role": "user", "content": long}], "user_id": "u"}])  # fmt: skip
        mid = m.add("short", user_id="u")["results"][0]["id"]
        with pytest.raises(LimitExceeded, match="text has"):
            m.update(mid, long)
        with pytest.raises(LimitExceeded, match="query has"):
            m.search(long, user_id="u")
        assert [r["memory"] for r in m.get_all(user_id="u")["results"]] == ["short"]
