"""Module-level factories and item functions that the cluster tests send to real Dask workers
(workers import this module: the test cluster's PYTHONPATH includes this directory)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class Agent:
    def __init__(self, marker_dir: str | None, delay: float) -> None:
        time.sleep(delay)  # a slow start, like loading a model
        self.pid = os.getpid()
        self.calls = 0
        if marker_dir is not None:  # one file per factory run, so tests can count them
            Path(marker_dir, f"{self.pid}-{time.monotonic_ns()}").touch()


def make_agent(marker_dir: str | None = None, delay: float = 0.0) -> Agent:
    return Agent(marker_dir, delay)


def make_agent_from_env() -> Agent:
    """For ``hivemem run --factory``: the marker directory comes from the environment."""
    return Agent(os.environ.get("HM_TEST_MARKERS"), 0.2)


def work(agent: Agent, item: dict[str, Any]) -> dict[str, Any]:
    """Log the start (key, pid) to ``item['log']``, then behave as the item says."""
    agent.calls += 1
    if item.get("log"):
        with open(item["log"], "a") as f:
            f.write(json.dumps({"key": item["id"], "pid": os.getpid()}) + "\n")
    time.sleep(item.get("sleep", 0))
    if item.get("fail"):
        raise KeyError(f"item {item['id']} is marked to fail")
    if item.get("exit"):
        sys.exit(3)
    return {"pid": agent.pid, "square": item["x"] ** 2, "calls": agent.calls}


def make_remote_embedder(url: str, api_key: str | None = None) -> Any:
    import hivemem

    return hivemem.connect(url=url, api_key=api_key, timeout=60)


def embed_text(embedder: Any, item: dict[str, Any]) -> dict[str, Any]:
    vec = embedder.embed_one(item["text"])
    return {"vector": [round(float(v), 6) for v in vec], "model_id": embedder.model_id}


def square(item: dict[str, Any]) -> dict[str, Any]:
    """No factory: fn(item)."""
    if item.get("exit"):
        sys.exit(3)
    return {"square": item["x"] ** 2}
