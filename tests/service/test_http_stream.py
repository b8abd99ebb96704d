"""``POST /v1/agent/stream``: a real service streaming a real WorkerPool's generator as SSE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import ALICE, http_service

from hivemem.app.serve import _agent
from hivemem.pool.pool import WorkerPool


@pytest.fixture(scope="module")
def url(model_home: Path) -> Iterator[str]:
    agent = ["--agent", "http_agents:make_agent", "--agent-fn", "http_agents:gated", "--agent-workers", "1"]
    with http_service(model_home, *agent) as svc:
        yield svc["url"]


def _events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event name, JSON data) per Server-Sent Event."""
    name = "message"
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])
            name = "message"


def test_items_arrive_one_by_one(url: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    body = {"input": {"gate": str(gate)}}
    with (
        httpx.Client(base_url=url, timeout=60) as c,
        c.stream("POST", "/v1/agent/stream", json=body, headers=ALICE) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.iter_lines())
        name, first = next(events)  # arrives while the worker is still blocked on the gate
        assert name == "message" and first["n"] == 0
        gate.touch()
        rest = list(events)
    assert [d["n"] for _, d in rest[:-1]] == [1, 2, 3]
    assert {d["pid"] for _, d in rest[:-1]} == {first["pid"]}  # one warm worker process served it all
    assert rest[-1] == ("done", {})


def test_agent_failure_is_an_error_event(url: str) -> None:
    r = httpx.post(f"{url}/v1/agent/stream", json={"input": {"fail": True}}, headers=ALICE, timeout=60)
    assert r.status_code == 200
    assert list(_events(iter(r.text.splitlines()))) == [
        ("error", {"type": "ValueError", "message": "the agent refused: fail was set"})
    ]


def test_stream_needs_a_key_and_a_body(url: str) -> None:
    assert httpx.post(f"{url}/v1/agent/stream", json={"input": "x"}).status_code == 401
    r = httpx.post(f"{url}/v1/agent/stream", json={"nope": 1}, headers=ALICE)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input"]


def test_demo_agent_streams_the_echo() -> None:
    factory, fn = _agent("demo", None)
    with WorkerPool(factory, size=1, kind="thread") as pool:
        assert "".join(pool.stream(fn, "hello there", 0)) == "echo: hello there"
    with pytest.raises(Exception, match="go together"):
        _agent("http_agents:make_agent", None)
