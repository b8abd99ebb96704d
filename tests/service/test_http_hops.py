"""What an HTTP request costs the service's event loop in thread hops: checking an API key takes
no worker thread (a sync FastAPI dependency would run in one, a hop per request)."""

from __future__ import annotations

import asyncio
import threading

import anyio.to_thread
import httpx

from hivemem.http.app import create_app


async def test_authorisation_takes_no_worker_thread(local_embedder) -> None:
    app = create_app(local_embedder, api_key="k", ui=False)
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 1
    release = threading.Event()
    # the loop's only worker thread is busy: a request that needs one waits until it is free
    blocker = asyncio.ensure_future(anyio.to_thread.run_sync(release.wait))
    try:
        await asyncio.sleep(0.05)
        assert limiter.borrowed_tokens == 1
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hivemem") as client:
            ok = await asyncio.wait_for(client.get("/metrics", headers={"Authorization": "Bearer k"}), 30)
            refused = await asyncio.wait_for(client.get("/metrics"), 30)
        assert ok.status_code == 200 and "hivemem_queue_depth" in ok.text
        assert refused.status_code == 401
    finally:
        release.set()
        await blocker
