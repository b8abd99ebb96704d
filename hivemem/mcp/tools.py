"""The eight memory tools, named and shaped as OpenMemory's, so that moving over is a configuration
change: ``add_memories``, ``search_memory``, ``list_memories``, ``get_memory``, ``update_memory``,
``delete_memories``, ``delete_all_memories``, ``memory_history``.

Transport-free: ``specs`` describes the tools (descriptions written for a model, JSON input schemas
carrying the documented limits) and ``call`` runs one against a ``hivemem.Memory`` for a ``Caller``.
Every tool acts inside the caller's scope (user_id / agent_id / run_id): filters are ANDed with it,
so they narrow and never widen, and an id outside it is "not found", exactly as an unknown id.
Arguments are checked here before anything reaches the store (unknown names, types, the caps of
``hivemem.memory.records``); ``Memory`` checks the rest (text, metadata and filter limits) with the
same messages as Python and HTTP. Refusals raise ``TypeError``/``ValueError``/``LimitExceeded``
naming the argument; the server turns them into tool errors (``isError``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hivemem.errors import LimitExceeded
from hivemem.memory.records import (
    ENTITIES,
    MAX_DATE_CHARS,
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    REMOTE_MAX_BATCH,
    REMOTE_MAX_LIST,
    REMOTE_MAX_SEARCH,
    check_entity,
    expiry,
)

NAMES = (
    "add_memories",
    "search_memory",
    "list_memories",
    "get_memory",
    "update_memory",
    "delete_memories",
    "delete_all_memories",
    "memory_history",
)


@dataclass(frozen=True)
class Caller:
    """Who calls a tool: the scope fixed for them, and which scope fields their arguments may name.

    A stdio agent (``hivemem mcp --user-id …``) has its whole scope fixed and names nothing; an
    HTTP user key has its ``user_id`` fixed and may narrow to an ``agent_id``/``run_id``; an admin
    key may name all three."""

    fixed: Mapping[str, str] = field(default_factory=dict)
    nameable: frozenset[str] = frozenset()

    def scope(self, args: Mapping[str, Any]) -> dict[str, str]:
        """The caller's scope for one call (ValueError for a field it may not change, or none at all)."""
        scope = dict(self.fixed)
        for name in ENTITIES:
            value = check_entity(name, args.get(name))
            if value is None:
                continue
            if name in self.fixed and value != self.fixed[name]:
                raise ValueError(f"{name}: this connection is limited to {name} {self.fixed[name]!r}")
            if name not in self.fixed and name not in self.nameable:
                raise ValueError(f"{name}: this connection may not choose a {name}")
            scope[name] = value
        if not scope:
            raise ValueError(
                "no scope: name a user_id, agent_id or run_id (hivemem mcp --user-id …, or the "
                "arguments of an admin key over HTTP); a tool never acts on the whole store"
            )
        return scope


# ---- schemas ---------------------------------------------------------------------------------------

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
_METADATA = {
    "type": "object",
    "description": (
        f"Free-form JSON object stored with the memory (at most {MAX_METADATA_BYTES} bytes of JSON, "
        f"{MAX_METADATA_DEPTH} levels deep; keys may not be id, memory, hash, user_id, agent_id, run_id…)."
    ),
}
_FILTERS = {
    "type": "object",
    "description": (
        'Optional Mem0 filter on metadata and fields, e.g. {"category": "food"} or '
        '{"AND": [{"created_at": {"gte": "2026-01-01"}}, {"topic": {"in": ["a", "b"]}}]}. '
        "It narrows the results within your scope; it can never widen it."
    ),
}


_EXPIRES: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_DATE_CHARS,
    "description": "ISO 8601 date or datetime after which search and list leave the memory out "
    "(a date: the end of that day in UTC; a datetime without offset: UTC).",
}
_SHOW_EXPIRED = {
    "type": "boolean",
    "default": False,
    "description": "Also return memories whose expiration_date has passed.",
}
_STAMP: dict[str, Any] = {
    "type": ["number", "string"],
    "maxLength": MAX_DATE_CHARS,
    "description": "When the memory was created, instead of now (Mem0's timestamp): Unix seconds, or an "
    "ISO 8601 date (its start, UTC) or datetime (without offset: UTC); it becomes created_at.",
}
# other strings: ids (MAX_ID_CHARS)
_LENGTH_NAMES = {"expiration_date": "MAX_DATE_CHARS", "timestamp": "MAX_DATE_CHARS"}


