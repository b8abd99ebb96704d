"""The model's lookup tables in a file of their own, which ONNX Runtime maps instead of copying.

A text reads a few dozen rows of the word-embedding table (30,522 × 384 floats, 45 MiB of a 56 MiB
int8 graph); loaded from inside the ``.onnx`` file, ORT copies the whole table into each process's
anonymous memory. Stored as ONNX *external data* (``<graph>.data``, at a page-aligned offset), ORT
maps it from the file on the CPU: only the pages a text touches become resident, they are
file-backed, and the processes that run a local engine share them. Vectors are bit-identical
(docs/service.md, "Round 5").

``split`` rewrites a graph file in that layout. It edits the protobuf wire format directly, because
the serving path has no ``onnx`` package: a home prepared by an older version is converted at its
next start (``ensure_mapped``, under the preparation lock, files replaced atomically). The manifest
records size, mtime and SHA-256 of both files; ``check`` compares them before ORT maps anything, so
a truncated or changed file raises ``ModelDamaged`` (a SHA-256 is computed only when the size and
mtime no longer match, e.g. in a copied home).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hivemem.errors import ModelDamaged
from hivemem.infra.locks import locked

# Initializers at least this big, read only by row lookups, go to the data file. In MiniLM that is
# the word-embedding table alone (fp32; int8 in the ``int8-fast`` variant); the weights of the
# matrix products are repacked (copied) by ORT anyway, so mapping them saves nothing (measured).
MAP_MIN_BYTES = 1 << 20
LOOKUP_OPS = frozenset({"Gather", "EmbedLayerNormalization", "QEmbedLayerNormalization"})
ALIGN = 1 << 16  # ORT maps external data whose offset is a multiple of the allocation granularity

# protobuf field numbers (onnx.proto3)
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_INPUT, _NODE_OP_TYPE = 1, 4
_TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 9, 13, 14


def data_path(graph: Path) -> Path:
    """Where the tables of ``graph`` live: ``model-x.onnx`` → ``model-x.onnx.data``."""
    return graph.with_name(graph.name + ".data")


# -- protobuf wire format ---------------------------------------------------------------------------


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field, wire type, start of the field's tag, start of its value, end) of each field."""
    pos = start
    while pos < end:
        tag_at = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value_at = pos
            _, pos = _varint(buf, pos)
        elif wire == 1:
            value_at, pos = pos, pos + 8
        elif wire == 2:
            length, value_at = _varint(buf, pos)
            pos = value_at + length
        elif wire == 5:
            value_at, pos = pos, pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("a protobuf field runs past its message")
        yield field, wire, tag_at, value_at, pos


def _length_field(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(payload)) + payload


def _string(buf: memoryview, value_at: int, end: int) -> str:
    return bytes(buf[value_at:end]).decode("utf-8", "replace")


def _lookup_tables(buf: memoryview, g0: int, g1: int) -> set[str]:
    """Names of the tensors that only lookup ops (``LOOKUP_OPS``) read in the graph ``buf[g0:g1]``."""
    lookups: set[str] = set()
    others: set[str] = set()
    for field, wire, _, v0, v1 in _fields(buf, g0, g1):
        if field != _GRAPH_NODE or wire != 2:
            continue
        op, inputs = "", []
        for f, w, _, n0, n1 in _fields(buf, v0, v1):
            if f == _NODE_OP_TYPE and w == 2:
                op = _string(buf, n0, n1)
            elif f == _NODE_INPUT and w == 2:
                inputs.append(_string(buf, n0, n1))
        (lookups if op in LOOKUP_OPS else others).update(inputs)
    return lookups - others


def _graph_span(graph: Path, buf: memoryview) -> tuple[int, int, int]:
    """(start of the graph field's tag, start of the graph message, its end) in a model file."""
    top = [f for f in _fields(buf, 0, len(buf)) if f[0] == _MODEL_GRAPH and f[1] == 2]
    if len(top) != 1:
        raise ValueError(f"{graph}: not an ONNX model with one graph")
    _, _, gt, g0, g1 = top[0]
    return gt, g0, g1


