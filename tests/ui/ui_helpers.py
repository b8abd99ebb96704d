"""Helpers of the dashboard's browser tests (constants, REST calls, signing in)."""

from __future__ import annotations

import os
from typing import Any

import httpx

CHROMIUM = os.environ.get("HIVEMEM_CHROMIUM", "/usr/bin/chromium")
KEYS = {
    "alice-ui-key-7f3a9c": {"user_id": "alice"},
    "bob-ui-key-22e8d1": {"user_id": "bob"},
    "admin-ui-key-c0ffee": {"admin": True},
}
ALICE_KEY, BOB_KEY, ADMIN_KEY = KEYS


def why_no_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright; never playwright install)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set HIVEMEM_CHROMIUM)"
    return None


def add(url: str, key: str, text: str, **fields: Any) -> str:
    """Store one memory through the REST API; its id."""
    r = httpx.post(
        f"{url}/v1/memories",
        json={"messages": text, **fields},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    r.raise_for_status()
    return str(r.json()["results"][0]["id"])


def get(url: str, key: str, memory_id: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/memories/{memory_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/ui/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
