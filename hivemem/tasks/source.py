"""Stream the tasks out of a source file without holding it in memory, hashing it on the way.

Accepted shapes: a JSON list of tasks, a JSON dict of lists keyed by task type, or JSONL (one
task per line; chosen by extension ``.jsonl``/``.ndjson``/``.jsonlines`` or ``fmt="jsonl"``).
Why ijson: its C (yajl) backend parses a 62 MB list in ~0.5 s while building one task at a time.

yajl does not report where malformed JSON broke, only a message with a 60-byte excerpt around the
spot and a caret at a fixed column. The reader remembers the chunk it handed to the parser, so
the excerpt is located in that chunk to recover the exact byte offset, and the line and column
are then counted in the file.

Nesting depth is limited (``max_depth``, default ``DEFAULT_MAX_DEPTH`` = 512 levels of objects and
lists, the document's outermost one being level 1): a valid 200 KB file nested 100,000 deep once
made ijson's ``items()`` hold a path prefix per level (O(depth²): 23 GB RSS, an OOM kill), and values
1,000 deep cannot be written or read back by Python's ``json`` (it recurses per level). Tasks are
therefore built here from yajl's flat events by a small stack builder that counts levels and stops
at the limit, before anything deeper is held; the error then names the exact position (found by
re-scanning the file, on the error path only). Measured on the 62 MB synthetic library: the
builder parses in 0.59–0.75 s against 0.44–0.60 s for ijson's C ``items()``, interleaved runs.
JSONL lines are decoded by the stdlib; a line with more brackets than the limit is measured on its
bytes first.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import stat
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from hivemem.errors import TaskSourceError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
DEFAULT_MAX_DEPTH = 512
# Values deeper than this cannot be read back safely: json.loads recurses once per level and the
# interpreter stops at 1,000 frames, some of which the reading program itself uses.
MAX_DEPTH_LIMIT = 900
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 16
_WHITESPACE = b" \t\r\n"

# (position, group key or None, task) — the position names the task in error messages
SourceItem = tuple[str, str | None, Any]


@dataclass
class SourceInfo:
    """What is recorded about the source so that a later ``open`` can tell it changed."""

    path: str
    size: int
    mtime_ns: int
    sha256: str = ""


class BigIntegerError(TaskSourceError):
    """yajl met an integer beyond 64 bits; the converter retries with ijson's Python backend."""


def check_max_depth(max_depth: object) -> int:
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(
            f"max_depth must be an integer from 1 to {MAX_DEPTH_LIMIT} (MAX_DEPTH_LIMIT: deeper values "
            f"cannot be read back by Python's json), got {max_depth!r}"
        )
    return max_depth


class _TooDeep(Exception):
    """Raised by the builder the moment a value would nest past the limit."""


