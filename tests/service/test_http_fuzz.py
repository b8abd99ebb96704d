"""Schemathesis against the committed ``docs/openapi.json``, sent to a real service: no 5xx, ever.

Bounded: a few examples per operation (valid and invalid bodies, parameters and keys), no
per-example deadline (the machine is shared), all under the suite's time budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from http_helpers import ADMIN, ALICE, http_service
from hypothesis import HealthCheck, settings
from service_helpers import ROOT

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_url(model_home: Path) -> Iterator[str]:
    options = ["--agent", "demo", "--agent-kind", "thread", "--agent-workers", "1", "--max-body", "200000"]
    with http_service(model_home, *options) as svc:
        yield svc["url"]


schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")


def _call(case, url: str, headers: dict[str, str]) -> None:
    if case.path == "/v1/agent/stream" and isinstance(case.body, dict):
        case.body = {"input": str(case.body.get("input", ""))[:20]}  # keep the echo short
    case.call_and_validate(base_url=url, headers=headers, checks=[not_a_server_error], timeout=60)


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_as_admin(case, fuzz_url: str) -> None:
    _call(case, fuzz_url, ADMIN)


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_as_scoped_user(case, fuzz_url: str) -> None:
    _call(case, fuzz_url, ALICE)
