"""Hostile HTTP clients against a real ``hivemem serve --http`` (the standing module of issue 9 for
the HTTP part): scope wildcards, filters and metadata past their limits, values JSON allows but
Unicode does not, a pooled agent calling sys.exit, requests that never finish arriving — and
schemathesis, statefully, following the spec's links from an added memory to its id routes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import ADMIN, ALICE, BOB, http_service
from hypothesis import HealthCheck, settings
from service_helpers import ROOT

READ_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def svc(model_home: Path) -> Iterator[dict]:
    agent = ["--agent", "http_agents:make_agent", "--agent-fn", "http_agents:hostile", "--agent-workers", "1"]
    with http_service(model_home, *agent, "--http-read-timeout", str(READ_TIMEOUT)) as s:
        yield s


@pytest.fixture(scope="module")
def api(svc: dict) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc["url"], timeout=120) as c:
        c.post("/v1/memories", json={"messages": "alice likes tea", "user_id": "alice"}, headers=ADMIN)
        c.post("/v1/memories", json={"messages": "bob likes coffee", "user_id": "bob"}, headers=ADMIN)
        yield c


def _count(api: httpx.Client) -> int:
    r = api.get("/v1/memories", params={"top_k": 10_000}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return len(r.json()["results"])


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    return r.json()["error"]


# -- defect 1 ---------------------------------------------------------------------------------------


def test_star_is_not_a_tenant_over_http(api: httpx.Client) -> None:
    """DELETE /v1/memories?user_id=* deleted every tenant's memories."""
    before = _count(api)
    assert before >= 2
    for headers in (ADMIN, ALICE):
        for params in ({"user_id": "*"}, {"agent_id": "*"}, {"run_id": "*"}):
            if headers is ALICE and "user_id" in params:
                continue  # alice naming another user is a 403 before anything else
            assert (
                "not a valid id"
                in _error(api.delete("/v1/memories", params=params, headers=headers), 422)["message"]
            )
            assert (
                "not a valid id"
                in _error(api.get("/v1/memories", params=params, headers=headers), 422)["message"]
            )
    add = api.post("/v1/memories", json={"messages": "x", "user_id": "*"}, headers=ADMIN)
    assert "not a valid id" in _error(add, 422)["message"]
    assert _count(api) == before
    # alice's own filter wildcard cannot widen her scope
    mine = api.post("/v1/memories/list", json={"filters": {"user_id": "*"}}, headers=ALICE).json()["results"]
    assert {r["user_id"] for r in mine} == {"alice"}


# -- defects 5 and 6 --------------------------------------------------------------------------------


def _nest(kind: str, depth: int) -> dict[str, Any]:
    f: dict[str, Any] = {"k": 1}
    for _ in range(depth):
        f = {kind: [f]}
    return f


@pytest.mark.parametrize(
    ("filters", "limit"),
    [
        (_nest("AND", 60), "MAX_FILTER_DEPTH"),
        ({"OR": [{"k": i} for i in range(1200)]}, "MAX_FILTER_BRANCHES"),
        ({"k": {"in": list(range(10_001))}}, "MAX_IN_VALUES"),
    ],
    ids=["and-60", "or-1200", "in-10001"],
)
def test_filter_limits_are_422_naming_the_limit(api: httpx.Client, filters: dict, limit: str) -> None:
    """These were HTTP 500 (a raw sqlite3.OperationalError / RecursionError)."""
    for path, body in (("/v1/memories/list", {}), ("/v1/memories/search", {"query": "drinks"})):
        for headers in (ADMIN, BOB):
            err = _error(api.post(path, json={**body, "filters": filters}, headers=headers), 422)
            assert limit in err["message"] and err["code"] == "limit_exceeded" and err["param"] == "filters"
    users = {"in": ["bob", *map(str, range(9000))]}  # a long in-list is fine: one bound parameter
    found = api.post("/v1/memories/list", json={"filters": {"user_id": users}}, headers=ADMIN)
    assert found.status_code == 200 and {r["user_id"] for r in found.json()["results"]} == {"bob"}


