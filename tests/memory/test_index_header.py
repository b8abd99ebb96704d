"""The typed header of the SQLite store's int8 index: the same bytes as format 2 always wrote, and
a header whose check is right but whose fields are not (missing, of the wrong type) is rebuilt
like any other damage, never a KeyError. Vectors are random (storage logic only)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from hivemem.memory.records import prepare
from hivemem.memory.storage.indexheader import Header, parse
from hivemem.memory.storage.sqlite import SQLiteStorage

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

# header.json as the code before the typed header wrote it (a real file of a 3-row store)
FORMAT_2 = (
    b'{"check": 2944741334, "dead": 0, "dim": 8, "epoch": 0, "format": 2, "gen": 1796535198522925,'
    b' "last_id": "ab58e441-dc24-4293-8932-891be3f906b9", "last_rid": 3, "model": "test/rand", "n": 3,'
    b' "seq": 0, "store": "3842929e4104de82c4b62e08c386209b"}'
)
DIM = 16


def test_a_format_2_header_reads_and_writes_back_the_same_bytes() -> None:
    header = parse(FORMAT_2)
    assert header is not None
    assert (header.n, header.gen, header.last_rid, header.model) == (3, 1796535198522925, 3, "test/rand")
    assert header["n"] == 3 and {**header}["store"] == "3842929e4104de82c4b62e08c386209b"
    assert header.to_json().encode() == FORMAT_2
    assert parse(FORMAT_2.replace(b'"n": 3', b'"n": 4')) is None  # the check covers every field


def test_the_same_bytes_are_decoded_once_and_other_bytes_again() -> None:
    """Every search reads header.json: unchanged bytes give the header already decoded (fails on
    the code that decoded them each time), and any change of the bytes is decoded afresh."""
    first = parse(FORMAT_2)
    assert first is not None and parse(bytes(FORMAT_2)) is first
    other = Header.from_mapping({**first, "n": 2, "last_rid": 2}).to_json().encode()
    second = parse(other)
    assert second is not None and second.n == 2 and parse(other) is second
    assert parse(other[:-5]) is None and parse(other[:-5]) is None  # torn: None, each time
    assert parse(FORMAT_2) == first


def _store(path: Path) -> tuple[SQLiteStorage, np.ndarray]:
    storage = SQLiteStorage(path)
    storage.bind_model("test/rand", DIM)
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((300, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    storage.insert([m for i in range(300) for m in prepare(f"memory {i}", user_id="u")], vecs)
    return storage, vecs


def _write_checked(path: Path, body: dict[str, object]) -> None:
    """A header file with a correct format-2 check over ``body`` (whatever its fields)."""
    check = zlib.crc32(json.dumps(body, sort_keys=True).encode())
    path.write_text(json.dumps({**body, "check": check}, sort_keys=True))


@pytest.mark.parametrize("damage", ["missing_dead", "missing_last_id", "n_not_a_number", "not_an_object"])
def test_a_well_checked_header_with_bad_fields_is_rebuilt(tmp_path: Path, damage: str) -> None:
    storage, vecs = _store(tmp_path / "h.sqlite")
    want = [h["id"] for h in storage.search(vecs[7], None, 5, None)]  # builds the index
    header = storage.index.read_header()
    assert header is not None and header["n"] == 300
    storage.close()
    body = {**header}
    body.pop("check", None)  # (the code before the typed header gave the check with the fields)
    if damage == "missing_dead":
        del body["dead"]
    elif damage == "missing_last_id":
        del body["last_id"]
    elif damage == "n_not_a_number":
        body["n"] = "300"
    header_path = storage.index.dir / "header.json"
    if damage == "not_an_object":
        header_path.write_text("[1, 2]")
    else:
        _write_checked(header_path, body)
    fresh = SQLiteStorage(tmp_path / "h.sqlite")
    fresh.bind_model("test/rand", DIM)
    assert [h["id"] for h in fresh.search(vecs[7], None, 5, None)] == want
    assert fresh.index.rebuilds == 1  # unreadable, as a torn file is: rebuilt, never used
    rebuilt = fresh.index.read_header()
    assert rebuilt is not None and rebuilt["n"] == 300 and rebuilt["gen"] > header["gen"]
    fresh.close()


def test_publishing_a_mapping_checks_its_fields(tmp_path: Path) -> None:
    storage, vecs = _store(tmp_path / "p.sqlite")
    storage.search(vecs[0], None, 5, None)
    header = storage.index.read_header()
    assert header is not None
    storage.index._publish({**header, "n": header.n})  # a mapping of the right fields: published
    assert storage.index.read_header() == header
    with pytest.raises(ValueError, match="'dead' missing"):
        storage.index._publish({k: v for k, v in {**header}.items() if k != "dead"})
    assert isinstance(storage.index.read_header(), Header)
    storage.close()
