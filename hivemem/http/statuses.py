"""HTTP status codes for hivemem's errors: mapped by exception *type*, in this one table, never by
message text (a reworded message once turned a 404 into a 500).

The memory routes answer a refused input with 422 (FastAPI's own validation status); the
OpenAI-compatible embeddings route answers it with 400, as OpenAI does (``invalid=400``).
"""

from __future__ import annotations

from fastapi import HTTPException

from hivemem.errors import DiskFull, LimitExceeded, LLMError, MemoryNotFound, QueueFull, ServiceBusy

# (type, status, error code in the body); the first matching type wins, so subclasses come first.
STATUS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str | None], ...] = (
    ((QueueFull, ServiceBusy), 429, "busy"),  # the embedding queue is full: retry later
    (MemoryNotFound, 404, None),
    (LimitExceeded, 422, "limit_exceeded"),  # the body's ``param`` names the field
    (LLMError, 502, None),  # infer=True: the LLM behind the service failed; nothing was written
    (DiskFull, 507, "disk_full"),  # the store's disk is full: nothing of this write was stored
    ((ValueError, TypeError, NotImplementedError), 422, None),  # a refused input
)


class ApiError(HTTPException):
    """An HTTP error with the ``code`` and ``param`` of the error body (``app._error``)."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(status, message)
        self.code = code
        self.param = param


def error_for(exc: BaseException, *, invalid: int = 422) -> ApiError | None:
    """The ``ApiError`` standing for ``exc`` (``invalid``: the status of a refused input), or None
    for an error that is not in the table (a bug: the app answers 500)."""
    for types, status, code in STATUS:
        if isinstance(exc, types):
            if status == 422 and code is None:
                status = invalid
            message = str(exc)
            if isinstance(exc, QueueFull):
                message = f"the embedding queue is full ({exc}); retry later"
            return ApiError(status, message, code=code, param=getattr(exc, "field", None))
    return None