def _tensor(buf: memoryview, v0: int, v1: int) -> tuple[str, tuple[int, int], dict[str, str] | None]:
    """(name, span of the raw data, external-data entries or None) of the tensor ``buf[v0:v1]``."""
    name, raw, external = "", (0, 0), None
    for f, w, _, n0, n1 in _fields(buf, v0, v1):
        if f == _TENSOR_NAME and w == 2:
            name = _string(buf, n0, n1)
        elif f == _TENSOR_RAW_DATA and w == 2:
            raw = (n0, n1)
        elif f == _TENSOR_EXTERNAL_DATA:
            external = external if external is not None else {}
            if w == 2:  # a key/value entry: key is field 1, value field 2
                entry = {k: _string(buf, a, b) for k, kw, _, a, b in _fields(buf, n0, n1) if kw == 2}
                external[entry.get(1, "")] = entry.get(2, "")
    return name, raw, external


def split(graph: Path, *, min_bytes: int = MAP_MIN_BYTES) -> dict[str, dict[str, Any]] | None:
    """Move the big lookup tables of ``graph`` into ``data_path(graph)``; returns the ``record`` of
    both files, hashed from the bytes written (nothing read back from disk is trusted), or None when
    there is no table (or the graph is split already). Both files are written under temporary
    names and renamed: a reader sees the old graph, or the new graph with its data file in place."""
    buf = memoryview(graph.read_bytes())  # slices of it are views: the table is not copied
    gt, g0, g1 = _graph_span(graph, buf)
    tables = _lookup_tables(buf, g0, g1)
    location = data_path(graph).name
    graph_parts: list[bytes | memoryview] = []
    data: list[bytes | memoryview] = []
    offset = 0
    for field, wire, t0, v0, v1 in _fields(buf, g0, g1):
        chunk: bytes | memoryview = buf[t0:v1]
        if field == _GRAPH_INITIALIZER and wire == 2:
            name, raw, external = _tensor(buf, v0, v1)
            length = raw[1] - raw[0]
            if external is not None:
                return None  # split already (by us, or by whoever made the file)
            if name in tables and length >= min_bytes:
                pad = -offset % ALIGN
                data += [b"\0" * pad, buf[raw[0] : raw[1]]]
                offset += pad
                body = b"".join(buf[a:b] for f, _, a, _, b in _fields(buf, v0, v1) if f != _TENSOR_RAW_DATA)
                for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                    entry = _length_field(1, key.encode()) + _length_field(2, value.encode())
                    body += _length_field(_TENSOR_EXTERNAL_DATA, entry)
                body += _encode_varint(_TENSOR_DATA_LOCATION << 3) + _encode_varint(1)  # EXTERNAL
                chunk = _length_field(_GRAPH_INITIALIZER, body)
                offset += length
        graph_parts.append(chunk)
    if not data:
        return None
    new_graph = _length_field(_MODEL_GRAPH, b"".join(graph_parts))
    model: list[bytes | memoryview] = [buf[:gt], new_graph, buf[g1:]]
    mode = graph.stat().st_mode & 0o777
    # read-only, so a `cp` over it fails instead of truncating what processes map (a fault past the
    # new end would be SIGBUS); on Windows a read-only file would stop the next prepare's rmtree
    data_mode = mode & 0o555 if os.name == "posix" else mode
    written = {location: _write_atomically(data_path(graph), data, data_mode)}
    try:
        written[graph.name] = _write_atomically(graph, model, mode)
    except BaseException:
        data_path(graph).unlink(missing_ok=True)  # no graph names it: the old one-file graph stays
        raise
    return {graph.name: written[graph.name], location: written[location]}


