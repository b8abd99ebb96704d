"""The usual design, for ``benchmarks/mcp_fleet.py``: each agent starts its own stdio MCP server (the SDK's
``MCPServer``) holding its own in-process engine and store handle — what a memory MCP server that
loads its own model costs per agent.

    python benchmarks/mcp_usual_server.py STORE USER_ID
"""

from __future__ import annotations

import sys
from typing import Any

from mcp.server import MCPServer

from hivemem import Embedder, Memory

store, user = sys.argv[1], sys.argv[2]
memory = Memory(store, embedder=Embedder())
server = MCPServer("usual-memory")


@server.tool()
def add_memories(text: str) -> dict[str, Any]:
    """Store a memory."""
    return memory.add(text, user_id=user)


@server.tool()
def search_memory(query: str, top_k: int = 10) -> dict[str, Any]:
    """Search memories."""
    return memory.search(query, user_id=user, top_k=top_k)


if __name__ == "__main__":
    server.run()
