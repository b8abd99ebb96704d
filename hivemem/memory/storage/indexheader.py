"""The header of the SQLite store's int8 index (``header.json``) as a typed record, and the store
state it is checked against.

The file is JSON with sorted keys and a ``check`` field: the CRC-32 of the JSON of every other
field (sorted keys, default separators), exactly as format 2 has always written it, so files
written before this module read the same. A header that is torn, garbage, not an object, of
another format's fields or with a wrong check reads as None (the index is then rebuilt).
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

FORMAT = 2  # 2: G.check, the check value of every row


class StaleIndex(Exception):
    """The files do not describe the store's current state (the message says why)."""


@dataclass(frozen=True)
class StoreState:
    """What the index is checked against, read in the snapshot of a search."""

    uid: str
    epoch: int
    model: str | None
    dim: int
    version: int  # meta 'version': bumped by every write
    seq: int  # last entry of the changes log
    pruned: int  # the changes log was trimmed up to here
    high: int  # highest row id ever given (AUTOINCREMENT's high-water mark)
    keywords: str = ""  # meta 'fts': the keyword index's layout mark (``fts.LAYOUT`` or ``LAYOUT_DATED``)
    top: int = 0  # highest row id present (``max(rid)``): the keyword side's N for the whole store (``fts``)


_STATE = (
    "SELECT " + ", ".join(f"(SELECT value FROM meta WHERE key = '{k}')"
                          for k in ("uid", "rewrites", "model_id", "dim", "version", "pruned", "fts"))
    + ", (SELECT coalesce(max(seq), 0) FROM changes), (SELECT coalesce(max(rid), 0) FROM memories)"
)  # fmt: skip
_HIGH = "(SELECT seq FROM sqlite_sequence WHERE name = 'memories')"


def read_state(db: sqlite3.Connection) -> StoreState:
    """The store's state in the snapshot ``db`` is in, in one statement (a result row is a step
    of ``sqlite3``, which lets other threads take the GIL: fewer is cheaper when many search)."""
    try:
        row = db.execute(f"{_STATE}, {_HIGH}").fetchone()
    except sqlite3.OperationalError:  # a store made before row ids were AUTOINCREMENT
        row = (*db.execute(_STATE).fetchone(), None)
    uid, epoch, model, dim, version, pruned, keywords, seq, top, high = row
    if high is None:
        high = top
    return StoreState(
        uid=str(uid if uid is not None else ""),
        epoch=int(epoch or 0),
        model=model,
        dim=int(dim or 0),
        version=int(version or 0),
        seq=int(seq),
        pruned=int(pruned or 0),
        high=int(high),
        keywords=str(keywords or ""),
        top=int(top),
    )


@dataclass(frozen=True)
class Header:
    """What the files of one generation cover (see ``vectorindex``). Reads like the mapping it is
    stored as (``header["n"]``, ``{**header}``), for callers that saw the JSON."""

    format: int
    store: str  # the store's uid
    epoch: int  # meta 'rewrites' when the files were made
    model: str | None
    dim: int
    gen: int
    n: int  # rows in the files
    last_rid: int  # the last row they hold
    last_id: str  # the memory id of that row
    seq: int  # the changes log applied up to here
    dead: int  # tombstones set

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Header:
        """A header from its fields (extra ones, such as ``check``, ignored); ValueError when one
        is missing or of the wrong type."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                raise ValueError(f"header field {f.name!r} missing")
            value = data[f.name]
            if f.name == "model":
                ok = value is None or isinstance(value, str)
            elif f.name in ("store", "last_id"):
                ok = isinstance(value, str)
            else:
                ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                raise ValueError(f"header field {f.name!r} is {value!r}")
            values[f.name] = value
        return cls(**values)

    def but(self, **changes: Any) -> Header:
        """This header with ``changes``."""
        return replace(self, **changes)

    def to_json(self) -> str:
        """The file's text: the fields and their check, sorted keys (format 2's bytes)."""
        body = asdict(self)
        return json.dumps({**body, "check": checksum(body)}, sort_keys=True)

    # read like the JSON mapping (tests and tools index it by field name)
    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)


def checksum(body: Mapping[str, Any]) -> int:
    """CRC-32 of the JSON of every field but ``check`` (sorted keys): format 2's check."""
    return zlib.crc32(json.dumps({k: v for k, v in body.items() if k != "check"}, sort_keys=True).encode())


# the last bytes parsed and their header: every search reads the file, nearly always unchanged
_last: tuple[bytes, Header | None] = (b"", None)


def parse(raw: bytes) -> Header | None:
    """The header in ``raw``, or None when it is unreadable, incomplete or its check is wrong.

    The same bytes as the last call's give the same (immutable) header without decoding them
    again (a JSON read, a JSON write and a CRC a search); the bytes are those just read, so
    nothing can go stale."""
    global _last
    last = _last  # one read: another thread may replace it meanwhile
    if raw == last[0]:
        return last[1]
    header = _decode(raw)
    _last = (raw, header)
    return header


def _decode(raw: bytes) -> Header | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("check") != checksum(data):
        return None
    try:
        return Header.from_mapping(data)
    except ValueError:
        return None
