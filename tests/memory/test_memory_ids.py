"""Caller-chosen ids (``add_batch`` items' ``"id"``): kept, validated, and never silently replaced.
Storage logic only, so the hash embedder stands in for the model (see conftest); on both backends."""

from __future__ import annotations

import pytest

from hivemem import Memory

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


@pytest.fixture
def hmem(location: str, hash_embedder) -> Memory:
    m = Memory(location, embedder=hash_embedder)
    yield m
    m.close()


def test_given_ids_are_kept_and_generated_ones_are_uuids(hmem: Memory) -> None:
    out = hmem.add_batch(
        [
            {"messages": "likes tea", "user_id": "al", "id": "doc-1"},
            {"messages": "likes jazz", "user_id": "al"},
        ]
    )["results"]
    assert out[0]["id"] == "doc-1" and len(out[1]["id"]) == 36
    assert hmem.get("doc-1")["memory"] == "likes tea"
    again = hmem.add_batch([{"messages": "likes tea", "user_id": "al", "id": "doc-1"}])["results"]
    assert again == [{**out[0], "event": "NONE"}]


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"id": 5}, "items\\[1\\]: id must be a string"),
        ({"id": ""}, "1 to 256 characters, got 0"),
        ({"id": "x" * 257}, "1 to 256 characters, got 257"),
        ({"id": "a\nb"}, "control characters"),
        (
            {"id": "a", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "2 non",
        ),
    ],
)
def test_bad_ids_fail_before_anything_is_written(hmem: Memory, item: dict, error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        hmem.add_batch([{"messages": "ok", "user_id": "al"}, {"messages": "fine", "user_id": "al", **item}])
    assert hmem.count() == 0


def test_a_given_id_never_becomes_another_memory(hmem: Memory) -> None:
    hmem.add_batch([{"messages": "likes tea", "user_id": "al", "id": "a"}])
    with pytest.raises(ValueError, match="already stored in this scope as memory 'a'"):
        hmem.add_batch(
            [{"messages": "new", "user_id": "al"}, {"messages": "likes tea", "user_id": "al", "id": "b"}]
        )
    with pytest.raises(ValueError, match="already stored in this scope as memory 'c'"):
        hmem.add_batch(
            [
                {"messages": "same", "user_id": "al", "id": "c"},
                {"messages": "same", "user_id": "al", "id": "d"},
            ]
        )
    with pytest.raises(ValueError, match="'a' is already taken"):  # the id names a memory of another scope
        hmem.add_batch(
            [{"messages": "new", "user_id": "bo"}, {"messages": "other", "user_id": "bo", "id": "a"}]
        )
    assert hmem.count() == 1
    # the same text under the same id in another scope is fine: ids are global, texts per scope
    assert hmem.add_batch([{"messages": "likes tea", "user_id": "bo"}])["results"][0]["event"] == "ADD"
