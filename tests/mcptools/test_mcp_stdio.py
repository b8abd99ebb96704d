"""``hivemem mcp`` over stdio with the official SDK client: real relay processes, a real service
(auto-started by the first relay, as ``connect()`` starts it), the real model and SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys

from mcp_helpers import agent, ok, refused

from hivemem.memory.filters import MAX_FILTER_DEPTH
from hivemem.memory.records import (
    MAX_DATE_CHARS,
    MAX_ID_CHARS,
    MAX_METADATA_DEPTH,
    REMOTE_MAX_BATCH,
    REMOTE_MAX_SEARCH,
)
from hivemem.memory.store import Memory

EXPECTED = [
    "add_memories",
    "search_memory",
    "list_memories",
    "get_memory",
    "update_memory",
    "delete_memories",
    "delete_all_memories",
    "memory_history",
]


async def test_the_eight_tools_end_to_end(mcp_env: dict[str, str]) -> None:
    async with agent(mcp_env, "--user-id", "alice", "--agent-id", "coder") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert list(tools) == EXPECTED
        search = tools["search_memory"].input_schema
        assert search["properties"]["top_k"]["maximum"] == REMOTE_MAX_SEARCH
        assert "user_id" not in search["properties"]  # a stdio agent's scope is fixed by its command line
        assert (
            tools["delete_memories"].input_schema["properties"]["memory_ids"]["maxItems"] == REMOTE_MAX_BATCH
        )
        assert all(t.description and len(t.description) > 40 for t in tools.values())

        added = await ok(
            client, "add_memories", {"text": "I like green tea", "metadata": {"topic": "drinks"}}
        )
        (first,) = added["results"]
        assert first["event"] == "ADD"
        again = await ok(client, "add_memories", {"text": "I like green tea"})
        assert again["results"][0] == {**first, "event": "NONE"}  # stored once
        await ok(client, "add_memories", {"text": "My cat is called Miso", "metadata": {"topic": "pets"}})

        hits = await ok(client, "search_memory", {"query": "what does alice drink?", "top_k": 1})
        assert [h["memory"] for h in hits["results"]] == ["I like green tea"]
        assert hits["results"][0]["user_id"] == "alice" and hits["results"][0]["agent_id"] == "coder"
        assert (
            "score_details" not in hits["results"][0] and search["properties"]["explain"]["type"] == "boolean"
        )
        why = await ok(
            client, "search_memory", {"query": "what does alice drink?", "top_k": 1, "explain": True}
        )
        assert why["results"][0]["score_details"]["fused"] == why["results"][0]["score"]
        filtered = await ok(client, "search_memory", {"query": "anything", "filters": {"topic": "pets"}})
        assert [h["memory"] for h in filtered["results"]] == ["My cat is called Miso"]
        listed = await ok(client, "list_memories", {"top_k": 10})
        assert len(listed["results"]) == 2

        record = await ok(client, "get_memory", {"memory_id": first["id"]})
        assert record["memory"] == "I like green tea" and record["metadata"] == {"topic": "drinks"}
        await ok(client, "update_memory", {"memory_id": first["id"], "text": "I like oolong tea"})
        history = await ok(client, "memory_history", {"memory_id": first["id"]})
        assert [h["event"] for h in history["results"]] == ["ADD", "UPDATE"]
        gone = await ok(client, "delete_memories", {"memory_ids": [first["id"], "no-such-id"]})
        assert gone["deleted"] == [first["id"]] and gone["not_found"] == ["no-such-id"]
        kept = await ok(client, "memory_history", {"memory_id": first["id"]})  # Mem0 keeps it
        assert [h["event"] for h in kept["results"]] == ["ADD", "UPDATE", "DELETE"]
        await ok(client, "delete_all_memories")
        assert (await ok(client, "list_memories"))["results"] == []


async def test_expiration_through_the_tools(mcp_env: dict[str, str]) -> None:
    """``add_memories``/``update_memory`` take ``expiration_date`` (update: null clears it),
    ``search_memory``/``list_memories`` take ``show_expired``."""
    async with agent(mcp_env, "--user-id", "erin") as client:
        tools = {t.name: t.input_schema for t in (await client.list_tools()).tools}
        assert tools["add_memories"]["properties"]["expiration_date"]["maxLength"] == MAX_DATE_CHARS
        assert tools["list_memories"]["properties"]["show_expired"]["type"] == "boolean"
        old = await ok(
            client, "add_memories", {"text": "the gate code is 1234", "expiration_date": "2000-01-01"}
        )
        (gone,) = old["results"]
        await ok(client, "add_memories", {"text": "the gate code is 5678", "expiration_date": "2999-12-31"})

        def codes(found: dict) -> list[str]:
            return sorted(r["memory"] for r in found["results"])

        hits = await ok(client, "search_memory", {"query": "gate code"})
        assert codes(hits) == ["the gate code is 5678"]
        assert (
            hits["results"][0]["expiration_date"] == "3000-01-01T00:00:00.000000+00:00"
        )  # the end of that day
        both = await ok(client, "search_memory", {"query": "gate code", "show_expired": True})
        assert codes(both) == ["the gate code is 1234", "the gate code is 5678"]
        assert codes(await ok(client, "list_memories")) == ["the gate code is 5678"]
        assert len((await ok(client, "list_memories", {"show_expired": True}))["results"]) == 2
        await ok(client, "update_memory", {"memory_id": gone["id"], "expiration_date": None})  # never expires
        assert "expiration_date" not in await ok(client, "get_memory", {"memory_id": gone["id"]})
        assert len((await ok(client, "list_memories"))["results"]) == 2
        await ok(client, "update_memory", {"memory_id": gone["id"], "expiration_date": "2001-01-01"})
        assert codes(await ok(client, "list_memories")) == ["the gate code is 5678"]


async def test_timestamp_through_the_tool(mcp_env: dict[str, str]) -> None:
    """``add_memories`` takes Mem0's ``timestamp`` (Unix seconds, or an ISO date/datetime): it is
    the memory's created_at; a malformed one is a tool error naming it, and nothing is stored."""
    async with agent(mcp_env, "--user-id", "tess") as client:
        tools = {t.name: t.input_schema for t in (await client.list_tools()).tools}
        assert tools["add_memories"]["properties"]["timestamp"]["type"] == ["number", "string"]
        for stamp, created in (
            (1683554160, "2023-05-08T13:56:00.000000+00:00"),
            (1683554160.5, "2023-05-08T13:56:00.500000+00:00"),
            ("2023-05-08", "2023-05-08T00:00:00.000000+00:00"),
            ("2023-05-08T15:56:00+02:00", "2023-05-08T13:56:00.000000+00:00"),
        ):
            (got,) = (await ok(client, "add_memories", {"text": f"went out at {stamp}", "timestamp": stamp}))[
                "results"
            ]
            assert (await ok(client, "get_memory", {"memory_id": got["id"]}))["created_at"] == created
        for bad in ("last spring", True, "x" * (MAX_DATE_CHARS + 1), 1e300, [1]):
            assert "timestamp" in await refused(
                client, "add_memories", {"text": "never stored", "timestamp": bad}
            )
        assert len((await ok(client, "list_memories"))["results"]) == 4


