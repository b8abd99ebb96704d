"""The official MCP SDK client against real ``hivemem mcp`` relay processes (tests and benchmark)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters


def relay_params(env: dict[str, str], *args: str) -> StdioServerParameters:
    """``python -m hivemem.mcp ARGS`` (the same relay as ``hivemem mcp``)."""
    return StdioServerParameters(command=sys.executable, args=["-m", "hivemem.mcp", *args], env=env)


@asynccontextmanager
async def agent(env: dict[str, str], *args: str) -> AsyncIterator[Client]:
    async with Client(relay_params(env, *args), read_timeout_seconds=120) as client:
        yield client


async def ok(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """A tool call that must succeed: its structured result (checked equal to its text)."""
    result = await client.call_tool(tool, arguments or {})
    assert not result.is_error, result.content[0].text
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


async def refused(client: Client, tool: str, arguments: Any) -> str:
    """A tool call that must be a tool error (isError): its message."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text = result.content[0].text
    assert "Traceback" not in text
    return text
