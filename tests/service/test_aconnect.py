"""``aconnect`` has the options and the state of ``connect``: ``url=``, ``fallback="local"``, a closed
state, ``astats()``/``ashutdown()`` — on a real service process, its real HTTP front door and the
real model (issue 22)."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import numpy as np
import pytest
from service_helpers import start_service

import hivemem
from hivemem.embed.corpus import sentences
from hivemem.embed.model import MIN_BATCH_INVARIANCE as SAME
from hivemem.errors import ServiceError, ServiceUnavailable
from hivemem.service import client as client_module
from hivemem.service.aclient import AsyncEmbedder, AsyncOverThreads, AsyncServiceClient
from hivemem.service.client import connect

TEXTS = sentences(12, seed=22)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_aconnect_stats_and_closed_state_match_connect(shared_service, local_embedder) -> None:
    async def main() -> tuple[AsyncServiceClient, np.ndarray, dict, dict]:
        client = await hivemem.aconnect(shared_service["socket"], autostart=False)
        assert isinstance(client, AsyncServiceClient) and isinstance(client, AsyncEmbedder)
        async with client:
            vectors = await client.aembed(TEXTS)
            stats = await client.astats()
            assert not client.closed
        with pytest.raises(ServiceError, match="closed"):
            await client.aembed(TEXTS[:1])
        with pytest.raises(ServiceError, match="closed"):
            await client.astats()
        await client.aclose()  # twice is fine
        threaded = connect(shared_service["socket"], autostart=False)
        threaded_stats = threaded.stats()  # type: ignore[attr-defined]
        threaded.close()  # type: ignore[attr-defined]
        assert threaded.closed  # type: ignore[attr-defined]
        with pytest.raises(ServiceError, match="closed"):
            threaded.embed(TEXTS[:1])
        return client, vectors, stats, threaded_stats

    client, vectors, stats, threaded_stats = asyncio.run(main())
    assert client.closed
    assert stats["pid"] == threaded_stats["pid"] == client.service_pid == shared_service["proc"].pid
    assert stats["model_id"] == client.model_id == local_embedder.model_id
    assert set(stats) == set(threaded_stats)
    assert cosines(vectors, local_embedder.embed(TEXTS)).min() >= SAME


def test_aconnect_url_embeds_over_http_like_connect_url(shared_service, local_embedder, monkeypatch) -> None:
    async def main(**options: object) -> tuple[AsyncOverThreads, np.ndarray, dict]:
        client = await hivemem.aconnect(**options)  # type: ignore[arg-type]
        assert isinstance(client, AsyncOverThreads) and isinstance(client, AsyncEmbedder)
        vectors = np.stack([await client.aembed_one(t) for t in TEXTS[:3]])
        stats = await client.astats()
        await client.aclose()
        with pytest.raises(ServiceError, match="closed"):
            await client.aembed(TEXTS[:1])
        return client, vectors, stats

    client, vectors, stats = asyncio.run(main(url=shared_service["url"], timeout=30))
    assert client.closed and client.model_id == local_embedder.model_id and client.dim == 384
    assert [h["url"] for h in stats["hosts"]] == [shared_service["url"]]
    assert stats["hosts"][0]["requests"] >= 1
    assert cosines(vectors, local_embedder.embed(TEXTS[:3])).min() >= SAME
    # no socket path given: $HIVEMEM_EMBEDDER_URL names the hosts, as for connect()
    monkeypatch.setenv("HIVEMEM_EMBEDDER_URL", shared_service["url"])
    _, from_env, stats = asyncio.run(main())
    assert [h["url"] for h in stats["hosts"]] == [shared_service["url"]]
    assert cosines(from_env, vectors).min() >= SAME


def test_aconnect_fallback_local_when_no_service(short_dir: Path, local_embedder, monkeypatch) -> None:
    monkeypatch.setattr(client_module, "_warned_fallback", False)
    missing = short_dir / "none.sock"

    async def fallback() -> tuple[AsyncOverThreads, np.ndarray]:
        client = await hivemem.aconnect(missing, autostart=False, fallback="local", timeout=5)
        assert isinstance(client, AsyncOverThreads)
        async with client:
            vectors = await client.aembed(TEXTS[:4])
            assert "model_id" in await client.astats()
        return client, vectors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client, vectors = asyncio.run(fallback())
    assert next(str(w.message) for w in caught if w.category is RuntimeWarning).startswith(
        "hivemem: no embedding service"
    )
    assert client.closed and client.model_id == local_embedder.model_id
    assert cosines(vectors, local_embedder.embed(TEXTS[:4])).min() >= SAME
    with pytest.raises(ServiceUnavailable):
        asyncio.run(hivemem.aconnect(missing, autostart=False, timeout=5))
    with pytest.raises(ValueError, match="fallback must be None or 'local'"):
        asyncio.run(hivemem.aconnect(missing, fallback="remote"))


def test_ashutdown_stops_the_service(service_env) -> None:
    proc = start_service(service_env)

    async def main() -> None:
        client = await hivemem.aconnect(autostart=False)
        assert isinstance(client, AsyncServiceClient)
        assert client.service_pid == proc.pid and client.restarts == 0
        await client.ashutdown()
        await client.aclose()

    asyncio.run(main())
    assert proc.wait(30) == 0
    assert not Path(service_env["HIVEMEM_SOCKET"]).exists()
