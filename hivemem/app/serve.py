"""``hivemem serve``: run or stop the machine's embedding service — with ``--http``, the HTTP
application in the same process, and (unless ``--no-mcp``) the MCP host of ``hivemem mcp`` relays.

This is where they are composed, and the only place that knows them all: the service
(``hivemem.service``) gets its own options and a list of companions; the HTTP application
(``hivemem.http.companion.HttpServer``) gets the HTTP, memory and agent options; the MCP host
(``hivemem.mcp.host.McpHost``) gets the socket it listens beside. Auto-started services
run this too (``python -m hivemem serve``; ``python -m hivemem.service`` is the bare service alone).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import typer


def serve(
    ctx: typer.Context,
    socket: Path = typer.Option(None, help="Unix socket path (default: $HIVEMEM_SOCKET or the runtime dir)."),
    http: str = typer.Option(None, help="Also serve the OpenAI-compatible HTTP API on HOST:PORT."),
    api_key: str = typer.Option(
        None, envvar="HIVEMEM_API_KEY", help="Bearer key for HTTP (required off loopback)."
    ),
    replicas: int = typer.Option(1, min=1, help="Model instances fed from one queue (for many cores)."),
    threads: int = typer.Option(None, min=1, help="Intra-op threads per replica (default: one per core)."),
    variant: str = typer.Option("default", help="Model variant: default, fast, fp32, int8, w8a8, int8-fast."),
    max_pending: int = typer.Option(4096, min=1, help="Texts queued before callers wait (backpressure)."),
    busy_timeout: float = typer.Option(10.0, help="Seconds a caller waits on a full queue before 'busy'."),
    idle_timeout: float = typer.Option(
        0.0, help="Exit after this many seconds without clients (0: never; auto-started: 600)."
    ),
    stop: bool = typer.Option(False, "--stop", help="Stop the running service (drains its queue) and exit."),
    keys: Path = typer.Option(
        None, help='HTTP keys file: {"KEY": {"user_id": "alice"}, "ADMIN": {"admin": true}} (scoped access).'
    ),
    memory_path: str = typer.Option(
        None,
        "--memory-path",
        "--memory-url",
        help="HTTP memory API's store: a SQLite file or a postgresql:// URL (default: Memory's default).",
    ),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Serve the memory REST API over HTTP."),
    mcp: bool = typer.Option(
        True, "--mcp/--no-mcp", help="Serve the memory tools over MCP: to `hivemem mcp` relays, and at /mcp."
    ),
    agent: str = typer.Option(
        None, help="module:factory building the agent for POST /v1/agent/stream ('demo': the echo agent)."
    ),
    agent_fn: str = typer.Option(None, help="module:function(agent, input) yielding the streamed items."),
    agent_workers: int = typer.Option(2, min=1, help="Warm agent workers (WorkerPool size)."),
    agent_kind: str = typer.Option("process", help="Agent workers: process or thread."),
    max_body: int = typer.Option(16 * 1024 * 1024, min=1, help="Largest HTTP request body in bytes (413)."),
    http_read_timeout: float = typer.Option(
        30.0, min=0.001, help="Seconds to receive one whole HTTP request, headers and body (408 after)."
    ),
) -> None:
    """Run the embedding service in the foreground (one model, one queue, one cache per machine)."""
    from hivemem.errors import AlreadyRunning, ServiceError
    from hivemem.service import paths
    from hivemem.service.server import ServiceConfig
    from hivemem.service.server import serve as run
    from hivemem.service.spawn import EXIT_ALREADY_RUNNING

    sock = paths.socket_path(socket)
    if stop:
        raise typer.Exit(_stop(sock))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    factory, fn = _agent(agent, agent_fn)
    if agent_kind not in ("process", "thread"):
        raise typer.BadParameter(f"--agent-kind must be process or thread, got {agent_kind!r}")
    scoped: dict[str, Any] = {}
    if keys is not None:
        from hivemem.http.keys import load_keys

        try:
            scoped = load_keys(keys)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--keys") from None
    companions: list[Any] = []
    if http:
        from hivemem.http.companion import HttpConfig, HttpServer

        try:  # before the model loads: a bad address or a missing key fails at once
            companions.append(
                HttpServer(
                    HttpConfig(
                        bind=http,
                        api_key=api_key,
                        keys=scoped,
                        memory=memory,
                        mcp=mcp,
                        memory_path=memory_path,
                        agent_factory=factory,
                        agent_fn=fn,
                        agent_workers=agent_workers,
                        agent_kind="thread" if agent_kind == "thread" else "process",
                        max_body=max_body,
                        read_timeout=http_read_timeout,
                    )
                )
            )
        except ValueError as exc:
            typer.echo(f"hivemem serve: {exc}", err=True)
            raise typer.Exit(1) from None
    if mcp:  # cheap until a relay connects: the MCP SDK and the stores load then
        from hivemem.mcp.host import McpHost

        companions.append(McpHost(sock))
    config = ServiceConfig(
        socket=sock,
        replicas=replicas,
        threads=threads,
        variant=variant,
        max_pending=max_pending,
        busy_timeout=busy_timeout,
        idle_timeout=idle_timeout,
        replay=_replay(ctx),
    )
    try:
        run(config, companions)
    except AlreadyRunning as exc:
        typer.echo(f"hivemem serve: {exc}", err=True)
        raise typer.Exit(EXIT_ALREADY_RUNNING) from None
    except (ServiceError, ValueError) as exc:
        typer.echo(f"hivemem serve: {exc}", err=True)
        raise typer.Exit(1) from None


def _replay(ctx: typer.Context) -> dict[str, Any]:
    """How to start this service again as it is (``spawn.start_command``): the options given on the
    command line or through the environment; the API key travels in the environment, never argv."""
    import sys

    from hivemem.infra.settings import recorded
    from hivemem.service.spawn import RECORDED_ENV

    args: list[str] = []
    env = recorded(RECORDED_ENV)
    for param in ctx.command.params:
        name = param.name or ""
        source = ctx.get_parameter_source(name)
        given = getattr(source, "name", "") in ("COMMANDLINE", "ENVIRONMENT")
        if name in ("socket", "stop") or not given or not getattr(param, "opts", None):
            continue
        value = ctx.params[name]
        if name == "api_key":
            env["HIVEMEM_API_KEY"] = value
        elif getattr(param, "is_flag", False):  # a click.Option flag
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return {"args": args, "env": env, "cwd": os.getcwd(), "executable": sys.executable}


def _agent(agent: str | None, agent_fn: str | None) -> tuple[Any, Any]:
    """``(factory, fn)`` for the agent route from ``--agent``/``--agent-fn`` (``None``s: no route)."""
    if agent is None and agent_fn is None:
        return None, None
    if agent == "demo" and agent_fn is None:
        import functools

        from hivemem.pool._examples import echo_stream, make_echo_agent

        return functools.partial(make_echo_agent, 0.5), echo_stream
    if agent is None or agent_fn is None:
        raise typer.BadParameter("--agent module:factory and --agent-fn module:function go together")
    from hivemem.app.cli_run import _resolve

    return _resolve(agent, "--agent"), _resolve(agent_fn, "--agent-fn")


def _stop(sock: Path, wait: float = 60.0) -> int:
    from hivemem.errors import ServiceError
    from hivemem.service import paths
    from hivemem.service.client import ServiceClient

    try:
        client = ServiceClient(sock, autostart=False, timeout=wait)
    except ServiceError:
        typer.echo(f"no hivemem service running on {sock}")
        return 0
    pid = client.service_pid
    client.shutdown()
    client.close()
    if _wait_released(paths.pid_path(sock), wait):
        typer.echo(f"stopped hivemem service pid {pid}")
        return 0
    typer.echo(f"hivemem service pid {pid} did not exit within {wait:g} s", err=True)
    return 1


def _wait_released(pid_file: Path, wait: float) -> bool:
    """True once nobody holds the service's pid lock (it exited, whoever its parent is)."""
    from hivemem.infra.locks import locked

    with locked(pid_file, exclusive=False, timeout=wait) as released:
        return released
