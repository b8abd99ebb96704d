"""The MCP protocol side of hivemem: one ``mcp`` SDK low-level ``Server`` serving the memory tools,
shared by both transports of the machine's service (the relays' Unix socket, ``host.McpHost``,
and Streamable HTTP at ``/mcp``, ``hivemem.http.mcp_route``).

A transport attaches a ``Target`` (which ``Memory``, which ``Caller``) to every message it hands
the SDK (as ``ServerMessageMetadata.request_context``; on HTTP inside the Starlette request's
scope), so one server serves every tenant and every store. A tool's refusal becomes a tool error
(``isError``) naming the argument and the limit; an unexpected failure is logged here and answered
as a tool error without a traceback; neither ends the session.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext

from hivemem import __version__
from hivemem.errors import HivememError
from hivemem.mcp import tools

log = logging.getLogger("hivemem.mcp")

# Tool calls run in worker threads, at most this many at once for the whole service: concurrent adds
# are grouped by ``Memory`` anyway (one embed call, one transaction), and each further thread of 25
# agents' calls cost the service its own stack and SQLite connection (~1 MB PSS each) for nothing.
TOOL_THREADS = 8

SCOPE_KEY = "hivemem.mcp.target"  # where an HTTP transport puts the Target in the ASGI scope

INSTRUCTIONS = (
    "Long-term memory shared across conversations. Call search_memory before answering anything "
    "that may depend on what you were told before; call add_memories when you learn a lasting fact, "
    "preference or decision. Every call acts only within your own scope."
)


@dataclass(frozen=True)
class Target:
    """What a message may act on: a ``hivemem.Memory``, its caller, and whether this transport offers
    the scope fields as tool arguments (HTTP keys) or fixes them (a stdio agent)."""

    memory: Any
    caller: tools.Caller
    entities: bool


def target_of(ctx: ServerRequestContext[Any, Any]) -> Target:
    request = ctx.request
    if isinstance(request, Target):
        return request
    found = getattr(request, "scope", {}).get(SCOPE_KEY)
    if isinstance(found, Target):
        return found
    raise RuntimeError("hivemem MCP: a message arrived without a target (a transport bug)")


def _text(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


async def _list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
    target = target_of(ctx)
    return types.ListToolsResult(
        tools=[
            types.Tool(
                name=s["name"],
                description=s["description"],
                input_schema=s["inputSchema"],
                annotations=types.ToolAnnotations.model_validate(s["annotations"]),
            )
            for s in tools.specs(target.entities)
        ]
    )


_limiter: anyio.CapacityLimiter | None = None


async def _call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(TOOL_THREADS)
    target = target_of(ctx)
    try:
        data = await anyio.to_thread.run_sync(
            tools.call,
            target.memory,
            target.caller,
            params.name,
            params.arguments,
            target.entities,
            limiter=_limiter,
        )
    except (HivememError, ValueError, TypeError, NotImplementedError) as exc:
        return error_result(f"{params.name}: {exc}")
    except Exception as exc:  # a bug or a broken store: logged here, never a traceback to the agent
        log.exception("hivemem MCP: %s failed", params.name)
        return error_result(f"{params.name}: internal error ({type(exc).__name__}); the service logged it")
    return types.CallToolResult(content=[types.TextContent(text=_text(data))], structured_content=data)


def build_server() -> Server[Any]:
    """The one MCP server of a service process (every tenant, every store, both transports)."""
    return Server(
        "hivemem",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=_list_tools,
        on_call_tool=_call_tool,
    )
