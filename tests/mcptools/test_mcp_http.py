"""Streamable HTTP MCP at ``/mcp`` of a real ``hivemem serve --http`` process, with the SDK client and
the REST API's Bearer keys."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_helpers import ok, refused

KEYS = {
    "alice-key-0001": {"user_id": "alice"},
    "bob-key-00002": {"user_id": "bob"},
    "admin-key-003": {"admin": True},
}


@pytest.fixture
def http_url(mcp_env: dict[str, str]) -> Iterator[str]:
    directory = Path(mcp_env["HIVEMEM_SOCKET"]).parent
    (directory / "keys.json").write_text(json.dumps(KEYS))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = ["--http", f"127.0.0.1:{port}", "--keys", str(directory / "keys.json")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hivemem", "serve", *options],
        env=mcp_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(60)


@asynccontextmanager
async def http_agent(url: str, key: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        yield client


def test_no_key_or_a_wrong_key_is_401(http_url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic alice-key-0001"}):
        reply = httpx.post(f"{http_url}/mcp", json=body, headers=headers, timeout=30)
        assert reply.status_code == 401, reply.text
        assert "API key" in reply.json()["error"]["message"]


async def test_keys_scope_the_tools(http_url: str) -> None:
    async with (
        http_agent(http_url, "alice-key-0001") as alice,
        http_agent(http_url, "bob-key-00002") as bob,
        http_agent(http_url, "admin-key-003") as admin,
    ):
        tools = {t.name: t for t in (await alice.list_tools()).tools}
        assert "user_id" in tools["add_memories"].input_schema["properties"]  # HTTP keys may name scopes
        mine = await ok(alice, "add_memories", {"text": "alice plays the cello", "agent_id": "music"})
        memory_id = mine["results"][0]["id"]
        assert "limited to user_id 'alice'" in await refused(
            alice, "add_memories", {"text": "x", "user_id": "bob"}
        )
        assert "limited to user_id 'bob'" in await refused(bob, "list_memories", {"user_id": "alice"})
        assert "not found" in await refused(bob, "get_memory", {"memory_id": memory_id})
        assert (await ok(bob, "search_memory", {"query": "cello"}))["results"] == []
        assert "no scope" in await refused(admin, "list_memories", {})  # never the whole store
        seen = await ok(admin, "search_memory", {"query": "which instrument?", "user_id": "alice"})
        assert [r["id"] for r in seen["results"]] == [memory_id]
        narrowed = await ok(alice, "list_memories", {"agent_id": "other"})
        assert narrowed["results"] == []
        # the REST API sees the same store
        rest = httpx.get(
            f"{http_url}/v1/memories/{memory_id}",
            headers={"Authorization": "Bearer alice-key-0001"},
            timeout=30,
        )
        assert rest.json()["memory"] == "alice plays the cello"
        assert "top_k" in await refused(alice, "list_memories", {"top_k": 10**9})
        await ok(alice, "delete_all_memories")  # still usable after the refusals
