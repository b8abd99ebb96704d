"""``python -m hivemem.service …``: the bare embedding service — the socket, the model, the queue
and the cache, with none of the companions ``hivemem serve`` composes (HTTP, MCP). What
``hivemem.connect()`` auto-starts is ``hivemem serve`` (``python -m hivemem serve``); this entry
belongs to the service part and imports nothing above it."""

import argparse
import sys
from pathlib import Path

from hivemem.errors import AlreadyRunning, ServiceError
from hivemem.service import paths
from hivemem.service.server import ServiceConfig, serve
from hivemem.service.spawn import EXIT_ALREADY_RUNNING


def main(argv: list[str]) -> int:
    defaults = ServiceConfig(socket=Path())
    parser = argparse.ArgumentParser(prog="python -m hivemem.service", description=__doc__)
    parser.add_argument(
        "--socket", type=Path, help="Unix socket (default: $HIVEMEM_SOCKET or the runtime dir)"
    )
    parser.add_argument("--replicas", type=int, default=defaults.replicas)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--variant", default=defaults.variant)
    parser.add_argument("--max-pending", type=int, default=defaults.max_pending)
    parser.add_argument("--busy-timeout", type=float, default=defaults.busy_timeout)
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout)
    args = parser.parse_args(argv)
    config = ServiceConfig(
        socket=paths.socket_path(args.socket),
        replicas=args.replicas,
        threads=args.threads,
        variant=args.variant,
        max_pending=args.max_pending,
        busy_timeout=args.busy_timeout,
        idle_timeout=args.idle_timeout,
    )
    try:
        serve(config)
    except AlreadyRunning as exc:
        print(f"hivemem service: {exc}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    except (ServiceError, ValueError) as exc:
        print(f"hivemem service: {exc}", file=sys.stderr)
        return 1
    return 0


sys.exit(main(sys.argv[1:]))
