"""``"infer": true`` over the service's memory REST API, with the service's LLM set by
HIVEMEM_LLM_URL to a scripted OpenAI-compatible server on loopback (see tests/memory/scripted_llm.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from http_helpers import ALICE, http_service

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "memory"))
from scripted_llm import scripted_llm


def test_scripted_llm_infer_over_http_and_502_when_it_fails(
    model_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with scripted_llm() as llm:
        monkeypatch.setenv("HIVEMEM_LLM_URL", llm.url)
        monkeypatch.setenv("HIVEMEM_LLM_MODEL", "scripted")
        with http_service(model_home) as svc, httpx.Client(base_url=svc["url"], timeout=60) as c:
            chat = [{"role": "user", "content": "I keep bees"}, {"role": "assistant", "content": "Lovely!"}]
            r = c.post("/v1/memories", json={"messages": chat, "infer": True}, headers=ALICE)
            assert r.status_code == 200, r.text
            assert [(x["memory"], x["event"]) for x in r.json()["results"]] == [
                ("User said: I keep bees", "ADD")
            ]
            assert llm.requests[0]["model"] == "scripted"
            llm.reply = lambda body: (200, "no JSON here")
            r = c.post("/v1/memories", json={"messages": "I keep wasps", "infer": True}, headers=ALICE)
            assert r.status_code == 502 and "failed twice" in r.json()["error"]["message"]
            listed = c.get("/v1/memories", headers=ALICE).json()["results"]
            assert [m["memory"] for m in listed] == ["User said: I keep bees"]  # nothing of the failure
