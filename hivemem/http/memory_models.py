"""Request and response bodies of the memory REST API (they are what ``/openapi.json`` documents).

Field names and shapes are those of ``hivemem.Memory`` (and so of Mem0): a body is the keyword
arguments of the Python call. Deeper checks (empty text, reserved metadata keys, filter operators)
stay in ``Memory`` so that Python and HTTP refuse exactly the same things.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from hivemem.memory.batch import MAX_BATCH_CHANGES
from hivemem.memory.records import REMOTE_MAX_BATCH as MAX_BATCH
from hivemem.memory.records import REMOTE_MAX_LIST as MAX_LIST
from hivemem.memory.records import REMOTE_MAX_SEARCH as MAX_TOP_K


class Message(BaseModel):
    """One chat turn; ``system`` turns are skipped when stored."""

    role: str = Field(description="user, assistant, system, …")
    content: str
    name: str | None = Field(None, description="The speaker's name; stored as actor_id.")


class Entities(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None


_EXPIRES = (
    "ISO 8601 date or datetime after which search and list leave the memory out: a date means the "
    "end of that day in UTC, a datetime without offset is UTC."
)
_STAMP = (
    "When the memory was created, instead of now (Mem0's timestamp): Unix seconds, or an ISO 8601 "
    "date (its start, UTC) or datetime (without offset: UTC); it becomes created_at."
)
_SHOW_EXPIRED = "Include memories whose expiration_date has passed."


class AddRequest(Entities):
    """``Memory.add``: one text, or a conversation (one memory per non-system turn)."""

    messages: str | list[Message]
    metadata: dict[str, Any] | None = None
    expiration_date: str | None = Field(None, description=_EXPIRES)
    timestamp: StrictInt | StrictFloat | str | None = Field(None, description=_STAMP)
    infer: bool = Field(
        False,
        description="LLM fact extraction: store the facts an LLM finds instead of the messages (needs an "
        "LLM configured for the service, e.g. HIVEMEM_LLM_URL; 422 when none is, 502 when it fails).",
    )


class BatchAddRequest(BaseModel):
    """``Memory.add_batch``: embedded in one call, stored in one transaction (all or nothing)."""

    model_config = ConfigDict(extra="forbid")

    items: list[AddRequest] = Field(min_length=1, max_length=MAX_BATCH)


class SearchRequest(Entities):
    query: str
    filters: dict[str, Any] | None = Field(None, description="Mem0 filter syntax (docs/memory.md).")
    top_k: int = Field(20, ge=1, le=MAX_TOP_K)
    threshold: float | None = Field(
        None, description="Drop results whose cosine similarity is below this (hybrid and vector mode)."
    )
    mode: Literal["hybrid", "vector", "keyword"] = Field(
        "hybrid", description="hybrid: BM25 fused with vector similarity; vector: cosine only; keyword: BM25."
    )
    show_expired: bool = Field(False, description=_SHOW_EXPIRED)
    explain: bool = Field(False, description="Give each result its score_details (why it ranked there).")
    rerank: bool = Field(
        False,
        description="Reorder the best 4 x top_k with the service's reranker (the LLM one HIVEMEM_LLM_URL "
        "names; 422 when none is configured; the fused order, with a warning, when it fails).",
    )


class ListRequest(Entities):
    filters: dict[str, Any] | None = Field(None, description="Mem0 filter syntax (docs/memory.md).")
    top_k: int = Field(100, ge=1, le=MAX_LIST)
    show_expired: bool = Field(False, description=_SHOW_EXPIRED)


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="New text (re-embedded).")
    metadata: dict[str, Any] | None = Field(None, description="Replaces the metadata.")
    expiration_date: str | None = Field(
        None, description=_EXPIRES + " null: never expires; left out: unchanged."
    )


class BatchUpdateItem(UpdateRequest):
    memory_id: str


class BatchUpdateRequest(BaseModel):
    """``Memory.batch_update`` (Mem0's platform ``PUT /v1/batch/``): all or nothing."""

    model_config = ConfigDict(extra="forbid")

    memories: list[BatchUpdateItem] = Field(min_length=1, max_length=MAX_BATCH_CHANGES)


class BatchDeleteItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_id: str


class BatchDeleteRequest(BaseModel):
    """``Memory.batch_delete`` (Mem0's platform ``DELETE /v1/batch/``): all or nothing."""

    model_config = ConfigDict(extra="forbid")

    memory_ids: list[BatchDeleteItem] = Field(min_length=1, max_length=MAX_BATCH_CHANGES)


class AddResult(BaseModel):
    id: str
    memory: str
    event: Literal["ADD", "NONE"] = Field(description="NONE: the text was already stored in this scope.")
    actor_id: str | None = None
    role: str | None = None


class AddResponse(BaseModel):
    results: list[AddResult]


class ScoreDetails(BaseModel):
    """Why a search result ranked where it did (``explain``; docs/memory.md#explain). Ranks are
    1-based positions in that side's candidate list; null: not a candidate on that side. Each mode
    gives the parts it has; hybrid: fused == (cosine + keyword_weight × keyword_normalized) /
    (1 + keyword_weight)."""

    cosine: float | None = Field(None, description="Cosine similarity to the query.")
    vector_rank: int | None = None
    keyword_score: float | None = Field(None, description="Raw BM25 relevance (higher is better).")
    keyword_normalized: float | None = Field(None, description="keyword_score / the query's best.")
    keyword_rank: int | None = None
    keyword_weight: float | None = Field(None, description="0 when no memory matched a query word.")
    fused: float | None = Field(None, description="The hybrid score.")
    keyword_body: float | None = Field(None, description="keyword_context: the memory's own BM25.")
    keyword_context: float | None = Field(None, description="keyword_context: its window's BM25.")
    context_cosine: float | None = Field(None, description="vector_context: cosine of its window's mean.")
    vector_score: float | None = Field(None, description="vector_context: the cosine part of the fusion.")
    date_boost: float | None = Field(
        None, description="keyword_dates: added to the keyword score (created on the query's date), or 0."
    )
    date_span: list[str] | None = Field(
        None, description="keyword_dates: the first and last UTC day of the date the query names."
    )
    rerank_score: float | None = None
    rank_before_rerank: int | None = None


class MemoryRecord(BaseModel):
    id: str
    memory: str
    hash: str
    metadata: dict[str, Any] | None = None
    score: float | None = Field(
        None, description="Search results only, higher is better: fused score (hybrid), cosine, or BM25."
    )
    created_at: str | None = None
    updated_at: str | None = None
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    actor_id: str | None = None
    role: str | None = None
    expiration_date: str | None = Field(None, description="When it expires (UTC); absent: never.")
    score_details: ScoreDetails | None = Field(None, description="Search with explain=true only.")


class RecordsResponse(BaseModel):
    results: list[MemoryRecord]


class HistoryEntry(BaseModel):
    id: str
    memory_id: str
    old_memory: str | None = None
    new_memory: str | None = None
    event: str = Field(description="ADD, UPDATE or DELETE")
    created_at: str | None = None
    updated_at: str | None = None
    is_deleted: bool
    actor_id: str | None = None
    role: str | None = None


class MessageResponse(BaseModel):
    message: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