def test_deep_metadata_is_refused_and_reads_keep_working(api: httpx.Client) -> None:
    """Metadata nested 900 deep was stored, and every later list/search of that user was a 500."""
    deep: Any = "leaf"
    for _ in range(900):
        deep = {"k": deep}
    r = api.post(
        "/v1/memories", json={"messages": "deep", "user_id": "dora", "metadata": deep}, headers=ADMIN
    )
    err = _error(r, 422)
    assert "MAX_METADATA_DEPTH" in err["message"] and err["param"] == "metadata"
    big = {"blob": "x" * 70_000}
    err = _error(api.post("/v1/memories", json={"messages": "big", "user_id": "dora", "metadata": big},
                          headers=ADMIN), 422)  # fmt: skip
    assert "MAX_METADATA_BYTES" in err["message"]
    assert api.get("/v1/memories", params={"user_id": "dora"}, headers=ADMIN).json()["results"] == []
    assert (
        api.post("/v1/memories/search", json={"query": "deep", "user_id": "dora"}, headers=ADMIN).status_code
        == 200
    )
    assert _count(api) >= 2


def test_a_body_nested_beyond_the_json_parser_is_a_4xx(api: httpx.Client) -> None:
    body = '{"filters": ' + '{"AND": [' * 50_000 + "{}" + "]}" * 50_000 + "}"
    r = api.post("/v1/memories/list", content=body, headers={**ADMIN, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text[:300]


# -- item 8 over HTTP -------------------------------------------------------------------------------


def test_values_json_allows_but_unicode_does_not(api: httpx.Client) -> None:
    """A lone surrogate (JSON "\\ud800") was a raw UnicodeEncodeError; NaN silently found nothing."""
    for field in ("user_id", "agent_id", "run_id"):
        ids = {"user_id": "u", field: "a\\ud800"}  # the JSON escape of a lone surrogate, as sent
        raw = '{"messages": "x", ' + ", ".join(f'"{k}": "{v}"' for k, v in ids.items()) + "}"
        r = api.post("/v1/memories", content=raw, headers={**ADMIN, "content-type": "application/json"})
        assert field in _error(r, 422)["message"] and "surrogate" in r.text
    raw = '{"messages": [{"role": "user", "content": "x", "name": "\\udcff"}], "user_id": "u"}'
    r = api.post("/v1/memories", content=raw, headers={**ADMIN, "content-type": "application/json"})
    assert "['name']" in _error(r, 422)["message"]
    raw = '{"query": "tea", "threshold": NaN}'
    r = api.post("/v1/memories/search", content=raw, headers={**ADMIN, "content-type": "application/json"})
    assert "finite" in _error(r, 422)["message"]
    assert _error(api.delete("/v1/memories/no-such-id", headers=ADMIN), 404)["type"] == "not_found_error"


# -- defect 2 through the SSE route -----------------------------------------------------------------


def _events(text: str) -> list[tuple[str, Any]]:
    out, name = [], "message"
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
            name = "message"
    return out


def _sys_exit_through_sse(url: str, proc: Any) -> None:
    first = httpx.post(f"{url}/v1/agent/stream", json={"input": "who"}, headers=ALICE, timeout=120)
    pid = _events(first.text)[0][1]["pid"]
    r = httpx.post(f"{url}/v1/agent/stream", json={"input": {"exit": 3}}, headers=ALICE, timeout=120)
    events = _events(r.text)
    assert events[0] == ("message", {"n": 1})
    assert events[1][0] == "error" and events[1][1]["type"] == "WorkerExited", events
    assert "exit code 3" in events[1][1]["message"]
    assert proc.poll() is None  # the service is still running …
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # … and serving
    again = httpx.post(f"{url}/v1/agent/stream", json={"input": "who"}, headers=ALICE, timeout=120)
    assert _events(again.text)[-1] == ("done", {})
    return pid, _events(again.text)[0][1]["pid"]


def test_sys_exit_in_a_process_agent_fails_one_stream(svc: dict) -> None:
    """sys.exit() in the agent stopped the whole HTTP service."""
    before, after = _sys_exit_through_sse(svc["url"], svc["proc"])
    assert before != after  # the worker process was replaced


def test_sys_exit_in_a_thread_agent_fails_one_stream(model_home: Path) -> None:
    agent = [
        "--agent",
        "http_agents:make_agent",
        "--agent-fn",
        "http_agents:hostile",
        "--agent-kind",
        "thread",
    ]
    with http_service(model_home, *agent, "--agent-workers", "1") as s:
        _sys_exit_through_sse(s["url"], s["proc"])


# -- item 8: requests that never finish arriving ----------------------------------------------------


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(30 * READ_TIMEOUT)  # a hang guard: the service must close well before it
    return s


def _until_closed(s: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except TimeoutError:
        pytest.fail("the service kept a connection whose request never finished arriving")
    finally:
        s.close()
    return got


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"POST /v1/memories HTTP/1.1\r\nHost: x\r\n",  # headers never end
        b"POST /v1/memories HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Authorization: Bearer admin-key-003\r\nContent-Length: 100\r\n\r\n{"messages":',  # body never ends
    ],
    ids=["silent", "headers", "body"],
)
def test_a_request_that_never_arrives_is_cut_off(svc: dict, sent: bytes) -> None:
    s = _raw(svc["url"])
    s.sendall(sent)
    started = time.monotonic()
    got = _until_closed(s)
    assert got.startswith(b"HTTP/1.1 408") or (got == b"" and not sent), got[:200]
    assert time.monotonic() - started < 30 * READ_TIMEOUT
    assert httpx.get(f"{svc['url']}/health", timeout=30).status_code == 200


def test_slow_but_steady_headers_are_cut_off_too(svc: dict) -> None:
    """Slowloris: a byte now and then keeps no deadline from running."""
    s = _raw(svc["url"])
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    try:
        for i in range(len(head)):
            s.sendall(head[i : i + 1])
            time.sleep(READ_TIMEOUT / 8)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed on us: the point
    got = _until_closed(s)
    assert got.startswith(b"HTTP/1.1 408") or got == b""


# -- schemathesis, statefully: add → get/update/history/delete by the returned id --------------------

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")


def test_stateful_links_never_give_a_5xx(svc: dict) -> None:
    spec = json.loads((ROOT / "docs" / "openapi.json").read_text())
    links = spec["paths"]["/v1/memories"]["post"]["responses"]["200"].get("links", {})
    assert {"GetMemory", "UpdateMemory", "DeleteMemory", "MemoryHistory"} <= set(links)
    url = svc["url"]
    seen: list[tuple[str, int]] = []

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": url, "headers": ADMIN, "timeout": 120}

        def before_call(self, case: Any) -> None:
            # Keys are fuzzed by the stateless tests; here every call is the admin's, and an add gets a
            # scope if it has none, so that scenarios get past the add and follow its links.
            case.headers = {**(case.headers or {}), **ADMIN}
            if case.operation.path == "/v1/memories" and isinstance(case.body, dict):
                if not any(case.body.get(k) for k in ("user_id", "agent_id", "run_id")):
                    case.body["user_id"] = "fuzz"
                case.body["infer"] = False

        def after_call(self, response: Any, case: Any) -> None:
            seen.append((f"{case.operation.method.upper()} {case.operation.path}", response.status_code))

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=[not_a_server_error])

    Machine.run(
        settings=settings(
            max_examples=20,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,  # the same scenarios every run: the suite stays bounded and repeatable
            suppress_health_check=list(HealthCheck),
        )
    )
    # the links were followed: an id from an add reached a by-id route and was found there
    assert any(
        op.startswith(("GET", "PUT", "DELETE")) and "{memory_id}" in op and code == 200 for op, code in seen
    )