def _top_k(default: int, cap: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": cap, "default": default}


_ENTITY_ARGS = {
    name: {**_ID, "description": f"Act on this {name} (only where your key allows it)."} for name in ENTITIES
}

_SPECS: dict[str, dict[str, Any]] = {
    "add_memories": {
        "description": (
            "Store a new memory: a fact, preference or decision worth remembering in later "
            "conversations (call it whenever the user tells you something about themselves or asks "
            "you to remember something). Returns {results: [{id, memory, event}]}; event is ADD, "
            "or NONE when the same text was already stored (nothing is duplicated)."
        ),
        "properties": {
            "text": {"type": "string", "minLength": 1, "description": "What to remember, in plain words."},
            "metadata": _METADATA,
            "expiration_date": _EXPIRES,
            "timestamp": _STAMP,
            "infer": {
                "type": "boolean",
                "default": False,
                "description": "Let the server's LLM extract the facts from text instead of storing it "
                "verbatim (needs an LLM configured for the service).",
            },
        },
        "required": ["text"],
        "annotations": {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": True},
    },
    "search_memory": {
        "description": (
            "Find the stored memories that best answer a question, by meaning and keywords (call it "
            "before answering anything that may depend on what you were told earlier). Returns "
            "{results: [{id, memory, score, metadata, created_at, …}]}, best first."
        ),
        "properties": {
            "query": {"type": "string", "minLength": 1, "description": "The question or topic."},
            "top_k": _top_k(10, REMOTE_MAX_SEARCH),
            "filters": _FILTERS,
            "explain": {
                "type": "boolean",
                "default": False,
                "description": "Also return each result's score_details: cosine, keyword score, ranks, "
                "fused score (why it ranked there).",
            },
            "show_expired": _SHOW_EXPIRED,
        },
        "required": ["query"],
        "annotations": {"readOnlyHint": True},
    },
    "list_memories": {
        "description": (
            "List stored memories in the order they were stored (to review or clean up what is "
            "remembered; top_k caps how many). "
            "Returns {results: [{id, memory, metadata, created_at, …}]}."
        ),
        "properties": {
            "top_k": _top_k(100, REMOTE_MAX_LIST),
            "filters": _FILTERS,
            "show_expired": _SHOW_EXPIRED,
        },
        "required": [],
        "annotations": {"readOnlyHint": True},
    },
    "get_memory": {
        "description": "Read one memory by its id. Returns the memory {id, memory, metadata, created_at, …}.",
        "properties": {"memory_id": {**_ID, "description": "The id an earlier tool returned."}},
        "required": ["memory_id"],
        "annotations": {"readOnlyHint": True},
    },
    "update_memory": {
        "description": (
            "Correct a memory that is no longer true: replace its text (re-indexed), its metadata "
            "and/or its expiration_date. Returns {message}. The old text stays in memory_history."
        ),
        "properties": {
            "memory_id": {**_ID, "description": "The id of the memory to change."},
            "text": {"type": "string", "minLength": 1, "description": "The new text."},
            "metadata": {**_METADATA, "description": "Replaces the metadata. " + _METADATA["description"]},
            "expiration_date": {
                **_EXPIRES,
                "type": ["string", "null"],
                "description": _EXPIRES["description"] + " null: never expires; left out: unchanged.",
            },
        },
        "required": ["memory_id"],
        "annotations": {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True},
    },
    "delete_memories": {
        "description": (
            "Delete memories by id (when the user asks you to forget something). Returns "
            "{message, deleted: [ids], not_found: [ids]}."
        ),
        "properties": {
            "memory_ids": {
                "type": "array",
                "items": _ID,
                "minItems": 1,
                "maxItems": REMOTE_MAX_BATCH,
                "description": f"Ids to delete (at most {REMOTE_MAX_BATCH}).",
            }
        },
        "required": ["memory_ids"],
        "annotations": {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True},
    },
    "delete_all_memories": {
        "description": (
            "Delete every memory of your scope (only when the user explicitly asks to forget "
            "everything). Returns {message}."
        ),
        "properties": {},
        "required": [],
        "annotations": {"readOnlyHint": False, "destructiveHint": True, "idempotentHint": True},
    },
    "memory_history": {
        "description": (
            "How one memory changed: its ADD, UPDATE and DELETE events, oldest first. Returns "
            "{results: [{memory_id, old_memory, new_memory, event, created_at, …}]}."
        ),
        "properties": {"memory_id": {**_ID, "description": "The id of the memory."}},
        "required": ["memory_id"],
        "annotations": {"readOnlyHint": True},
    },
}


def specs(entities: bool) -> list[dict[str, Any]]:
    """``[{name, description, inputSchema, annotations}]`` for ``tools/list``; ``entities``: the
    schemas also offer ``user_id``/``agent_id``/``run_id`` (HTTP keys may name them; a stdio
    agent's scope is fixed by its command line)."""
    out = []
    for name in NAMES:
        spec = _SPECS[name]
        props = dict(spec["properties"])
        if entities:
            props.update(_ENTITY_ARGS)
        schema = {"type": "object", "properties": props, "required": spec["required"]}
        schema["additionalProperties"] = False
        out.append(
            {
                "name": name,
                "description": spec["description"],
                "inputSchema": schema,
                "annotations": spec["annotations"],
            }
        )
    return out


# ---- argument checks ---------------------------------------------------------------------------

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _check(name: str, arguments: Any, entities: bool) -> dict[str, Any]:
    """The arguments of one call, checked against the tool's schema (names, types, limits)."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise TypeError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    spec = _SPECS[name]
    props = {**spec["properties"], **(_ENTITY_ARGS if entities else {})}
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        raise ValueError(f"{name} takes no argument {', '.join(unknown)}; it takes {', '.join(props)}")
    for required in spec["required"]:
        if arguments.get(required) is None:
            raise ValueError(f"{required} is required")
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        schema = props[key]
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if value is None:  # JSON null: the default, as an omitted argument, unless null is a value
            if "null" in kinds:  # ["string", "null"]: update's "never expires"
                out[key] = None
            continue
        kind = next((k for k in kinds if k != "null" and _is(value, k)), None)
        if kind is None:
            shapes = " or ".join(f"{'an' if k[0] in 'aeiou' else 'a'} {k}" for k in kinds if k != "null")
            raise TypeError(f"{key} must be {shapes}, got {value!r:.80}")
        if kind == "integer":
            _bounded(key, value, schema)
        if kind == "array":
            _ids(key, value, schema)
        if kind == "string" and "maxLength" in schema and len(value) > schema["maxLength"]:
            name = _LENGTH_NAMES.get(key, "MAX_ID_CHARS")
            raise LimitExceeded.count(key, len(value), "characters", schema["maxLength"], name, key)
        out[key] = value
    return out


_CAP_NAMES = {REMOTE_MAX_SEARCH: "REMOTE_MAX_SEARCH", REMOTE_MAX_LIST: "REMOTE_MAX_LIST"}


def _is(value: Any, kind: str) -> bool:
    """Whether ``value`` (decoded JSON) is of JSON Schema type ``kind`` (true/false is no number)."""
    boolean = isinstance(value, bool) and kind in ("integer", "number")
    return isinstance(value, _PY_TYPES[kind]) and not boolean


def _bounded(key: str, value: int, schema: dict[str, Any]) -> None:
    if value < schema["minimum"]:
        raise ValueError(f"{key} must be at least {schema['minimum']}, got {value}")
    if value > schema["maximum"]:
        cap = schema["maximum"]
        raise LimitExceeded(
            f"{key} is {value}; the limit is {cap} ({_CAP_NAMES[cap]})",
            limit_name=_CAP_NAMES[cap],
            limit=cap,
            field=key,
        )


def _ids(key: str, value: list[Any], schema: dict[str, Any]) -> None:
    if not value:
        raise ValueError(f"{key} must name at least one id")
    if len(value) > schema["maxItems"]:
        raise LimitExceeded.count(key, len(value), "ids", schema["maxItems"], "REMOTE_MAX_BATCH", key)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise TypeError(f"{key}[{i}] must be a non-empty string, got {item!r:.80}")
        if len(item) > MAX_ID_CHARS:
            raise LimitExceeded.count(
                f"{key}[{i}]", len(item), "characters", MAX_ID_CHARS, "MAX_ID_CHARS", key
            )


# ---- the tools -----------------------------------------------------------------------------------


def _in_scope(record: dict[str, Any] | None, scope: dict[str, str]) -> bool:
    return record is not None and all(record.get(k) == v for k, v in scope.items())


def _owned(memory: Any, memory_id: str, scope: dict[str, str]) -> dict[str, Any]:
    """The record, or MemoryNotFound for an unknown id and for one outside the scope alike."""
    from hivemem.errors import MemoryNotFound

    record: dict[str, Any] | None = memory.get(memory_id)
    if not _in_scope(record, scope):
        raise MemoryNotFound(f"Memory with id {memory_id} not found")
    assert record is not None
    record.pop("score", None)
    return record


def _add(memory: Any, scope: dict[str, str], a: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = memory.add(
        a["text"],
        metadata=a.get("metadata"),
        infer=a.get("infer", False),
        expiration_date=a.get("expiration_date"),
        timestamp=a.get("timestamp"),
        **scope,
    )
    return out


def _search(memory: Any, scope: dict[str, str], a: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = memory.search(
        a["query"],
        filters=a.get("filters"),
        top_k=a.get("top_k", 10),
        explain=a.get("explain", False),
        show_expired=a.get("show_expired", False),
        **scope,
    )
    return out


def _list(memory: Any, scope: dict[str, str], a: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = memory.get_all(
        filters=a.get("filters"),
        top_k=a.get("top_k", 100),
        show_expired=a.get("show_expired", False),
        **scope,
    )
    return out


def _get(memory: Any, scope: dict[str, str], a: dict[str, Any]) -> dict[str, Any]:
    return _owned(memory, a["memory_id"], scope)


def _update(memory: Any, scope: dict[str, str], a: dict[str, Any]) -> dict[str, Any]:
    if a.get("text") is None and a.get("metadata") is None and "expiration_date" not in a:
        raise ValueError("update_memory needs text, metadata, expiration_date or some of them")
    expires = {"expiration_date": a["expiration_date"]} if "expiration_date" in a else {}
    if expires:
        expiry(expires["expiration_date"])  # a malformed date is refused before the id is looked up
    _owned(memory, a["memory_id"], scope)
    out = memory.update(a["memory_id"], a.get("text"), a.get("metadata"), **expires)
    return {**out, "id": a["memory_id"]}


def _delete(memory: Any, scope: dict[str, str], a: dict[str, Any]) -> dict[str, Any]:
    from hivemem.errors import MemoryNotFound

    deleted, missing = [], []
    for memory_id in dict.fromkeys(a["memory_ids"]):
        if not _in_scope(memory.get(memory_id), scope):
            missing.append(memory_id)
            continue
        try:
            memory.delete(memory_id)
            deleted.append(memory_id)
        except MemoryNotFound:  # deleted by someone else in between
            missing.append(memory_id)
    return {"message": f"{len(deleted)} memories deleted", "deleted": deleted, "not_found": missing}


def _delete_all(memory: Any, scope: dict[str, str], a: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = memory.delete_all(**scope)
    return out


def _history(memory: Any, scope: dict[str, str], a: dict[str, Any]) -> dict[str, Any]:
    """The id's events in the caller's scope (a deleted memory's too, as Mem0 keeps them); an id
    with none there is "not found", whether it is unknown or another scope's."""
    from hivemem.errors import MemoryNotFound

    events = memory.history(a["memory_id"], **scope)
    if not events:
        raise MemoryNotFound(f"Memory with id {a['memory_id']} not found")
    return {"results": events}


_RUN: dict[str, Callable[[Any, dict[str, str], dict[str, Any]], dict[str, Any]]] = {
    "add_memories": _add,
    "search_memory": _search,
    "list_memories": _list,
    "get_memory": _get,
    "update_memory": _update,
    "delete_memories": _delete,
    "delete_all_memories": _delete_all,
    "memory_history": _history,
}


def call(memory: Any, caller: Caller, name: str, arguments: Any, entities: bool) -> dict[str, Any]:
    """Run tool ``name`` (blocking: call it from a worker thread); the Mem0-shaped result as a dict.

    ``entities``: whether this transport offers the scope fields as arguments (``specs``)."""
    if name not in _RUN:
        raise ValueError(f"unknown tool {name!r:.80}; the tools are {', '.join(NAMES)}")
    args = _check(name, arguments, entities)
    scope = caller.scope(args)
    for entity in ENTITIES:
        args.pop(entity, None)
    return _RUN[name](memory, scope, args)