# A JSON string (escapes included), or a bracket; re-scans on the error path find the exact spot.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*'
_TOKEN = re.compile(_STRING + rb'(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
_CLOSED_STRING = re.compile(_STRING + rb'"', re.DOTALL)
_OPEN = frozenset(b"[{")


def depth_offset(data: bytes, max_depth: int, depth: int = 0) -> tuple[int | None, int, bytes]:
    """Scan ``data`` (JSON text) from nesting ``depth``: ``(offset of the bracket that goes past
    max_depth or None, depth at the end, unfinished string left over for the next chunk)``."""
    for m in _TOKEN.finditer(data):
        token = m.group()
        if token[0] == 0x22:  # '"': a string, skipped whole; only one that runs to the end can be open
            if m.end() == len(data) and _CLOSED_STRING.fullmatch(token) is None:
                return None, depth, data[m.start() :]
        elif token[0] in _OPEN:
            depth += 1
            if depth > max_depth:
                return m.start(), depth, b""
        else:
            depth -= 1
    return None, depth, b""


def locate_depth(path: Path, max_depth: int, start: int = 0) -> int | None:
    """Byte offset of the first bracket in ``path`` nested deeper than ``max_depth`` (streaming)."""
    depth, carry, base = 0, b"", start
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            data = f.read(1 << 20)
            if not data and not carry:
                return None
            buf = carry + data
            found, depth, carry = depth_offset(buf, max_depth, depth)
            if found is not None:
                return base + found
            base += len(buf) - len(carry)
            if not data:
                return None


_SCALAR_EVENTS = frozenset(("string", "number", "boolean", "null"))


def _build(event: str, value: Any, events: Iterator[tuple[str, Any]], levels: int) -> Any:
    """One complete JSON value from ijson basic events, starting at (event, value).

    ``levels``: how many more levels of objects/lists the value may open; one more raises
    ``_TooDeep`` before it is held. Faster than ijson's ObjectBuilder (one dispatch per event).
    """
    if event == "start_map":
        root: Any = {}
    elif event == "start_array":
        root = []
    else:
        return value
    if levels < 1:
        raise _TooDeep
    stack = [root]
    top, is_map, key = root, event == "start_map", None
    for event, value in events:
        if event == "map_key":
            key = value
        elif event in _SCALAR_EVENTS:
            if is_map:
                top[key] = value
            else:
                top.append(value)
        elif event == "start_map" or event == "start_array":
            if len(stack) >= levels:
                raise _TooDeep
            new: Any = {} if event == "start_map" else []
            if is_map:
                top[key] = new
            else:
                top.append(new)
            stack.append(new)
            top, is_map = new, event == "start_map"
        else:  # end_map / end_array
            stack.pop()
            if not stack:
                return root
            top = stack[-1]
            is_map = type(top) is dict
    raise TaskSourceError("the JSON ended inside a value")  # yajl reports truncation before this


class _Reader:
    """A read-only file wrapper that hashes and counts every byte and keeps the last chunk read."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], object] | None = None) -> None:
        self._raw = raw
        self._on_bytes = on_bytes
        self._hash = hashlib.sha256()
        self._pending = b""  # peeked, not yet handed out
        self.consumed = 0  # bytes pulled from the file
        self.chunk = b""  # the last chunk handed out …
        self.chunk_start = 0  # … and its offset in the file
        self.start = 0  # where the JSON text begins (after a BOM)

    def _pull(self, n: int) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self.consumed += len(data)
            if self._on_bytes is not None:
                self._on_bytes(len(data))
        return data

    def peek(self, n: int) -> bytes:
        while len(self._pending) < n:
            data = self._pull(_CHUNK)
            if not data:
                break
            self._pending += data
        return self._pending[:n]

    def skip(self, n: int) -> None:
        self.peek(n)
        self._pending = self._pending[n:]

    def read(self, n: int = -1) -> bytes:
        start = self.consumed - len(self._pending)
        if self._pending:
            data, self._pending = (
                (self._pending, b"")
                if n < 0 or n >= len(self._pending)
                else (
                    self._pending[:n],
                    self._pending[n:],
                )
            )
        else:
            data = self._pull(_CHUNK if n < 0 else n) if n != 0 else b""
        if data:
            self.chunk, self.chunk_start = data, start
        return data

    def drain(self) -> None:
        """Read (and hash) whatever the parser left, so the digest covers the whole file."""
        self._pending = b""
        while self._pull(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def stat_source(path: Path) -> SourceInfo:
    st = path.stat()
    return SourceInfo(path=str(path.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)


def _char_count(data: bytes) -> int:
    """Characters in UTF-8 ``data``: every byte except continuation bytes (0x80–0xBF)."""
    return len(data) - sum(data.count(bytes((c,))) for c in range(0x80, 0xC0))


def line_col(path: Path, offset: int) -> tuple[int, int] | None:
    """1-based line and character column of byte ``offset`` in a regular file, streaming."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return None
        line, col_chars, done = 1, 0, 0
        with path.open("rb") as f:
            while done < offset:
                block = f.read(min(1 << 20, offset - done))
                if not block:
                    break
                done += len(block)
                newlines = block.count(b"\n")
                if newlines:
                    line += newlines
                    col_chars = _char_count(block[block.rindex(b"\n") + 1 :])
                else:
                    col_chars += _char_count(block)
        return line, col_chars + 1
    except OSError:
        return None


def _locate_in_chunk(message: bytes, chunk: bytes) -> int | None:
    """The byte offset inside ``chunk`` that yajl's verbose excerpt points at, if unambiguous.

    yajl prints ``chunk[max(0, o-30):o+30]`` with newlines as spaces, padded on the left so the
    offset ``o`` (just past the offending character) sits under a caret at column 40.
    """
    lines = message.split(b"\n")
    if len(lines) < 3 or b"(right here)" not in lines[2] or len(lines[1]) < 40:
        return None
    head, tail = lines[1][:40], lines[1][40:]
    flat = chunk.replace(b"\n", b" ").replace(b"\r", b" ")
    found: list[int] = []
    start = 0
    while len(found) < 2:
        o = flat.find(tail, start) if tail else len(flat)
        if o < 0:
            break
        expected = b" " * (40 - o if o < 30 else 10) + flat[max(0, o - 30) : o]
        if expected == head and flat[o : o + 30] == tail:
            found.append(o)
        if not tail:
            break
        start = o + 1
    return found[0] if len(found) == 1 else None


def _json_error(exc: Exception, reader: _Reader, path: Path) -> TaskSourceError:
    raw = exc.args[0] if exc.args else b""
    message = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
    first = message.split(b"\n", 1)[0].decode("utf-8", "replace").strip() or "malformed JSON"
    near = ""
    error_class = BigIntegerError if b"integer overflow" in message else TaskSourceError
    if b"premature EOF" in message or b"Incomplete JSON content" in message:
        offset = reader.consumed
    else:
        inside = _locate_in_chunk(message, reader.chunk)
        if inside is None:
            offset = reader.chunk_start
            near = f" (somewhere in bytes {reader.chunk_start}-{reader.chunk_start + len(reader.chunk)})"
        else:  # yajl points just past the character it choked on: report that character
            offset = reader.chunk_start + max(inside - 1, 0)
    where = None if near else line_col(path, offset)
    if where is not None:
        line, column = where
        return error_class(
            f"{path}: malformed JSON at line {line}, column {column} (byte {offset}): {first}",
            line=line,
            column=column,
            offset=offset,
        )
    return error_class(f"{path}: malformed JSON at byte {offset}{near}: {first}", offset=offset)


_KIND = {"start_map": "an object", "string": "a string", "number": "a number", "boolean": "a boolean"}


def _iter_groups(reader: _Reader, path: Path, parser: Any, max_depth: int) -> Iterator[SourceItem]:
    events = parser.basic_parse(reader, use_float=True)
    next(events)  # start_map: the caller peeked "{"
    for event, key in events:
        if event == "end_map":
            break
        event, _ = next(events)
        if event != "start_array":
            raise TaskSourceError(
                f"{path}: the value under top-level key {key!r} is {_KIND.get(event, 'null')}, not a list "
                "of tasks; expected a JSON list of tasks, a dict of lists keyed by task type, or JSONL "
                "(pass fmt='jsonl' / --format jsonl for one task per line)",
                position=f"[{key!r}]",
            )
        # a task sits inside the dict and its list: two levels of the depth limit used already
        yield from _iter_list(events, f"[{key!r}]", key, reader, path, max_depth, max_depth - 2)
    for _ in events:  # raises on trailing garbage
        pass


def _iter_list(
    events: Iterator[tuple[str, Any]],
    prefix: str,
    group: str | None,
    reader: _Reader,
    path: Path,
    max_depth: int,
    depth_left: int,
) -> Iterator[SourceItem]:
    """The tasks of one JSON array whose ``start_array`` was read, up to its ``end_array``."""
    for index in itertools.count():
        event, value = next(events)
        if event == "end_array":
            return
        position = f"{prefix}[{index}]"
        try:
            task = _build(event, value, events, depth_left)
        except _TooDeep:
            raise _too_deep(path, max_depth, reader, position) from None
        yield position, group, task


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(path: Path, max_depth: int, reader: _Reader, position: str) -> TaskSourceError:
    offset = locate_depth(path, max_depth, reader.start)
    where = line_col(path, offset) if offset is not None else None
    if where is None:  # not a regular file: the chunk being parsed is as close as we get
        at = f"in bytes {reader.chunk_start}-{reader.chunk_start + len(reader.chunk)}"
        line = column = None
    else:
        line, column = where
        at = f"at line {line}, column {column} (byte {offset})"
    return TaskSourceError(
        f"{path}: JSON nested deeper than {max_depth} levels {at}, in task {position}; if that is "
        f"intended, raise the limit with max_depth= / --max-depth (at most {MAX_DEPTH_LIMIT})",
        line=line,
        column=column,
        offset=offset,
        position=position,
    )


def _iter_jsonl(reader: _Reader, path: Path, max_depth: int) -> Iterator[SourceItem]:
    # stdlib json, not orjson: orjson turns integers beyond 64 bits into floats
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    buffer = b""
    number = 0
    while True:
        data = reader.read(1 << 20)
        if data:
            buffer += data
            *lines, buffer = buffer.split(b"\n")
        else:
            lines, buffer = [buffer], b""
        for raw in lines:
            number += 1
            if not raw.strip(_WHITESPACE):
                continue
            deep = None
            if raw.count(b"[") + raw.count(b"{") > max_depth:  # cheap bound first, exact scan if needed
                deep = depth_offset(raw, max_depth)[0]
            try:
                if deep is not None:
                    raise RecursionError
                task = decoder.decode(raw.decode("utf-8"))
            except RecursionError:  # deeper than json can decode: certainly past the limit
                deep = depth_offset(raw, max_depth)[0]
                column = len(raw[: deep or 0].decode("utf-8", "replace")) + 1
                raise TaskSourceError(
                    f"{path}: JSON nested deeper than {max_depth} levels at line {number}, column {column}; "
                    f"if that is intended, raise the limit with max_depth= / --max-depth (at most "
                    f"{MAX_DEPTH_LIMIT})",
                    line=number,
                    column=column,
                    position=f"line {number}",
                ) from None
            except json.JSONDecodeError as exc:
                raise TaskSourceError(
                    f"{path}: malformed JSON at line {number}, column {exc.colno}: {exc.msg}",
                    line=number,
                    column=exc.colno,
                ) from None
            except ValueError as exc:  # invalid UTF-8, NaN/Infinity
                raise TaskSourceError(
                    f"{path}: malformed JSON at line {number}: {exc}", line=number
                ) from None
            yield f"line {number}", None, task
        if not data:
            return


def iter_source(
    path: Path,
    fmt: str = "auto",
    on_bytes: Callable[[int], object] | None = None,
    backend: str | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> tuple[SourceInfo, Generator[SourceItem, None, None]]:
    """Open ``path`` and return its stats and a generator of its tasks.

    The ``sha256`` of the returned ``SourceInfo`` is filled in once the generator is exhausted.
    ``backend`` picks an ijson backend (default: the fastest installed, normally yajl2_c).
    ``max_depth``: levels of nesting allowed in the document (TaskSourceError past it).
    """
    max_depth = check_max_depth(max_depth)
    parser = ijson if backend is None else ijson.get_backend(backend)
    if fmt not in ("auto", "json", "jsonl"):
        raise ValueError(f"unknown source format {fmt!r}; expected 'auto', 'json' or 'jsonl'")
    if not path.exists():
        raise FileNotFoundError(f"task source {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"task source {path} is a directory, not a JSON file")
    info = stat_source(path)
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "json"

    def generate() -> Generator[SourceItem, None, None]:
        with open(path, "rb") as raw:
            reader = _Reader(raw, on_bytes)
            if reader.peek(3) == _BOM:
                reader.skip(3)
                reader.start = 3
            try:
                if fmt == "jsonl":
                    yield from _iter_jsonl(reader, path, max_depth)
                else:
                    yield from _iter_json(reader, path, parser, max_depth)
            except ijson.JSONError as exc:
                raise _json_error(exc, reader, path) from None
            reader.drain()
            info.sha256 = reader.hexdigest()

    return info, generate()


def _iter_json(reader: _Reader, path: Path, parser: Any, max_depth: int) -> Iterator[SourceItem]:
    first = b""
    n = 1
    while True:
        head = reader.peek(n)
        stripped = head.lstrip(_WHITESPACE)
        if stripped or len(head) < n:
            first = stripped[:1]
            break
        n *= 2
    if first == b"[":
        # Not ijson's items(): it keeps a path prefix per level, O(depth²) memory before any check.
        events = parser.basic_parse(reader, use_float=True)
        next(events)  # start_array: peeked above
        yield from _iter_list(events, "", None, reader, path, max_depth, max_depth - 1)  # inside the list
        for _ in events:  # raises on trailing garbage
            pass
    elif first == b"{":
        yield from _iter_groups(reader, path, parser, max_depth)
    elif not first:
        raise TaskSourceError(f"{path}: the file is empty; expected a JSON list of tasks", offset=0)
    else:
        offset = len(head) - len(stripped)
        line, column = line_col(path, offset) or (None, None)
        raise TaskSourceError(
            f"{path}: expected a JSON list of tasks, a dict of lists keyed by task type, or JSONL, but the "
            f"file starts with {first!r} (line {line}, column {column})",
            line=line,
            column=column,
            offset=offset,
        )
