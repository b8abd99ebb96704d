"""The service's event loop: uvloop where it is installed, asyncio's own otherwise.

Everything the service does between the model runs happens on one loop: the socket's frames and,
with ``hivemem serve --http``, uvicorn's HTTP and every route's request and response. uvloop
(libuv under asyncio's API) does the loop's own share of that work — polling, socket reads and
writes, callbacks, timers — in C (figures: docs/http.md, "CPU per request, round 2", and
docs/service.md, "Round 4"). ``HIVEMEM_EVENT_LOOP`` chooses: ``auto`` (the default: uvloop if it
imports), ``uvloop`` (an error where it is missing) or ``asyncio`` (the standard library's loop,
e.g. to rule uvloop out when chasing a bug).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hivemem.errors import ServiceError
from hivemem.infra.settings import Settings

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def choose(setting: str | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop ``run`` uses for ``setting`` (default: the
    ``HIVEMEM_EVENT_LOOP`` environment variable, else ``auto``). ServiceError for a value not in
    ``CHOICES``, or for ``uvloop`` where it cannot be imported."""
    value = (setting if setting is not None else Settings.from_env().event_loop or "auto").strip().lower()
    if value not in CHOICES:
        raise ServiceError(f"HIVEMEM_EVENT_LOOP must be one of {', '.join(CHOICES)}, got {value!r}")
    if value == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        if value == "uvloop":
            raise ServiceError(
                f"HIVEMEM_EVENT_LOOP=uvloop, but uvloop cannot be imported ({exc}): "
                "pip install uvloop, or set HIVEMEM_EVENT_LOOP=auto"
            ) from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """``asyncio.run(main)`` on a new loop of the kind ``choose`` named."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running() -> str:
    """The kind of the loop running in this thread (for the service's status)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
