"""Every ``docs/PAGE.md#section`` a docstring or comment points to, and every ``PAGE.md#section`` or
``#section`` link between the docs, names a section that exists (issue 22).

Figures live in docs/ and the code points to the section that holds them; a renamed heading would
otherwise leave the pointer dangling without anyone noticing. Anchors are GitHub's: the heading
lower-cased, punctuation but ``-`` and ``_`` dropped, spaces turned into ``-``, ``-1``, ``-2`` … for
repeats. Headings inside fenced code blocks are not headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6} +(.+?) *#* *$", re.MULTILINE)
_TO_PAGE = re.compile(r"(?<![\w/])(?:docs/)?([\w-]+\.md)#([\w-]+)")
_IN_PAGE = re.compile(r"\]\(#([\w-]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before de-duplication)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", markdown)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _sources() -> list[Path]:
    return [*sorted((ROOT / "hivemem").rglob("*.py")), *sorted(DOCS.glob("*.md")), *sorted(ROOT.glob("*.md"))]


def dangling(sources: list[Path]) -> list[str]:
    pages = {p.name: anchors(p.read_text(encoding="utf-8")) for p in DOCS.glob("*.md")}
    bad = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        for page, anchor in _TO_PAGE.findall(text):
            if page in pages and anchor not in pages[page]:
                bad.append(f"{where}: {page}#{anchor}")
        if path.suffix == ".md":
            own = anchors(text)
            bad += [f"{where}: #{a}" for a in _IN_PAGE.findall(text) if a not in own]
    return bad


def test_every_section_pointer_resolves() -> None:
    assert dangling(_sources()) == []


def test_slugs_follow_github() -> None:
    assert slug("Cluster runs (`hivemem.pool.cluster`)") == "cluster-runs-hivemempoolcluster"
    assert slug("Why `MatMulNBits` stopped being the default") == "why-matmulnbits-stopped-being-the-default"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_a_dangling_pointer_is_found(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text('"""See docs/embed.md#no-such-section and docs/embed.md#data-path."""\n')
    doc = tmp_path / "page.md"
    doc.write_text("# Top\n\n[up](#top), [gone](#gone), [other](embed.md#benchmark)\n")
    assert dangling([src, doc]) == ["x.py: embed.md#no-such-section", "page.md: #gone"]
