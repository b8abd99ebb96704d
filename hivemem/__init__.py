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
    "LLMReranker": "hivemem.memory.llm_rerank",
    "RerankWarning": "hivemem.memory.llm_rerank",
    "import_mem0": "hivemem.memory.mem0_import",
    "FactExtractor": "hivemem.memory.infer",
    "connect": "hivemem.service.client",
    "aconnect": "hivemem.service.aclient",
    "ServiceClient": "hivemem.service.client",
    "Settings": "hivemem.infra.settings",  # every environment variable hivemem reads, typed
    # the one error tree (hivemem.errors)
    "HivememError": "hivemem.errors",
    "ModelNotPrepared": "hivemem.errors",
    "ModelDamaged": "hivemem.errors",
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
    "GroupLeaderFailed": "hivemem.errors",
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
    # ``X as X``: re-exported on purpose, for type checkers (mypy --strict: no_implicit_reexport)
    from hivemem.embed.cache import EmbeddingCache as EmbeddingCache
    from hivemem.embed.engine import Embedder as Embedder
    from hivemem.embed.prepare import prepare_model as prepare_model
    from hivemem.embed.protocol import EmbedderLike as EmbedderLike
    from hivemem.embed.remote import RemoteEmbedder as RemoteEmbedder
    from hivemem.errors import AlreadyRunning as AlreadyRunning
    from hivemem.errors import CallTimeout as CallTimeout
    from hivemem.errors import DiskFull as DiskFull
    from hivemem.errors import EmbedderUnavailable as EmbedderUnavailable
    from hivemem.errors import FrameTooLarge as FrameTooLarge
    from hivemem.errors import GroupLeaderFailed as GroupLeaderFailed
    from hivemem.errors import HivememError as HivememError
    from hivemem.errors import LimitExceeded as LimitExceeded
    from hivemem.errors import LLMError as LLMError
    from hivemem.errors import MemoryNotFound as MemoryNotFound
    from hivemem.errors import ModelDamaged as ModelDamaged
    from hivemem.errors import ModelNotPrepared as ModelNotPrepared
    from hivemem.errors import NoPostgres as NoPostgres
    from hivemem.errors import PgVectorMissing as PgVectorMissing
    from hivemem.errors import PoolClosed as PoolClosed
    from hivemem.errors import PoolError as PoolError
    from hivemem.errors import ProtocolError as ProtocolError
    from hivemem.errors import QueueClosed as QueueClosed
    from hivemem.errors import QueueFull as QueueFull
    from hivemem.errors import RemoteError as RemoteError
    from hivemem.errors import RunSetupError as RunSetupError
    from hivemem.errors import ServiceBusy as ServiceBusy
    from hivemem.errors import ServiceError as ServiceError
    from hivemem.errors import ServiceUnavailable as ServiceUnavailable
    from hivemem.errors import TaskLibraryError as TaskLibraryError
    from hivemem.errors import TaskNotFoundError as TaskNotFoundError
    from hivemem.errors import TaskSourceError as TaskSourceError
    from hivemem.errors import UnknownTaskTypeError as UnknownTaskTypeError
    from hivemem.errors import UntrustedService as UntrustedService
    from hivemem.errors import WorkerCrashed as WorkerCrashed
    from hivemem.errors import WorkerExited as WorkerExited
    from hivemem.errors import WorkerInitError as WorkerInitError
    from hivemem.infra.settings import Settings as Settings
    from hivemem.memory.aio import AsyncMemory as AsyncMemory
    from hivemem.memory.infer import FactExtractor as FactExtractor
    from hivemem.memory.llm_rerank import LLMReranker as LLMReranker
    from hivemem.memory.llm_rerank import RerankWarning as RerankWarning
    from hivemem.memory.mem0_import import import_mem0 as import_mem0
    from hivemem.memory.rerank import Reranker as Reranker
    from hivemem.memory.store import Memory as Memory
    from hivemem.pool.pool import WorkerPool as WorkerPool
    from hivemem.pool.runner import RunSummary as RunSummary
    from hivemem.pool.runner import run_parallel as run_parallel
    from hivemem.service.aclient import aconnect as aconnect
    from hivemem.service.client import ServiceClient as ServiceClient
    from hivemem.service.client import connect as connect
    from hivemem.tasks.convert import convert_tasks as convert_tasks
    from hivemem.tasks.library import TaskLibrary as TaskLibrary


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hivemem' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
