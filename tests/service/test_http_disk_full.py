"""The memory REST API when the store's disk fills up (a real tmpfs under a real ``hivemem serve
--http``): 507 with ``code: "disk_full"`` and a message naming the file, never a 500 traceback; the
service keeps serving and every memory committed before is intact (issue 26, defect 1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from http_helpers import ADMIN, http_service


def test_full_disk_is_507_disk_full(model_home: Path, small_tmpfs: Callable[..., Path]) -> None:
    disk = small_tmpfs(3 << 20)
    store = disk / "memory.sqlite"
    with (
        http_service(model_home, memory=str(store)) as svc,
        httpx.Client(base_url=svc["url"], timeout=120) as c,
    ):
        stored: list[str] = []
        for i in range(1000):
            text = "the quick brown fox " * 12
            items = [{"messages": f"note {i}.{j}: {text}", "user_id": "carol"} for j in range(40)]
            r = c.post("/v1/memories/batch", json={"items": items}, headers=ADMIN)
            if r.status_code != 200:
                break
            stored += [x["id"] for x in r.json()["results"]]
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert (
            error["code"] == "disk_full"
            and "disk full" in error["message"]
            and str(store) in error["message"]
        )
        assert stored, "the disk filled before the first batch: make the tmpfs larger"
        listed = c.post("/v1/memories/list", json={"user_id": "carol", "top_k": 10_000}, headers=ADMIN)
        assert listed.status_code == 200 and len(listed.json()["results"]) == len(stored)
        hits = c.post("/v1/memories/search", json={"query": "a fox", "user_id": "carol"}, headers=ADMIN)
        assert hits.status_code == 200 and hits.json()["results"]
