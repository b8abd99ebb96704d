"""What one memory is, and the checks every input passes before anything is embedded or written.

All validation happens here, up front, for a whole batch: a bad item anywhere fails the call with
an error naming the item, and nothing of the batch is stored.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hivemem.embed.validate import check_length, check_unicode
from hivemem.errors import LimitExceeded

ENTITIES = ("user_id", "agent_id", "run_id")
# The filter shorthand for "the field is present" (``{"user_id": "*"}``). Never the value of an id:
# a tenant named "*" would make ``delete_all(user_id="*")`` read as "every tenant" to a human and,
# through the shorthand, to any code that turned scope arguments into a filter.
WILDCARD = "*"
# Fields stored as columns: filterable by name, returned at the top level of a record (as Mem0
# promotes them), and therefore not allowed as metadata keys.
COLUMNS = ("id", "memory", "hash", "created_at", "updated_at", *ENTITIES, "actor_id", "role")
RESERVED_METADATA = frozenset((*COLUMNS, "data", "score"))
# An id chosen by the caller (``add_batch`` items' ``"id"``: LangChain document ids, ids imported
# from Mem0). Generated ids are uuid4 strings; a chosen one is any short printable string. The same
# limit bounds user_id, agent_id and run_id.
MAX_ID_CHARS = 256

# Caps of one remote call (the HTTP memory API and the MCP tools; Python callers have MAX_TOP_K in
# store.py): results of one search, results of one list, items of one batch add or delete.
REMOTE_MAX_SEARCH = 1000
REMOTE_MAX_LIST = 10_000
REMOTE_MAX_BATCH = 1000

# Metadata limits, checked at write time for every entry point (Python, CLI, HTTP) by
# ``check_metadata``. Why: metadata nested 900 deep was accepted once, and every later read of that
# user's memories failed (Python's JSON decoder and the HTTP response serialiser recurse per level).
MAX_METADATA_DEPTH = 32  # levels of nested objects/lists, the metadata dict itself being level 1
MAX_METADATA_BYTES = 64 * 1024  # its JSON text, in UTF-8 bytes


@dataclass(frozen=True)
class NewMemory:
    """A validated memory waiting for its vector and its row."""

    id: str
    memory: str
    hash: str
    scope: str
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    actor_id: str | None
    role: str | None
    metadata: str  # JSON text
    created_at: str
    given_id: bool = False  # the caller chose ``id``: it must not silently become another one
    expires_at: str | None = None  # ``expiration_date`` as ``expiry`` stores it; None: never


# Ids are never reused across scopes: a caller-chosen id that any history event (kept after the
# memory is deleted) records under another scope, or under an unknown one, is refused. The
# statement below gives the history rows of files and schemas made before events kept their
# scope the scope of their memory — only the events after the id's last DELETE, which belong to
# the memory stored now; older ones stay unknown (NULL): no scope may reuse such an id, and
# only an unscoped ``history()`` shows them.
BACKFILL_SCOPES = (
    "UPDATE {history} SET scope = (SELECT m.scope FROM {memories} m WHERE m.id = {history}.memory_id)"
    " WHERE scope IS NULL AND seq > coalesce((SELECT max(d.seq) FROM {history} d"
    " WHERE d.memory_id = {history}.memory_id AND d.event = 'DELETE'), 0)"
)


def reused_id(memory_id: str) -> ValueError:
    """The refusal of a caller-chosen id that another scope has used (see ``BACKFILL_SCOPES``)."""
    return ValueError(
        f"memory id {memory_id!r} was used by another user/agent/run (the history keeps it after a "
        "delete, and ids are never reused across scopes); choose another id"
    )


def in_scope(scope: str | None, entities: dict[str, str]) -> bool:
    """Whether an event recorded with ``scope`` (a ``scope_key``; None: unknown) belongs to a
    scope with ``entities`` (``{"user_id": …}``, any of the three ``ENTITIES``)."""
    if scope is None:
        return False
    ids = dict(zip(ENTITIES, json.loads(scope), strict=True))
    return all(ids[name] == value for name, value in entities.items())


def now() -> str:
    """Timestamps are ISO 8601 in UTC, so that they sort and compare as strings."""
    return datetime.now(UTC).isoformat()


# ``expiration_date`` and ``timestamp``: an ISO 8601 date or datetime string (or a ``date``/
# ``datetime``), at most this many characters; ``timestamp`` also Unix seconds (Mem0's shape). Stored
# (columns ``expires_at``, ``created_at``) as a UTC instant, in one fixed format so that instants
# compare as strings on both backends: a naive datetime is UTC, an aware one is converted to UTC; a
# date means the END of that day in UTC for ``expiration_date`` (``"2026-12-31"`` expires at
# ``2027-01-01T00:00:00.000000+00:00``) and its START for ``timestamp``. Years 1 to 9999 in UTC. A
# memory is expired once its instant is not in the future.
# A ``timestamp`` string of digits is Unix seconds (with an optional sign and fraction), as the CLI
# and HTTP take it, except exactly 8 digits: the ISO basic date YYYYMMDD (``"20230508"``), as for
# ``expiration_date`` (seconds of 8 digits, 1973 to 1976, are written with a fraction: ``"99999999.0"``).
MAX_DATE_CHARS = 64
_SECONDS = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
_BASIC_DATE = re.compile(r"[0-9]{8}")


def instant(moment: datetime) -> str:
    """``moment`` (aware) as the fixed-width UTC text ``expires_at`` holds and compares."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def moment(value: Any, name: str, *, end_of_day: bool = False, seconds: bool = False) -> str:
    """A date/datetime argument (``name`` in messages; the module comment above) → its UTC
    ``instant``; ``end_of_day``: a date means its end (else its start); ``seconds``: Unix seconds
    (int or float) are accepted too. ValueError/TypeError naming the field for anything else."""
    field = name.rpartition(" ")[2]
    if isinstance(value, str):
        if len(value) > MAX_DATE_CHARS:
            raise LimitExceeded(
                f"{name} has {len(value)} characters; the limit is {MAX_DATE_CHARS} (MAX_DATE_CHARS)",
                limit_name="MAX_DATE_CHARS",
                limit=MAX_DATE_CHARS,
                field=field,
            )
        text = value.strip()
        if seconds and _SECONDS.fullmatch(text) and not _BASIC_DATE.fullmatch(text):
            value = float(text) if "." in text else int(text)  # Unix seconds (the comment above)
        else:
            try:
                timed = any(c in text for c in "T :")  # else a date, also in the basic form 20261231
                value = datetime.fromisoformat(text) if timed else date.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"{name} {value[:MAX_DATE_CHARS]!r} is not an ISO 8601 date (2026-12-31, 20261231)"
                    " or datetime (2026-12-31T18:00:00Z, 2026-12-31T18:00:00+02:00)"
                    + (", or Unix seconds (8 digits: write 12345678.0)" if seconds else "")
                ) from None
    if seconds and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            if not math.isfinite(value):
                raise OverflowError
            value = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{name} {value!r} is out of range (years 1 to 9999 in UTC)") from None
    try:
        if isinstance(value, datetime):
            return instant(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
        if isinstance(value, date):
            start = datetime(value.year, value.month, value.day, tzinfo=UTC)
            return instant(start + timedelta(days=1) if end_of_day else start)
    except OverflowError:  # 9999-12-31 (its end), or an offset that moves it past year 9999 or 1
        raise ValueError(f"{name} {value.isoformat()} is out of range (years 1 to 9999 in UTC)") from None
    shapes = "a date, a datetime or Unix seconds" if seconds else "a date or a datetime"
    raise TypeError(f"{name} must be an ISO 8601 string, {shapes}, got {type(value).__name__}")


def expiry(value: Any, where: str = "") -> str | None:
    """``expiration_date`` (None: never expires) → the instant it expires (``moment``)."""
    return None if value is None else moment(value, f"{where}expiration_date", end_of_day=True)


def imported(text: str, name: str) -> str:
    """An imported time (``created_at``, ``updated_at``) as hivemem stores times: UTC, so that date
    words (``keyword_dates``), filters and sorting see the UTC instant. A UTC datetime as
    ``now``/``moment`` write them (``…T…+00:00``) is kept as written (an export imports unchanged);
    another ISO date or datetime is converted (``moment``); other text is kept as given."""
    try:
        found = moment(text, name)
    except ValueError:
        return text
    return text if len(text) > 19 and text[10] == "T" and text.endswith("+00:00") else found


def created(value: Any, where: str = "") -> str:
    """``timestamp`` (Mem0's: when the memory was created, used instead of now; None: now) → the
    ``created_at`` instant (``moment``: Unix seconds, or a date: its start, or a datetime)."""
    return now() if value is None else moment(value, f"{where}timestamp", seconds=True)


def content_hash(text: str) -> str:
    """MD5 of the text, as Mem0 stores it (used for duplicate detection, not security)."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def scope_key(user_id: str | None, agent_id: str | None, run_id: str | None) -> str:
    """One string per (user, agent, run) triple: the unit inside which duplicates are merged."""
    return json.dumps([user_id, agent_id, run_id], ensure_ascii=False, separators=(",", ":"))


def check_entity(name: str, value: Any, where: str = "") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{where}{name} must be a string, got {type(value).__name__}")
    text = check_unicode(value, f"{where}{name}").strip()
    if not text:
        raise ValueError(f"{where}{name} must not be empty")
    if len(text) > MAX_ID_CHARS:
        raise LimitExceeded(
            f"{where}{name} has {len(text)} characters; the limit is {MAX_ID_CHARS} (MAX_ID_CHARS)",
            limit_name="MAX_ID_CHARS",
            limit=MAX_ID_CHARS,
            field=name,
        )
    if text == WILDCARD:
        raise ValueError(
            f"{where}{name} '*' is not a valid id: ids are literal values, and '*' is the filter "
            f"wildcard. To match every {name}, pass filters={{'{name}': '*'}} to get_all/search; "
            "to delete every memory, use reset()"
        )
    return text


def _check_json_value(value: Any, path: str, depth: int, top: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} is {value!r}: not representable in JSON")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        raise ValueError(f"{path} = {value} is too large to store exactly (limit ±2**53)")
    if isinstance(value, dict | list | tuple) and depth > MAX_METADATA_DEPTH:
        # checked before going deeper, so a hostile value never recurses past the limit
        raise LimitExceeded(
            f"{top} is nested deeper than {MAX_METADATA_DEPTH} levels (MAX_METADATA_DEPTH) at {path[:120]}…",
            limit_name="MAX_METADATA_DEPTH",
            limit=MAX_METADATA_DEPTH,
            field="metadata",
        )
    if isinstance(value, str):
        check_unicode(value, path)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path} has a non-string key {k!r}")
            check_unicode(k, f"{path} key {k!r}")
            _check_json_value(v, f"{path}[{k!r}]", depth + 1, top)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json_value(v, f"{path}[{i}]", depth + 1, top)
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise TypeError(f"{path} is a {type(value).__name__}, which is not JSON-serialisable")


def check_metadata(metadata: Any, where: str = "") -> str:
    """Validate ``metadata`` and return it as JSON text."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise TypeError(f"{where}metadata must be a dict, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise TypeError(f"{where}metadata key {key!r} is not a string")
        if key in RESERVED_METADATA:
            raise ValueError(
                f"{where}metadata key {key!r} is reserved (it is a field of every memory: "
                f"{', '.join(sorted(RESERVED_METADATA))})"
            )
    _check_json_value(metadata, f"{where}metadata", 1, f"{where}metadata")
    text = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise LimitExceeded(
            f"{where}metadata is {size} bytes of JSON; "
            f"the limit is {MAX_METADATA_BYTES} (MAX_METADATA_BYTES)",
            limit_name="MAX_METADATA_BYTES",
            limit=MAX_METADATA_BYTES,
            field="metadata",
        )
    return text


def check_memory_id(memory_id: Any, where: str = "") -> str:
    """A caller-chosen memory id: a non-empty printable string of at most MAX_ID_CHARS."""
    if not isinstance(memory_id, str):
        raise TypeError(f"{where}id must be a string, got {type(memory_id).__name__}")
    if not memory_id or len(memory_id) > MAX_ID_CHARS:
        raise ValueError(f"{where}id must have 1 to {MAX_ID_CHARS} characters, got {len(memory_id)}")
    check_unicode(memory_id, f"{where}id")
    if not memory_id.isprintable():
        raise ValueError(f"{where}id {memory_id!r} contains control characters")
    return memory_id


def check_text(text: Any, where: str, *, embedded: bool = False) -> str:
    """A non-empty, storable text; ``embedded``: one the model will embed, so also at most
    ``MAX_TEXT_CHARS`` long (``hivemem.embed.validate``; infer=True conversations are bounded by
    ``infer.MAX_CONVERSATION_CHARS`` instead)."""
    if not isinstance(text, str):
        raise TypeError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where} is empty")
    if embedded:
        check_length(text, where)
    return check_unicode(text, where)


