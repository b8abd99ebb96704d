"""The multi-host layout with traffic crossing real network interfaces: the embedding service in one
network namespace, Dask workers in another, the scheduler, Redis and the driver in this one.

Needs root and ``ip netns``; skipped, with the reason, where they are missing (the same parts run on
loopback in the other tests of this directory)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import cluster_agents
import numpy as np
import pytest
import redis
from cluster_helpers import (
    DaskCluster,
    Namespaces,
    kill_group,
    netns_unavailable,
    start_http_service,
    start_redis,
)

import hivemem
from hivemem.embed.cache import cache_key
from hivemem.embed.corpus import sentences
from hivemem.embed.shared_cache import PREFIX
from hivemem.pool.runner import run_parallel

pytestmark = pytest.mark.slow
KEY = "netns-test-key-1"  # off loopback the service requires one


@pytest.fixture(scope="module")
def namespaces() -> Iterator[Namespaces]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"separate network namespaces are not available here: {reason}")
    ns = Namespaces(["svc", "wrk"])
    try:
        yield ns
    finally:
        ns.close()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_workers_in_one_namespace_embed_through_a_service_in_another(namespaces: Namespaces) -> None:
    ns = namespaces
    svc_on_link, _ = ns.link("svc", "wrk")  # the service host and the worker host, directly
    procs = []
    cluster = None
    try:
        # Redis listens on this namespace's end of the link to the service's: not on loopback.
        rproc, redis_url = start_redis(host=ns.host_ip["svc"])
        procs.append(rproc)
        sproc, url, _ = start_http_service(
            host="0.0.0.0",
            netns=ns.name("svc"),
            cache_url=redis_url,
            reach=ns.ip["svc"],
            args=["--api-key", KEY],
        )
        procs.append(sproc)
        service_url = f"http://{svc_on_link}:{url.rsplit(':', 1)[1]}"  # as the worker host sees it
        cluster = DaskCluster(
            workers=1, host=ns.host_ip["wrk"], worker_netns=ns.name("wrk"), worker_host=ns.ip["wrk"]
        )
        texts = sentences(30, seed=501)
        items = [{"id": i, "text": t} for i, t in enumerate(texts)]
        summary = run_parallel(
            items,
            cluster_agents.embed_text,
            factory=functools.partial(cluster_agents.make_remote_embedder, service_url, KEY),
            cluster=cluster.address,
            progress=False,
        )
        assert summary.ok == 30, summary.records[:1]
        got = np.array([r["result"]["vector"] for r in sorted(summary.records, key=lambda r: r["key"])])
        with hivemem.Embedder(cache=False) as local:
            want = local.embed(texts)
            model_id = local.model_id
        assert _cos(got, want).min() > 0.999
        assert {r["result"]["model_id"] for r in summary.records} == {model_id}
        with redis.Redis.from_url(redis_url) as r:  # the service, in its namespace, filled Redis
            assert all(r.exists(PREFIX + cache_key(model_id, t)) for t in texts)
    finally:
        if cluster is not None:
            cluster.close()
        for p in procs:
            kill_group(p)
