"""The ``>>>`` examples in hivemem's docstrings run, with the real model, and give what they show.

An example that cannot run here (it needs other hosts or a PostgreSQL server) is written as a plain
code block instead: no ``>>>`` example may be skipped, and every module that has one is listed in
``RUN``, so a new example is either run here or fails this test. About 3 s on the real model.
"""

from __future__ import annotations

import doctest
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

PACKAGE = Path(__file__).resolve().parents[1] / "hivemem"
RUN = [
    "hivemem.embed.engine",
    "hivemem.memory.store",
    "hivemem.memory.rerank",
    "hivemem.memory.storage.fts",
    "hivemem.integrations.langchain",
    "hivemem.integrations.llamaindex",
]
NO_MODEL = {"hivemem.memory.rerank", "hivemem.memory.storage.fts"}  # the rest embed: marked ``model``
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_PROMPT = re.compile(r"^\s*>>> ", re.MULTILINE)


def _with_examples() -> dict[str, str]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if _PROMPT.search(text):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = text
    return out


def test_every_example_is_run_and_none_skipped() -> None:
    found = _with_examples()
    assert sorted(found) == sorted(RUN), "list the module in RUN, or write its example as a plain code block"
    skipped = [name for name, text in found.items() if "+SKIP" in text]
    assert not skipped, f"skipped examples in {skipped}: run them, or make them plain code blocks"


@pytest.fixture
def fresh_home(tmp_path: Path, hivemem_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home of its own (the examples write to the default store) and no service: in-process."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to((hivemem_home / "models").resolve(), target_is_directory=True)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("HIVEMEM_HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("HIVEMEM_SOCKET", raising=False)
    yield home


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in NO_MODEL else pytest.mark.model) for n in RUN]
)
def test_examples_run(name: str, fresh_home: Path) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    try:
        for test in tests:
            runner.run(test, out=report.append)
    finally:
        for test in tests:  # what the examples opened (Memory, Embedder, stores) is closed
            for value in test.globs.values():
                if isinstance(value, type):
                    continue
                close = getattr(value, "close", None)
                if callable(close) and getattr(value, "__module__", "").startswith("hivemem"):
                    close()
            test.globs.clear()
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"{name} has no examples"
    assert results.failed == 0, "".join(report)
