"""The dashboard's checks that need no browser and no model: sessions, forms over their limit, the
loopback Host rule, headers. Storage only: the memories are embedded by a hash of their text
(NOT a model), since only what the routes accept and refuse is measured here."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hash_embedder import HashEmbedder  # NOT a model: these tests measure limits and pages

from hivemem import Memory
from hivemem.http.app import create_app
from hivemem.http.keys import Scope
from hivemem.http.ui.memories import MAX_PAGE, MAX_UI_FILTER_CHARS
from hivemem.http.ui.sessions import Sessions
from hivemem.http.ui.web import MAX_UI_FORM_BYTES
from hivemem.memory.records import REMOTE_MAX_BATCH

pytestmark = pytest.mark.fast

BASE = "http://127.0.0.1:8080"


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[Memory]:
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    yield m
    m.close()


def client(memory: Memory, **keys: Scope) -> TestClient:
    app = create_app(HashEmbedder(), keys=dict(keys), memory=memory, host="127.0.0.1")
    return TestClient(app, base_url=BASE)


def signed_in(memory: Memory) -> tuple[TestClient, str]:
    """A client signed in as alice, and its CSRF token."""
    c = client(memory, **{"alice-key": Scope(user_id="alice")})
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/ui/login").text).group(1)
    r = c.post("/ui/login", data={"key": "alice-key", "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    page = c.get("/ui/memories").text
    return c, re.search(r'X-CSRF-Token": "([^"]+)"', page).group(1)


def test_sessions_expire_and_the_oldest_goes_past_the_limit() -> None:
    sessions = Sessions(max_sessions=2, idle=0.2, lifetime=10)
    a, first = sessions.start(Scope(user_id="a"))
    b, _ = sessions.start(Scope(user_id="b"))
    assert sessions.get(a) is first  # a is now the most recently used
    sessions.start(Scope(user_id="c"))
    assert sessions.get(b) is None and sessions.get(a) is first and len(sessions) == 2
    time.sleep(0.3)
    assert sessions.get(a) is None  # idle too long
    assert first.csrf_ok(first.csrf) and not first.csrf_ok(first.csrf[:-1] + "x") and not first.csrf_ok(None)
    assert Sessions(lifetime=0.0).get(Sessions().start(Scope())[0]) is None  # another store's id
    short = Sessions(lifetime=0.1)
    sid, _ = short.start(Scope())
    time.sleep(0.15)
    assert short.get(sid) is None  # past its lifetime, however busy


def test_a_session_cookie_holds_no_key_and_is_httponly_strict(memory: Memory) -> None:
    c = client(memory, **{"alice-key": Scope(user_id="alice")})
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/ui/login").text).group(1)
    r = c.post("/ui/login", data={"key": "alice-key", "csrf_token": token}, follow_redirects=False)
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("hm_ui="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "alice-key" not in cookie


def test_a_rebound_host_name_is_refused_on_loopback(memory: Memory) -> None:
    c = client(memory)  # no key configured: on loopback every key would be admin
    r = c.get("/ui/login", headers={"host": "attacker.example:8080"})
    assert r.status_code == 421
    assert c.get("/ui/login", headers={"host": "localhost:8080"}).status_code == 200


def test_no_key_configured_signs_in_as_admin_on_loopback(memory: Memory) -> None:
    memory.add("stored for bob", user_id="bob")
    c = client(memory)
    page = c.get("/ui/login").text
    assert "any key signs in as admin" in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    c.post("/ui/login", data={"key": "", "csrf_token": token})
    assert "stored for bob" in c.get("/ui/memories").text


def test_forms_and_queries_over_their_limits_are_refused(memory: Memory) -> None:
    c, csrf = signed_in(memory)
    headers = {"x-csrf-token": csrf, "content-type": "application/x-www-form-urlencoded"}
    big = c.post("/ui/memories/delete", content=b"ids=" + b"a" * MAX_UI_FORM_BYTES, headers=headers)
    assert big.status_code == 413 and "MAX_UI_FORM_BYTES" in big.text
    bad = c.post("/ui/memories/delete", content=b"ids=%ff%fe", headers=headers)
    assert bad.status_code == 400
    json_body = c.post("/ui/memories/delete", json={"ids": ["x"]}, headers={"x-csrf-token": csrf})
    assert json_body.status_code == 415
    many = c.post("/ui/memories/delete", data={"ids": [f"m{i}" for i in range(REMOTE_MAX_BATCH + 1)]},
                  headers={"x-csrf-token": csrf})  # fmt: skip
    assert many.status_code == 422 and "REMOTE_MAX_BATCH" in many.text
    assert c.get("/ui/memories", params={"page": MAX_PAGE + 1}).status_code == 422
    assert c.get("/ui/memories", params={"page": "-1"}).status_code == 422
    long_filter = c.get("/ui/memories", params={"filters": " " * (MAX_UI_FILTER_CHARS + 1)})
    assert long_filter.status_code == 422 and "MAX_UI_FILTER_CHARS" in long_filter.text
    deep = c.get("/ui/memories", params={"filters": "[" * 5000 + "]" * 5000})
    assert deep.status_code == 422
    not_object = c.get("/ui/memories", params={"filters": "[1]"}, headers={"hx-request": "true"})
    assert not_object.status_code == 422 and not_object.headers["hx-retarget"] == "#messages"
    bad_operator = c.get("/ui/memories", params={"filters": '{"n": {"gte ": 3}}'})
    assert bad_operator.status_code == 422  # the filter parser's own refusal, shown as a message


def test_every_ui_response_carries_the_security_headers(memory: Memory) -> None:
    c, _ = signed_in(memory)
    for path in ("/ui/login", "/ui/memories", "/ui/fleet", "/ui/static/style.css", "/ui/static/nothing"):
        r = c.get(path)
        assert r.headers["content-security-policy"].startswith("default-src 'none'"), path
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
    assert c.get("/ui/static/nothing").status_code == 404
    assert c.get("/ui/static/vendor/htmx-2.0.11.min.js").headers["content-type"].startswith("text/javascript")


def test_a_selection_with_another_users_id_deletes_nothing(memory: Memory) -> None:
    mine = memory.add("alice's own", user_id="alice")["results"][0]["id"]
    theirs = memory.add("bob's own", user_id="bob")["results"][0]["id"]
    c, csrf = signed_in(memory)
    r = c.post("/ui/memories/delete", data={"ids": [mine, theirs]}, headers={"x-csrf-token": csrf})
    assert r.status_code == 404 and "nothing was deleted" in r.text and "bob's own" not in r.text
    assert memory.get(mine) is not None and memory.get(theirs) is not None
