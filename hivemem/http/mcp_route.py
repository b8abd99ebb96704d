"""Streamable HTTP MCP at ``/mcp``: the memory tools (``hivemem.mcp``) for agents that reach the
service over the network, with the same Bearer keys as the REST API.

A user key's calls act only in that user's scope whatever the arguments say (naming another
``user_id`` is a tool error); it may narrow to an ``agent_id``/``run_id``. An admin key (or no key
configured, loopback only) may name all three. No key, or a wrong one: 401 before the MCP layer.
Stateless JSON responses (every POST stands alone: nothing to lose when the service restarts);
bodies are bounded by the app's ``--max-body``, and on loopback the Host/Origin headers are checked
(DNS rebinding).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Receive, Scope, Send

from hivemem.http.auth import UNAUTHORIZED, KeyRing
from hivemem.mcp.tools import Caller
from hivemem.mcp.toolserver import SCOPE_KEY, Target, build_server
from hivemem.memory.records import ENTITIES


class McpRoute:
    """The ASGI endpoint of ``/mcp`` (``manager.run()`` must be entered while it serves)."""

    def __init__(self, memory: Any, keyring: KeyRing, *, loopback: bool, max_body: int) -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        security = None
        if loopback:
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        self.memory = memory
        self.keyring = keyring
        self.manager = StreamableHTTPSessionManager(
            app=build_server(),
            json_response=True,
            stateless=True,
            security_settings=security,
            max_request_body_size=max_body,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"authorization")
        key = self.keyring.from_header(raw.decode("latin-1") if raw is not None else None)
        if key is None:
            body = json.dumps({"error": {"message": UNAUTHORIZED, "type": "authentication_error"}}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if key.admin:
            caller = Caller(nameable=frozenset(ENTITIES))
        else:
            assert key.user_id is not None
            caller = Caller(fixed={"user_id": key.user_id}, nameable=frozenset({"agent_id", "run_id"}))
        target = Target(memory=self.memory, caller=caller, entities=True)
        await self.manager.handle_request({**scope, SCOPE_KEY: target}, receive, send)