async def test_hostile_arguments_are_tool_errors_and_the_session_goes_on(mcp_env: dict[str, str]) -> None:
    deep: dict = {}
    node = deep
    for _ in range(MAX_METADATA_DEPTH + 5):
        node["x"] = {}
        node = node["x"]
    nested: dict = {"topic": "a"}
    for _ in range(MAX_FILTER_DEPTH + 2):
        nested = {"NOT": [nested]}
    cases = [
        ("search_memory", {"query": "x", "top_k": REMOTE_MAX_SEARCH + 1}, ["top_k", str(REMOTE_MAX_SEARCH)]),
        ("search_memory", {"query": "x", "top_k": 0}, ["top_k"]),
        ("search_memory", {"query": "x", "top_k": "ten"}, ["top_k", "integer"]),
        ("search_memory", {"query": "x", "filters": nested}, ["MAX_FILTER_DEPTH"]),
        ("search_memory", {}, ["query", "required"]),
        ("search_memory", {"query": "x", "explain": "yes"}, ["explain", "boolean"]),
        ("search_memory", {"query": "x", "show_expired": 1}, ["show_expired", "boolean"]),
        ("list_memories", {"show_expired": "yes"}, ["show_expired", "boolean"]),
        ("add_memories", {"text": "x", "expiration_date": "soon"}, ["expiration_date"]),
        ("add_memories", {"text": "x", "expiration_date": 20300101}, ["expiration_date", "string"]),
        (
            "add_memories",
            {"text": "x", "expiration_date": "2" * (MAX_DATE_CHARS + 1)},
            ["expiration_date", "MAX_DATE_CHARS"],
        ),
        ("update_memory", {"memory_id": "abc", "expiration_date": "31/12/2030"}, ["expiration_date"]),
        ("add_memories", {"text": "x", "metadata": deep}, ["metadata", "MAX_METADATA_DEPTH"]),
        ("add_memories", {"text": "   "}, ["empty"]),
        ("add_memories", {"text": "x", "user_id": "bob"}, ["user_id"]),  # not an argument on stdio
        (
            "delete_memories",
            {"memory_ids": ["a"] * (REMOTE_MAX_BATCH + 1)},
            ["memory_ids", "REMOTE_MAX_BATCH"],
        ),
        ("delete_memories", {"memory_ids": "abc"}, ["memory_ids", "array"]),
        ("get_memory", {"memory_id": "i" * (MAX_ID_CHARS + 1)}, ["memory_id", "MAX_ID_CHARS"]),
        ("update_memory", {"memory_id": "abc"}, ["text", "metadata"]),
        ("no_such_tool", {}, ["unknown tool"]),
    ]
    async with agent(mcp_env, "--user-id", "mallory") as client:
        for tool, arguments, words in cases:
            message = await refused(client, tool, arguments)
            for word in words:
                assert word in message, (tool, arguments, message)
        # still usable, and nothing of the refused calls was stored
        await ok(client, "add_memories", {"text": "still here"})
        assert [r["memory"] for r in (await ok(client, "list_memories"))["results"]] == ["still here"]