def _check_split(graph: Path) -> None:
    """Raise ``ModelDamaged`` unless the tables that ``graph`` keeps outside lie in its data file
    exactly as ``split`` wrote them (that file, ending where the last table ends). For a graph found
    split with no record: a conversion that stopped between its rename and the manifest."""
    buf = memoryview(graph.read_bytes())
    _, g0, g1 = _graph_span(graph, buf)
    data, end = data_path(graph), 0
    for field, wire, _, v0, v1 in _fields(buf, g0, g1):
        if field == _GRAPH_INITIALIZER and wire == 2:
            name, _, external = _tensor(buf, v0, v1)
            if external is None:
                continue
            if external.get("location") != data.name:
                raise ModelDamaged(f"{graph}: table {name!r} is stored outside {data.name}: {REPAIR}")
            end = max(end, int(external.get("offset", "0")) + int(external.get("length", "-1")))
    if end:
        try:
            size = data.stat().st_size
        except OSError as exc:
            raise ModelDamaged(f"{data} is missing ({exc.strerror}): {REPAIR}") from None
        if size != end:
            raise ModelDamaged(
                f"{data} has {size} bytes, but its graph needs {end} (truncated or changed): {REPAIR}"
            )


def _is_split(graph: Path) -> bool:
    """Whether ``graph`` keeps a table outside (False when it cannot be read)."""
    try:
        buf = memoryview(graph.read_bytes())
        _, g0, g1 = _graph_span(graph, buf)
        return any(
            _tensor(buf, v0, v1)[2] is not None
            for f, w, _, v0, v1 in _fields(buf, g0, g1)
            if f == _GRAPH_INITIALIZER and w == 2
        )
    except (OSError, ValueError, IndexError):
        return False


