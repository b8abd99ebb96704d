"""The dashboard in a real browser (chromium) against a real ``hivemem serve --http`` with the model.

Driven by accessible names only ("API key", "Sign in", "Search memories", "Delete", "Fleet"), as
a screen reader would. With ``HIVEMEM_UI_SCREENSHOTS=DIR`` the tests also save each page to DIR
(docs/ui/*.png are made so).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_helpers import ADMIN_KEY, ALICE_KEY, BOB_KEY, KEYS, add, get, sign_in

pytestmark = pytest.mark.slow  # a service with the model and a browser: not in make test-fast

try:
    from playwright.sync_api import expect
except ImportError:  # the fixtures skip with the reason
    expect = None  # type: ignore[assignment]


def shot(page: Any, name: str) -> None:
    where = os.environ.get("HIVEMEM_UI_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)


def csrf_of(page: Any) -> str:
    headers = page.locator("body").get_attribute("hx-headers")
    return str(re.search(r'"X-CSRF-Token": "([^"]+)"', headers).group(1))


def test_sign_in_search_detail_edit_and_delete(server: dict, context: Any) -> None:
    url = server["url"]
    texts = [
        "I am allergic to peanuts",
        "My favourite city is Lisbon",
        "I play the cello on Sundays",
        "Our team ships releases on Thursdays",
    ]
    ids = {t: add(url, ALICE_KEY, t, metadata={"topic": "profile"}) for t in texts}
    ctx, _ = context
    page = ctx.new_page()
    page.on("dialog", lambda d: d.accept())  # the confirmation of every Delete

    sign_in(page, url, ALICE_KEY)
    expect(page).to_have_url(re.compile(r"/ui/memories$"))
    listed = page.get_by_role("table", name="Memories")
    for text in texts:
        expect(listed.get_by_role("link", name=text)).to_be_visible()
    expect(page.get_by_text("user alice")).to_be_visible()
    shot(page, "memories")

    search = page.get_by_label("Search memories")
    search.fill("food allergies")
    search.press("Enter")  # Enter runs the search
    results = page.get_by_role("table", name="Search results")
    first = results.get_by_role("row").nth(1)
    expect(first).to_contain_text("I am allergic to peanuts")
    expect(first.get_by_role("cell").nth(2)).to_have_text(re.compile(r"^-?\d+\.\d{4}$"))  # the fused score
    expect(page).to_have_url(re.compile(r"q=food(\+|%20)allergies"))
    shot(page, "search")

    first.get_by_role("link", name="I am allergic to peanuts").click()
    expect(page.get_by_role("heading", name=re.compile("^Memory"))).to_be_visible()
    history = page.get_by_role("table").last
    expect(history.get_by_role("row").nth(1)).to_contain_text("ADD")
    page.get_by_label("Text", exact=True).fill("I am allergic to peanuts and cashews")
    page.get_by_label("Metadata (JSON)").fill('{"topic": "health", "severity": 3}')
    page.get_by_role("button", name="Save").click()
    expect(page.locator("dl.facts")).to_contain_text("I am allergic to peanuts and cashews")
    expect(page.get_by_role("table").last.get_by_role("row").nth(2)).to_contain_text("UPDATE")
    shot(page, "memory")
    stored = get(url, ALICE_KEY, ids[texts[0]]).json()
    assert stored["memory"] == "I am allergic to peanuts and cashews"
    assert stored["metadata"] == {"topic": "health", "severity": 3}

    page.get_by_role("link", name="← Memories").click()
    row = page.get_by_role("row").filter(has_text="My favourite city is Lisbon")
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert get(url, ALICE_KEY, ids[texts[1]]).status_code == 404

    page.get_by_role("checkbox", name=f"Select {texts[2]}").check()
    page.get_by_role("checkbox", name=f"Select {texts[3]}").check()
    page.get_by_role("button", name="Delete selected").click()
    expect(page.get_by_role("link", name=texts[2])).to_have_count(0)
    expect(page.get_by_role("link", name=texts[3])).to_have_count(0)
    assert [get(url, ALICE_KEY, ids[t]).status_code for t in texts[2:]] == [404, 404]
    expect(page.get_by_role("link", name="I am allergic to peanuts and cashews")).to_be_visible()


def test_delete_on_the_detail_page_and_paging_and_filters(server: dict, context: Any) -> None:
    url = server["url"]
    items = [
        {"messages": f"carol's note number {i:03d}", "user_id": "carol", "metadata": {"n": i}}
        for i in range(55)
    ]
    r = httpx.post(
        f"{url}/v1/memories/batch",
        json={"items": items},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=120,
    )
    r.raise_for_status()
    ctx, _ = context
    page = ctx.new_page()
    page.on("dialog", lambda d: d.accept())
    sign_in(page, url, ADMIN_KEY)
    page.get_by_text("Filters", exact=True).click()
    page.get_by_label("User").fill("carol")
    page.get_by_role("button", name="Apply filters").click()
    rows = page.get_by_role("table", name="Memories").get_by_role("row")
    expect(rows).to_have_count(51)  # a header and a page of 50
    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(6)
    expect(rows.nth(5)).to_contain_text("carol's note number 054")

    page.get_by_label("Metadata filter (JSON)").fill('{"n": {"gte": 53}}')
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(3)
    page.get_by_role("link", name="carol's note number 053").click()
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/ui/memories$"))
    found = httpx.post(
        f"{url}/v1/memories/list",
        json={"user_id": "carol", "filters": {"n": {"gte": 53}}},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ).json()["results"]
    assert [m["memory"] for m in found] == ["carol's note number 054"]

    page.get_by_text("Filters", exact=True).click()
    page.get_by_label("Metadata filter (JSON)").fill('{"n": {"gte": ')
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_role("alert")).to_contain_text("the metadata filter is not valid JSON")


def test_a_memory_holding_markup_shows_as_text(server: dict, context: Any) -> None:
    url = server["url"]
    hostile = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">', '" onmouseover="alert(3)']
    for text in hostile:
        add(url, ALICE_KEY, text)
    ctx, recorder = context
    page = ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    recorder.watch(page)
    sign_in(page, url, ALICE_KEY)
    for text in hostile:
        expect(page.get_by_role("link", name=text, exact=True)).to_be_visible()
    search = page.get_by_label("Search memories")
    search.fill("alert")
    search.press("Enter")
    expect(
        page.get_by_role("table", name="Search results").get_by_role("link", name=hostile[0])
    ).to_be_visible()
    page.get_by_role("link", name=hostile[1], exact=True).click()
    expect(page.locator("dl.facts dd").first).to_have_text(hostile[1])
    assert page.locator("img").count() == 0
    assert page.locator("script", has_text="alert").count() == 0
    assert dialogs == []
    assert not [m for m in recorder.console if "Content Security Policy" in m], recorder.console


def test_changes_without_the_csrf_token_are_refused(server: dict, context: Any) -> None:
    url = server["url"]
    victim = add(url, ALICE_KEY, "a memory somebody wants gone")
    ctx, _ = context
    page = ctx.new_page()
    sign_in(page, url, ALICE_KEY)
    token = csrf_of(page)
    delete = f"{url}/ui/memories/{victim}/delete"

    assert page.request.post(delete, form={}).status == 403  # the session cookie alone is not enough
    assert page.request.post(delete, headers={"X-CSRF-Token": "x" * 43}).status == 403
    assert page.request.post(delete, form={"csrf_token": token[:-1]}).status == 403
    edit = page.request.post(f"{url}/ui/memories/{victim}/edit", form={"text": "changed"})
    assert edit.status == 403
    foreign = page.request.post(delete, headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert foreign.status == 403
    assert page.request.post(f"{url}/ui/logout", form={}).status == 403
    assert get(url, ALICE_KEY, victim).json()["memory"] == "a memory somebody wants gone"

    # A page of another site posting a form: the SameSite=Strict cookie does not go with it.
    evil = f'<form method="post" action="{delete}"><button>win</button></form>'
    page.route("http://evil.example/", lambda route: route.fulfill(body=evil, content_type="text/html"))
    page.goto("http://evil.example/")
    page.get_by_role("button", name="win").click()
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    assert get(url, ALICE_KEY, victim).status_code == 200

    # The sign-in form has its own token: a sign-in posted without it is refused.
    assert httpx.post(f"{url}/ui/login", data={"key": ALICE_KEY}).status_code == 403

    # With the token the same change goes through (so the refusals above are the token's doing).
    assert page.request.post(delete, headers={"X-CSRF-Token": token}).status == 200
    assert get(url, ALICE_KEY, victim).status_code == 404


def test_one_tenant_never_sees_another_tenants_memories(server: dict, context: Any) -> None:
    url = server["url"]
    secret = "Bob keeps the vault combination under the zebra rug"
    bob_id = add(url, BOB_KEY, secret, metadata={"topic": "vault"})
    add(url, ALICE_KEY, "Alice once saw a zebra at the zoo", metadata={"topic": "vault"})
    ctx, recorder = context
    page = ctx.new_page()
    page.on("dialog", lambda d: d.accept())
    sign_in(page, url, ALICE_KEY)
    token = csrf_of(page)

    search = page.get_by_label("Search memories")
    search.fill("vault combination zebra rug")
    search.press("Enter")
    expect(page.get_by_role("table", name="Search results")).to_contain_text("Alice once saw a zebra")
    page.get_by_text("Filters", exact=True).click()
    page.get_by_label("Metadata filter (JSON)").fill('{"OR": [{"user_id": "bob"}, {"topic": "vault"}]}')
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_role("table", name="Search results")).to_contain_text("Alice once saw a zebra")
    search.fill("")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_role("table", name="Memories")).to_contain_text("Alice once saw a zebra")

    page.goto(f"{url}/ui/memories?user_id=bob")
    expect(page.get_by_role("alert")).to_contain_text("limited to user_id 'alice'")
    page.goto(f"{url}/ui/memories/{bob_id}")
    expect(page.get_by_role("alert")).to_contain_text("no memory")
    fragment = page.request.get(f"{url}/ui/memories?q=vault+combination", headers={"HX-Request": "true"})
    assert fragment.ok and secret not in fragment.text()
    for action, form in (("edit", {"text": "mine now"}), ("delete", {})):
        r = page.request.post(
            f"{url}/ui/memories/{bob_id}/{action}", form=form, headers={"X-CSRF-Token": token}
        )
        assert r.status == 404
    r = page.request.post(f"{url}/ui/memories/delete", form={"ids": bob_id}, headers={"X-CSRF-Token": token})
    assert r.status == 404
    page.get_by_role("link", name="Fleet").click()
    expect(page.get_by_role("heading", name="Service")).to_be_visible()
    expect(page.get_by_role("heading", name="Memory stores")).to_have_count(0)  # counts span tenants

    assert get(url, BOB_KEY, bob_id).json()["memory"] == secret
    leaks = [u for u, body in recorder.bodies if "Bob keeps" in body]  # the queries hold other words
    assert not leaks, leaks


def test_a_wrong_key_sees_nothing(server: dict, context: Any) -> None:
    url = server["url"]
    add(url, ALICE_KEY, "Alice's dentist is on Elm street")
    ctx, recorder = context
    page = ctx.new_page()
    for wrong in ("not-a-key", ALICE_KEY + "x", ""):
        sign_in(page, url, wrong)
        expect(page.get_by_role("alert")).to_have_text("wrong API key")
        expect(page.get_by_label("API key")).to_have_value("")  # never echoed back
    page.goto(f"{url}/ui/memories")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.goto(f"{url}/ui/fleet")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    assert page.request.get(f"{url}/ui/fleet/series.json").status == 401
    assert page.request.get(f"{url}/ui/memories", headers={"HX-Request": "true"}).status == 401
    assert ctx.cookies() == [] or all(c["name"] != "hm_ui" for c in ctx.cookies())
    assert not [u for u, body in recorder.bodies if "dentist" in body]


def test_the_key_is_in_no_url_cookie_page_or_log(server: dict, context: Any) -> None:
    url = server["url"]
    add(url, ADMIN_KEY, "the admin wrote this down", user_id="dave")
    ctx, recorder = context
    page = ctx.new_page()
    sign_in(page, url, ADMIN_KEY)
    expect(page.get_by_text("admin key")).to_be_visible()
    search = page.get_by_label("Search memories")
    search.fill("what did the admin write")
    search.press("Enter")
    page.get_by_role("link", name="the admin wrote this down").first.click()
    page.get_by_role("link", name="Fleet").click()
    expect(page.get_by_role("heading", name="Memory stores")).to_be_visible()
    session = [c for c in ctx.cookies() if c["name"] == "hm_ui"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    page.goto(f"{url}/ui/memories")
    expect(page).to_have_url(re.compile(r"/ui/login$"))  # the session ended on the server

    for key in KEYS:
        assert not [u for u in recorder.urls if key in u]
        assert not [c for c in ctx.cookies() if key in c["value"]]
        assert not [u for u, body in recorder.bodies if key in body]
    log = server["log"].read_text(errors="replace")
    assert log.strip(), "the server logged nothing: the check below would prove nothing"
    assert not [k for k in KEYS if k in log]


def _a_run_and_a_library(server: dict) -> Path:
    """A real `hivemem run` (one item of three fails) and `hivemem tasks convert` in the server's
    runtime directory, for the fleet page to list; the run's results file."""
    project = server["dir"] / "project"
    project.mkdir(exist_ok=True)
    (project / "job.py").write_text("def work(item):\n    return 1 / item['x']\n")
    (project / "items.jsonl").write_text("".join(f'{{"id": {i}, "x": {i}}}\n' for i in range(3)))
    (project / "tasks.json").write_text('{"math": [{"id": "m1"}, {"id": "m2"}], "code": [{"id": "c1"}]}')
    cli = [sys.executable, "-m", "hivemem.app.cli"]
    run = [*cli, "run", "job:work", "--items", "items.jsonl", "--results", "out.jsonl", "--no-progress"]
    for cmd, rc in ((run, 1), ([*cli, "tasks", "convert", "tasks.json", "tasks.db"], 0)):
        done = subprocess.run(
            cmd, env=server["env"], cwd=project, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == rc, (cmd, done.stdout, done.stderr)
    return project / "out.jsonl"


def test_the_fleet_page_shows_the_service_and_a_live_chart(server: dict, context: Any) -> None:
    url = server["url"]
    results = _a_run_and_a_library(server)
    ctx, recorder = context
    page = ctx.new_page()
    recorder.watch(page)
    sign_in(page, url, ADMIN_KEY)
    page.get_by_role("link", name="Fleet").click()
    service = page.get_by_role("region", name="Service").get_by_role("table")
    expect(service.get_by_role("row", name=re.compile("^model"))).to_contain_text("all-MiniLM-L6-v2")
    expect(service.get_by_role("row", name=re.compile("^cache hit rate"))).to_be_visible()
    stores = page.get_by_role("region", name="Memory stores").get_by_role("table")
    expect(stores.get_by_role("row", name=re.compile("served over HTTP"))).to_contain_text("memory.sqlite")
    runs = page.get_by_role("region", name="Runs").get_by_role("table")
    row = runs.get_by_role("row", name=str(results.resolve()))
    expect(row).to_contain_text("finished")
    expect(row.get_by_role("cell")).to_have_text(
        [re.compile("out.jsonl"), "finished", "2", "1", "3", "-", re.compile("."), re.compile(" on ")]
    )
    libraries = page.get_by_role("region", name="Task libraries").get_by_role("table")
    expect(libraries.get_by_role("row", name=re.compile("tasks.db"))).to_contain_text("math: 2, code: 1")
    for i in range(8):  # texts embedded while the page polls: the chart has something to show
        add(url, ALICE_KEY, f"fleet chart sample {i}")
    expect(page.locator("#chart canvas")).to_have_count(1, timeout=15000)
    deadline = time.monotonic() + 20  # the memory store's embedding counts (texts the model ran)
    while max(page.request.get(f"{url}/ui/fleet/series.json").json()["texts_per_s"], default=0) <= 0:
        assert time.monotonic() < deadline, "the chart never saw the texts the memory store embedded"
        time.sleep(0.5)
    expect(page.get_by_role("status")).to_contain_text("texts/s", timeout=15000)
    shot(page, "fleet")
    assert not [m for m in recorder.console if "Content Security Policy" in m or "error" in m[:6]], (
        recorder.console
    )


def test_sign_in_page(server: dict, context: Any) -> None:
    ctx, _ = context
    page = ctx.new_page()
    response = page.goto(f"{server['url']}/ui/login")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    expect(page.get_by_label("API key")).to_have_attribute("type", "password")
    shot(page, "sign-in")