async def test_scopes_are_isolated_and_filters_never_widen(mcp_env: dict[str, str]) -> None:
    async with (
        agent(mcp_env, "--user-id", "alice") as alice,
        agent(mcp_env, "--user-id", "bob") as bob,
    ):
        secret = (await ok(alice, "add_memories", {"text": "alice's secret is 42"}))["results"][0]["id"]
        await ok(bob, "add_memories", {"text": "bob likes chess"})
        for tool, arguments in [
            ("get_memory", {"memory_id": secret}),
            ("memory_history", {"memory_id": secret}),
            ("update_memory", {"memory_id": secret, "text": "overwritten"}),
        ]:
            assert "not found" in await refused(bob, tool, arguments)
        assert (await ok(bob, "delete_memories", {"memory_ids": [secret]}))["not_found"] == [secret]
        for filters in ({"user_id": "alice"}, {"OR": [{"user_id": "alice"}, {"user_id": "bob"}]}):
            found = await ok(bob, "search_memory", {"query": "secret", "filters": filters})
            assert all(r["user_id"] == "bob" for r in found["results"])
            assert "alice's secret is 42" not in json.dumps(found)
        await ok(bob, "delete_all_memories")
        assert (await ok(alice, "get_memory", {"memory_id": secret}))["memory"] == "alice's secret is 42"
        await ok(alice, "delete_memories", {"memory_ids": [secret]})  # deleted: its history stays alice's
        assert "not found" in await refused(bob, "memory_history", {"memory_id": secret})
        assert len((await ok(alice, "memory_history", {"memory_id": secret}))["results"]) == 2


def test_a_relay_refuses_a_bad_scope_with_a_clear_message(mcp_env: dict[str, str]) -> None:
    run = [sys.executable, "-m", "hivemem.mcp"]
    env = {k: v for k, v in mcp_env.items() if not k.startswith("HIVEMEM_") or k in ("HIVEMEM_HOME",)}
    env["HIVEMEM_SOCKET"] = mcp_env["HIVEMEM_SOCKET"]
    none = subprocess.run(run, env=env, capture_output=True, text=True, input="", timeout=60)
    assert none.returncode == 2 and "--user-id" in none.stderr
    star = subprocess.run([*run, "--user-id", "*"], env=mcp_env, capture_output=True, text=True, timeout=120)
    assert star.returncode == 1 and "'*' is not a valid id" in star.stderr
    assert "Traceback" not in star.stderr


def test_the_relay_process_imports_no_sdk_no_numpy_no_web_stack(mcp_env: dict[str, str]) -> None:
    """What each agent's `hivemem mcp` process loads: the console script's own path, served to the end.
    (Starting the service reads the model's manifest through ``hivemem.embed.model``: stdlib only.)"""
    code = (
        "import atexit, sys\n"
        "heavy = ('numpy', 'mcp', 'mcp_types', 'pydantic', 'anyio', 'typer', 'click', 'rich', 'httpx', "
        "'onnxruntime', 'tokenizers', 'sqlite3', 'hivemem.memory', 'hivemem.embed.engine', "
        "'hivemem.embed.onnx_backend', 'hivemem.embed.cache', 'hivemem.embed.queue')\n"
        "atexit.register(lambda: sys.stderr.write('LOADED %r\\n' % [m for m in heavy if m in sys.modules]))\n"
        "sys.argv = ['hivemem', 'mcp', '--user-id', 'light']\n"
        "from hivemem.app.cli import main\n"
        "main()\n"
    )
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25",
            "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "add_memories", "arguments": {"text": "light relay"}}},
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=mcp_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    for request in requests:
        proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    replies = [json.loads(proc.stdout.readline()) for _ in range(2)]
    _, err = proc.communicate(timeout=60)  # closes stdin: the agent is gone, the relay exits
    assert [r["id"] for r in replies] == [1, 2]
    assert replies[1]["result"]["structuredContent"]["results"][0]["event"] == "ADD"
    assert "LOADED []" in err, err
    with Memory(mcp_env["HIVEMEM_MEMORY_URL"]) as memory:
        assert [r["memory"] for r in memory.get_all(user_id="light")["results"]] == ["light relay"]


async def test_a_relay_on_a_postgresql_store(mcp_env: dict[str, str], pg_url) -> None:
    """``--store postgresql://…``: the service opens that store (once) for the relay's calls."""
    url = pg_url()
    async with agent(mcp_env, "--user-id", "pg", "--store", url) as client:
        await ok(client, "add_memories", {"text": "PostgreSQL keeps this one"})
        hits = await ok(client, "search_memory", {"query": "which database keeps it?"})
        assert [h["memory"] for h in hits["results"]] == ["PostgreSQL keeps this one"]
    with Memory(url) as memory:
        assert [r["memory"] for r in memory.get_all(user_id="pg")["results"]] == ["PostgreSQL keeps this one"]
    with Memory(mcp_env["HIVEMEM_MEMORY_URL"]) as memory:  # not the default store
        assert memory.get_all(user_id="pg")["results"] == []