def normalize_messages(
    messages: Any, where: str = "", *, embedded: bool = False
) -> list[tuple[str, str, str | None]]:
    """``messages`` as Mem0 takes them → ``[(content, role, actor name)]``, system turns dropped
    (``embedded``: see ``check_text``)."""
    if isinstance(messages, str):
        return [(check_text(messages, f"{where}messages", embedded=embedded), "user", None)]
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list | tuple):
        raise TypeError(
            f"{where}messages must be a string or a list of {{'role', 'content'}} dicts, "
            f"got {type(messages).__name__}"
        )
    out: list[tuple[str, str, str | None]] = []
    for i, message in enumerate(messages):
        at = f"{where}messages[{i}]"
        if not isinstance(message, dict):
            raise TypeError(f"{at} must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"{at} needs a 'role' string (user, assistant, system, …)")
        check_unicode(role, f"{at}['role']")
        content = check_text(
            message.get("content"), f"{at}['content']", embedded=embedded and role != "system"
        )
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{at}['name'] must be a string")
        if name is not None:
            check_unicode(name, f"{at}['name']")
        if role != "system":
            out.append((content, role, name or None))
    return out


def prepare(
    messages: Any,
    *,
    user_id: Any = None,
    agent_id: Any = None,
    run_id: Any = None,
    metadata: Any = None,
    id: Any = None,  # the key of an add_batch item
    expiration_date: Any = None,
    timestamp: Any = None,
    where: str = "",
) -> list[NewMemory]:
    """Validate one ``add`` call's arguments and turn them into memories (one per non-system turn).

    ``id``: the caller's id for the memory; then ``messages`` must hold exactly one non-system turn.
    ``timestamp``: ``created``; it sets ``created_at`` only (the row id, the insertion order, is
    unchanged: windows and ``get_all`` follow insertion order).
    """
    ids = {
        name: check_entity(name, value, where)
        for name, value in zip(ENTITIES, (user_id, agent_id, run_id), strict=True)
    }
    if not any(ids.values()):
        raise ValueError(f"{where}at least one of user_id, agent_id or run_id is required")
    meta = check_metadata(metadata, where)
    expires = expiry(expiration_date, where)
    scope = scope_key(ids["user_id"], ids["agent_id"], ids["run_id"])
    stamp = created(timestamp, where)
    turns = normalize_messages(messages, where, embedded=True)
    if id is not None:
        id = check_memory_id(id, where)
        if len(turns) != 1:
            raise ValueError(
                f"{where}an id names one memory, but the messages hold {len(turns)} non-system turns"
            )
    return [
        NewMemory(
            id=id if id is not None else str(uuid.uuid4()),
            memory=content,
            hash=content_hash(content),
            scope=scope,
            user_id=ids["user_id"],
            agent_id=ids["agent_id"],
            run_id=ids["run_id"],
            actor_id=actor,
            role=role,
            metadata=meta,
            created_at=stamp,
            given_id=id is not None,
            expires_at=expires,
        )
        for content, role, actor in turns
    ]
