"""The HTTP app's rules, in-process (no public address is ever bound)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from hivemem.http.app import check_binding, create_app
from hivemem.http.companion import parse_bind


def test_api_key_required_off_loopback(local_embedder) -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_binding(host, None)
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        with pytest.raises(ValueError, match="requires an API key"):
            check_binding(host, None)
        check_binding(host, "secret")
    with pytest.raises(ValueError, match="requires an API key"):
        create_app(local_embedder, host="0.0.0.0")


def test_parse_bind() -> None:
    assert parse_bind("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_bind("[::1]:9000") == ("::1", 9000)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_bind(bad)


def test_api_key_enforced(local_embedder) -> None:
    app = create_app(local_embedder, api_key="s3cret", host="0.0.0.0")

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            body = {"input": "hello", "model": "all-MiniLM-L6-v2"}
            codes = [
                (await c.post("/v1/embeddings", json=body)).status_code,
                (
                    await c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer nope"})
                ).status_code,
                (
                    await c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer s3cret"})
                ).status_code,
                (await c.get("/metrics")).status_code,
                (await c.get("/health")).status_code,
            ]
        return codes

    assert asyncio.run(main()) == [401, 401, 200, 401, 200]


def test_full_queue_answers_429(model_home, monkeypatch) -> None:
    monkeypatch.setenv("HIVEMEM_HOME", str(model_home))
    from hivemem.embed.corpus import sentences
    from hivemem.embed.engine import Embedder

    busy = Embedder(cache=False, max_pending=1)
    app = create_app(busy, busy_timeout=0.0)
    texts = sentences(64, seed=11)

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            replies = await asyncio.gather(
                *(c.post("/v1/embeddings", json={"input": texts[i : i + 8]}) for i in range(0, 64, 8))
            )
        for r in replies:
            if r.status_code == 429:
                assert "full" in r.json()["error"]["message"]
        return [r.status_code for r in replies]

    try:
        codes = asyncio.run(main())
    finally:
        busy.close()
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
