"""The backend of a resolved location (``locate.resolve``): SQLite for a path, PostgreSQL for a
``PostgresLocation``. Each backend module is imported only when a store of its kind is opened (the
PostgreSQL driver is an optional dependency)."""

from __future__ import annotations

from hivemem.memory.storage.base import Storage
from hivemem.memory.storage.locate import Location, PostgresLocation


def open_storage(location: Location, dates: bool | None = None) -> Storage:
    """The storage backend for a resolved location. ``dates``: the ``keyword_dates`` wanted, if
    given (``hybrid.dates_option``): SQLite applies it while opening, before it brings its keyword
    context up to date, so an old store's windows are re-made once, not twice. PostgreSQL takes it
    from ``hybrid.configure_context``: it makes its context only after that."""
    if isinstance(location, PostgresLocation):
        from hivemem.memory.storage.postgres import PostgresStorage

        return PostgresStorage(location)
    from hivemem.memory.storage.sqlite import SQLiteStorage

    return SQLiteStorage(location, dates)
