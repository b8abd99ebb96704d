"""Whole numpy arrays as PostgreSQL arrays in binary form, for batch inserts.

psycopg dumps a list element by element (pgvector's dumper builds a ``Vector`` and byte-swaps it
for every row). These wrappers write the binary array format of all rows at once with numpy
(``int32 length + payload`` per element after a 20-byte header), far cheaper
(docs/postgres.md#measurements-behind-the-design). Use: ``conn.execute("… unnest(%b) …",
[Vectors(matrix)])`` on a connection that went through ``register``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from psycopg.adapt import Dumper
from psycopg.pq import Format

_BYTEA, _BYTEA_ARRAY, _FLOAT4, _FLOAT4_ARRAY = 17, 1001, 700, 1021


class Vectors:
    """A (rows, dim) float32 matrix → ``vector[]``."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)


class Bytes:
    """A (rows, width) int8/uint8 matrix → ``bytea[]`` (one row per element)."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(matrix)


class Reals:
    """A float32 vector → ``real[]``."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float32)


def loaded_vectors(values: list[Any]) -> np.ndarray:
    """The ``vector`` values one query loaded, as a (rows, dim) float32 matrix. pgvector's loader
    gives a ``Vector`` from 0.5 on and a float32 ``np.ndarray`` before (pyproject allows >= 0.3):
    both are accepted, so a search does not depend on which one is installed."""
    return np.stack(
        [np.asarray(v if isinstance(v, np.ndarray) else v.to_numpy(), dtype=np.float32) for v in values]
    )


def _array(elem_oid: int, rows: int, body: np.ndarray) -> bytes:
    # ndim, has-nulls flag, element type, then (length, lower bound) of the one dimension
    return struct.pack(">iiIii", 1, 0, elem_oid, rows, 1) + body.tobytes()


def _vectors(elem_oid: int, m: np.ndarray) -> bytes:
    n, dim = m.shape
    rows = np.empty(n, dtype=[("len", ">i4"), ("dim", ">u2"), ("unused", ">u2"), ("v", ">f4", (dim,))])
    rows["len"], rows["dim"], rows["unused"], rows["v"] = 4 + 4 * dim, dim, 0, m
    return _array(elem_oid, n, rows)


def _bytes(m: np.ndarray) -> bytes:
    n, width = m.shape
    rows = np.empty(n, dtype=[("len", ">i4"), ("b", "u1", (width,))])
    rows["len"], rows["b"] = width, m.view(np.uint8)
    return _array(_BYTEA, n, rows)


def _reals(v: np.ndarray) -> bytes:
    rows = np.empty(len(v), dtype=[("len", ">i4"), ("f", ">f4")])
    rows["len"], rows["f"] = 4, v
    return _array(_FLOAT4, len(v), rows)


def register(conn: Any) -> None:
    """Teach ``conn`` the three wrappers (``vector`` must exist in its database)."""
    from psycopg.types import TypeInfo

    info = TypeInfo.fetch(conn, "vector")
    if info is None:
        raise RuntimeError("the vector type is not installed in this database")
    vector_oid, vector_array_oid = info.oid, info.array_oid

    class VectorsDumper(Dumper):
        format = Format.BINARY
        oid = vector_array_oid

        def dump(self, obj: Vectors) -> bytes:
            return _vectors(vector_oid, obj.matrix)

    class BytesDumper(Dumper):
        format = Format.BINARY
        oid = _BYTEA_ARRAY

        def dump(self, obj: Bytes) -> bytes:
            return _bytes(obj.matrix)

    class RealsDumper(Dumper):
        format = Format.BINARY
        oid = _FLOAT4_ARRAY

        def dump(self, obj: Reals) -> bytes:
            return _reals(obj.values)

    conn.adapters.register_dumper(Vectors, VectorsDumper)
    conn.adapters.register_dumper(Bytes, BytesDumper)
    conn.adapters.register_dumper(Reals, RealsDumper)