def _write_atomically(path: Path, chunks: list[bytes | memoryview], mode: int) -> dict[str, Any]:
    """Write ``path`` under a temporary name, then rename; its ``record`` entry, hashed in memory.
    Its pages leave the page cache (see ``_sha256``: written pages sit in large folios)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            os.chmod(tmp, mode)
            st = os.fstat(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


def _remove_temporaries(directory: Path, file: str) -> None:
    """Files a killed conversion left (``.model-x.onnx.XXXX``, ``.model-x.onnx.data.XXXX``, a
    manifest's): called under the lock, so nobody is writing them."""
    for pattern in (f".{file}.*", ".manifest.json.*"):
        for path in directory.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()


# -- integrity --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    """The file's SHA-256; its pages then leave the page cache (those no process maps).

    Why: Linux (6.x) maps a page cache *folio* whole on a fault, and a file just written or read
    through sits in large folios (up to 2 MiB), so a process touching 400 rows of the table would map
    42 MiB of it. Pages faulted in one at a time (``advise_random``) stay 4 KiB (docs/service.md,
    "Round 5")."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return digest.hexdigest()


def record(graph: Path) -> dict[str, dict[str, Any]]:
    """Size, mtime and SHA-256 of ``graph`` and its data file (when it has one), by file name."""
    out = {}
    for path in (graph, data_path(graph)):
        if path.exists():
            st = path.stat()
            out[path.name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}
    return out


def check(directory: Path, files: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Raise ``ModelDamaged`` unless every file in ``files`` (a ``record``) is there as prepared.

    Size first (a truncated file would crash the process that maps it), then mtime; when the
    mtime differs (a copied home) the SHA-256 decides. Returns the new mtimes of the files whose
    content the SHA-256 confirmed (``ensure_mapped`` records them: the next start skips the hash).
    """
    confirmed = {}
    for name, want in files.items():
        path = directory / name
        try:
            st = path.stat()
        except OSError as exc:
            raise ModelDamaged(f"{path} is missing ({exc.strerror}): {REPAIR}") from None
        if st.st_size != want["bytes"]:
            raise ModelDamaged(
                f"{path} has {st.st_size} bytes, but {want['bytes']} were prepared (truncated or changed): "
                f"{REPAIR}"
            )
        if st.st_mtime_ns != want["mtime_ns"]:
            if _sha256(path) != want["sha256"]:
                raise ModelDamaged(f"{path} changed since it was prepared (its SHA-256 differs): {REPAIR}")
            confirmed[name] = st.st_mtime_ns
    return confirmed


REPAIR = "run `hivemem model prepare --force` to prepare the model again"


def ensure_mapped(directory: Path, name: str, manifest: dict[str, Any], lock: Path) -> dict[str, Any]:
    """The manifest after variant ``name`` has the mapped layout (converted now, once, if it was
    prepared by an older version), and its files were checked (``check``).

    A home that cannot be written (read-only, full) keeps working in the old layout, the table
    copied into the process as before, with one line on stderr (once per process) saying why.
    """
    if manifest["variants"][name].get("files") is None:
        try:
            manifest = _convert(directory, name, lock)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if _is_split(directory / manifest["variants"][name]["file"]):  # renamed, not recorded
                _warn_once(
                    f"hivemem: {directory}: the model's table is mapped from its own file, but the "
                    f"manifest could not record it ({why}); it is checked and recorded at the next start"
                )
            else:
                _warn_once(
                    f"hivemem: {directory} stays in its old layout, the model's table copied into each "
                    f"process ({why}); `hivemem model prepare --force` there maps it"
                )
            return manifest
    files = manifest["variants"][name]["files"]
    confirmed = check(directory, files)
    if confirmed:
        with contextlib.suppress(OSError):  # a read-only copy is hashed at every start instead
            _record_mtimes(directory, name, {k: (files[k]["sha256"], v) for k, v in confirmed.items()}, lock)
    return manifest


_warned: set[str] = set()


def _warn_once(line: str) -> None:
    """``line`` on stderr, once per process: every engine start of a worker would repeat it."""
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr, flush=True)


def _record_mtimes(directory: Path, name: str, confirmed: dict[str, tuple[str, int]], lock: Path) -> None:
    """Record the mtimes of files whose SHA-256 ``check`` confirmed (unless the record changed).
    Only saves the next start a hash: skipped when someone holds the lock (a ``prepare --force``)."""
    with locked(lock, timeout=0, mode=0o644) as held:
        if not held:
            return
        path = directory / "manifest.json"
        manifest = json.loads(path.read_text())
        files = manifest["variants"][name].get("files") or {}
        for file, (sha256, mtime_ns) in confirmed.items():
            if files.get(file, {}).get("sha256") == sha256:
                files[file]["mtime_ns"] = mtime_ns
        _write_atomically(path, [json.dumps(manifest, indent=2).encode()], 0o644)


def _convert(directory: Path, name: str, lock: Path) -> dict[str, Any]:
    with locked(lock, mode=0o644):
        path = directory / "manifest.json"
        manifest: dict[str, Any] = json.loads(path.read_text())
        report = manifest["variants"][name]
        if report.get("files") is None:  # nobody converted it while we waited
            graph = directory / report["file"]
            _remove_temporaries(directory, report["file"])
            try:
                files = split(graph)
                if files is None:  # no table, or split by a conversion stopped before its record
                    _check_split(graph)
                    files = record(graph)
            except (ValueError, IndexError) as exc:
                raise ModelDamaged(f"{graph} is not a readable ONNX model ({exc}): {REPAIR}") from None
            report["files"] = files
            _write_atomically(path, [json.dumps(manifest, indent=2).encode()], 0o644)
    return manifest


# -- access pattern ---------------------------------------------------------------------------------

MADV_RANDOM = 1


def advise_random(path: Path) -> int:
    """Tell the kernel that this process reads the mappings of ``path`` at random (Linux): a page
    fault then reads that page alone, not the 128 KiB around it, so a text makes a few rows of the
    table resident rather than a few hundred. Returns the bytes advised (0 elsewhere)."""
    if not sys.platform.startswith("linux"):
        return 0
    target = str(path.resolve())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.rstrip("\n").split(maxsplit=5)
            if len(parts) == 6 and parts[5] == target:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if libc.madvise(lo, hi - lo, MADV_RANDOM) == 0:
                    advised += hi - lo
    return advised
