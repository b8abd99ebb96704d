"""The backend of a resolved location (``locate.resolve``): SQLite for a path, PostgreSQL for a
``PostgresLocation``. Each backend module is imported only when a store of its kind is opened (the
PostgreSQL driver is an optional dependency)."""

from __future__ import annotations

from hivemem.memory.storage.base import Storage
from hivemem.memory.storage.locate import Location, PostgresLocation


def open_storage(location: Location) -> Storage:
    """The storage backend for a resolved location."""
    if isinstance(location, PostgresLocation):
        from hivemem.memory.storage.postgres import PostgresStorage

        return PostgresStorage(location)
    from hivemem.memory.storage.sqlite import SQLiteStorage

    return SQLiteStorage(location)
