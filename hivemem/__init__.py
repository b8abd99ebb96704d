"""hivemem: share one embedding model, one cache, one task library and warm agents across a fleet
of AI-agent worker processes, with a Mem0-compatible memory store on top.

The public API is flat: everything a user needs is importable from ``hivemem``. Names are resolved
lazily, so ``import hivemem`` stays cheap: it loads neither torch nor sentence-transformers, and
onnxruntime only once a model is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Embedder": "hivemem.embed.engine",
    "EmbedderLike": "hivemem.embed.protocol",
    "EmbeddingCache": "hivemem.embed.cache",
    "RemoteEmbedder": "hivemem.embed.remote",
    "prepare_model": "hivemem.embed.prepare",
    "WorkerPool": "hivemem.pool.pool",
    "run_parallel": "hivemem.pool.runner",
    "RunSummary": "hivemem.pool.runner",
    "TaskLibrary": "hivemem.tasks.library",
    "convert_tasks": "hivemem.tasks.convert",
    "Memory": "hivemem.memory.store",
    "AsyncMemory": "hivemem.memory.aio",
    "Reranker": "hivemem.memory.rerank",
    "import_mem0": "hivemem.memory.mem0_import",
    "FactExtractor": "hivemem.memory.infer",
    "connect": "hivemem.service.client",
    "aconnect": "hivemem.service.aclient",
    "ServiceClient": "hivemem.service.client",
    # the one error tree (hivemem.errors)
    "HivememError": "hivemem.errors",
    "ModelNotPrepared": "hivemem.errors",
    "QueueFull": "hivemem.errors",
    "QueueClosed": "hivemem.errors",
    "EmbedderUnavailable": "hivemem.errors",
    "ServiceError": "hivemem.errors",
    "ServiceUnavailable": "hivemem.errors",
    "ServiceBusy": "hivemem.errors",
    "UntrustedService": "hivemem.errors",
    "AlreadyRunning": "hivemem.errors",
    "ProtocolError": "hivemem.errors",
    "FrameTooLarge": "hivemem.errors",
    "MemoryNotFound": "hivemem.errors",
    "LimitExceeded": "hivemem.errors",
    "LLMError": "hivemem.errors",
    "PgVectorMissing": "hivemem.errors",
    "NoPostgres": "hivemem.errors",
    "DiskFull": "hivemem.errors",
    "PoolError": "hivemem.errors",
    "WorkerCrashed": "hivemem.errors",
    "WorkerExited": "hivemem.errors",
    "WorkerInitError": "hivemem.errors",
    "CallTimeout": "hivemem.errors",
    "PoolClosed": "hivemem.errors",
    "RemoteError": "hivemem.errors",
    "RunSetupError": "hivemem.errors",
    "TaskLibraryError": "hivemem.errors",
    "TaskSourceError": "hivemem.errors",
    "UnknownTaskTypeError": "hivemem.errors",
    "TaskNotFoundError": "hivemem.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from hivemem.embed.cache import EmbeddingCache
    from hivemem.embed.engine import Embedder
    from hivemem.embed.prepare import prepare_model
    from hivemem.embed.protocol import EmbedderLike
    from hivemem.embed.remote import RemoteEmbedder
    from hivemem.errors import (
        AlreadyRunning,
        CallTimeout,
        DiskFull,
        EmbedderUnavailable,
        FrameTooLarge,
        HivememError,
        LimitExceeded,
        LLMError,
        MemoryNotFound,
        ModelNotPrepared,
        NoPostgres,
        PgVectorMissing,
        PoolClosed,
        PoolError,
        ProtocolError,
        QueueClosed,
        QueueFull,
        RemoteError,
        RunSetupError,
        ServiceBusy,
        ServiceError,
        ServiceUnavailable,
        TaskLibraryError,
        TaskNotFoundError,
        TaskSourceError,
        UnknownTaskTypeError,
        UntrustedService,
        WorkerCrashed,
        WorkerExited,
        WorkerInitError,
    )
    from hivemem.memory.aio import AsyncMemory
    from hivemem.memory.infer import FactExtractor
    from hivemem.memory.mem0_import import import_mem0
    from hivemem.memory.rerank import Reranker
    from hivemem.memory.store import Memory
    from hivemem.pool.pool import WorkerPool
    from hivemem.pool.runner import RunSummary, run_parallel
    from hivemem.service.aclient import aconnect
    from hivemem.service.client import ServiceClient, connect
    from hivemem.tasks.convert import convert_tasks
    from hivemem.tasks.library import TaskLibrary


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hivemem' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
