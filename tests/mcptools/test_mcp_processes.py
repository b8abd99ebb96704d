"""Many agents and things going wrong, with real processes: 25 concurrent stdio agents on one store,
the service killed (-9) under load, an agent killed mid-call. Nothing lost, nothing duplicated."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mcp_helpers import agent, ok

from hivemem.memory.store import Memory


def _stored(env: dict[str, str]) -> list[dict]:
    with Memory(env["HIVEMEM_MEMORY_URL"]) as memory:
        return memory.get_all(filters={"user_id": "*"}, top_k=100_000)["results"]


def _service_pid(env: dict[str, str]) -> int:
    return int(Path(env["HIVEMEM_SOCKET"] + ".pid").read_text().strip())


@pytest.mark.slow
async def test_25_concurrent_stdio_agents_on_one_store(mcp_env: dict[str, str]) -> None:
    agents, adds = 25, 4

    async def one(i: int) -> list[str]:
        async with agent(mcp_env, "--user-id", "team", "--agent-id", f"a{i}") as client:
            ids = []
            for j in range(adds):
                result = await ok(client, "add_memories", {"text": f"agent {i} learned fact number {j}"})
                ids.append(result["results"][0]["id"])
            listed = await ok(client, "list_memories", {"top_k": 100})
            assert sorted(r["id"] for r in listed["results"]) == sorted(ids)  # its own, all of them
            return ids

    results = await asyncio.gather(*(one(i) for i in range(agents)))
    rows = _stored(mcp_env)
    assert len(rows) == agents * adds
    assert Counter(r["memory"] for r in rows).most_common(1)[0][1] == 1
    assert sorted(r["id"] for r in rows) == sorted(i for ids in results for i in ids)


@pytest.mark.slow
async def test_the_service_killed_under_load_loses_and_duplicates_nothing(mcp_env: dict[str, str]) -> None:
    agents, adds = 5, 16
    killed = asyncio.Event()

    async def one(i: int) -> None:
        async with agent(mcp_env, "--user-id", f"u{i}") as client:
            for j in range(adds):
                await ok(client, "add_memories", {"text": f"user {i} remembers item {j}"})  # never an error
                if i == 0 and j == adds // 2:
                    os.kill(_service_pid(mcp_env), signal.SIGKILL)  # while the others are mid-call
                    killed.set()
            assert len((await ok(client, "list_memories"))["results"]) == adds

    first = _service_pid  # the first relay starts the service; the others find it
    await asyncio.gather(*(one(i) for i in range(agents)))
    assert killed.is_set()
    assert first(mcp_env) > 0  # a replacement runs (started by the relays, with the recorded options)
    rows = _stored(mcp_env)
    assert sorted(r["memory"] for r in rows) == sorted(
        f"user {i} remembers item {j}" for i in range(agents) for j in range(adds)
    )


@pytest.mark.slow
async def test_an_agent_killed_mid_call_leaves_the_store_and_others_sound(
    mcp_env: dict[str, str],
) -> None:
    async with agent(mcp_env, "--user-id", "steady") as steady:
        await ok(steady, "add_memories", {"text": "steady is here"})
        service = _service_pid(mcp_env)
        relay = subprocess.Popen(
            [sys.executable, "-m", "hivemem.mcp", "--user-id", "doomed"],
            env=mcp_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert relay.stdin is not None and relay.stdout is not None
        init = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        }
        lines = [{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}]
        lines.append({"jsonrpc": "2.0", "method": "notifications/initialized"})
        texts = [f"doomed fact {k}" for k in range(20)]
        for k, text in enumerate(texts, 1):
            params = {"name": "add_memories", "arguments": {"text": text}}
            lines.append({"jsonrpc": "2.0", "id": k, "method": "tools/call", "params": params})
        relay.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
        relay.stdin.flush()
        assert json.loads(relay.stdout.readline())["id"] == 0
        relay.stdout.readline()  # the first add answered: the others are in flight
        relay.kill()
        relay.wait(30)
        await asyncio.sleep(1.0)
        await ok(steady, "add_memories", {"text": "steady carries on"})
        assert _service_pid(mcp_env) == service  # the service did not notice beyond a closed connection
        mine = await ok(steady, "list_memories")
        assert sorted(r["memory"] for r in mine["results"]) == ["steady carries on", "steady is here"]
    deadline = time.monotonic() + 30
    doomed = [r["memory"] for r in _stored(mcp_env) if r["user_id"] == "doomed"]
    while time.monotonic() < deadline and len(doomed) < 1:
        doomed = [r["memory"] for r in _stored(mcp_env) if r["user_id"] == "doomed"]
    assert doomed and set(doomed) <= set(texts)
    assert len(doomed) == len(set(doomed))  # whatever got in, got in once


def _meta() -> dict:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }


@pytest.mark.slow
def test_a_refused_initialize_is_not_replayed_after_a_restart(mcp_env: dict[str, str]) -> None:
    """The SDK client's auto mode: its server/discover probe waits while the relay starts the service,
    the client times out and falls back to initialize, the probe then sets the modern era and the
    initialize is refused. After a restart the relay must not replay that initialize (it would
    open the new connection in the handshake era and refuse every later request)."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "hivemem.mcp", "--user-id", "era"],
        env=mcp_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert relay.stdin is not None and relay.stdout is not None

    def ask(message: dict) -> dict:
        assert relay.stdin is not None and relay.stdout is not None
        relay.stdin.write((json.dumps(message) + "\n").encode())
        relay.stdin.flush()
        return json.loads(relay.stdout.readline())

    add = {"name": "add_memories", "arguments": {"text": "the era survives"}, "_meta": _meta()}
    try:
        assert "result" in ask(
            {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": _meta()}}
        )
        client = {"name": "t", "version": "0"}
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
        assert "error" in ask({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": init})
        os.kill(_service_pid(mcp_env), signal.SIGKILL)
        reply = ask({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": add})
        assert reply.get("result", {}).get("isError") is False, reply
    finally:
        relay.kill()
        relay.wait(30)
