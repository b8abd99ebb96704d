"""Where a memory store lives: a file path (SQLite) or a ``postgresql://`` URL (PostgreSQL).

``Memory(location)`` accepts:

* a path (``str`` or ``Path``): the SQLite file;
* ``postgresql://user:pw@host:5432/db?schema=team_a`` (or ``postgres://``): PostgreSQL. Query
  parameters that hivemem reads itself are removed before the URL reaches libpq: ``schema`` (the
  namespace, default ``hivemem``), ``search`` (``local``: exact, large searches ranked by an
  in-process int8 copy first, the default; ``server``: exact scans by PostgreSQL only, nothing
  held in the client; ``hnsw``: pgvector's approximate HNSW index; ``hnsw=true`` is the same),
  ``ef_search`` (HNSW), ``minconn``/``maxconn`` (connection pool); the rest (``sslmode``,
  ``connect_timeout``, …) go to libpq unchanged;
* ``sqlite:///absolute/path``: the SQLite file (so that ``HIVEMEM_MEMORY_URL`` can name either);
* ``None``: ``$HIVEMEM_MEMORY_URL`` when set, else ``hivemem.infra.config.home()/memory.sqlite``.

Anything else that looks like a URL (``scheme://…``) is refused, never taken as a file name: a
typo such as ``postgresq://`` would otherwise silently create a local directory.

PostgreSQL's options are checked in one place, ``PostgresLocation`` (whatever made it: a URL,
Mem0's config, or ``PostgresStorage``'s keyword arguments), with the names users write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from hivemem.infra import config as hm_config
from hivemem.infra.settings import Settings

ENV = "HIVEMEM_MEMORY_URL"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# a URL that went through pathlib: "postgresql://h/db" becomes "postgresql:/h/db"
_COLLAPSED = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")
_PG_SCHEMES = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
SEARCH_MODES = ("local", "server", "hnsw")
_POOL_MAX = 1000  # minconn/maxconn
_EF_SEARCH_MAX = 1000
_DIMS_MAX = 16000  # pgvector's vector type holds at most 16,000 dimensions
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class PostgresLocation:
    """A PostgreSQL store: libpq ``conninfo`` plus hivemem's own options, checked (and numbers
    given as text converted) when made: a bad option is refused before any connection."""

    conninfo: str
    schema: str = "hivemem"
    search: str = "local"
    ef_search: int | None = None
    minconn: int = 1
    maxconn: int = 10
    dims: int | None = None  # Mem0's embedding_model_dims: checked when the model is bound

    def __post_init__(self) -> None:
        if not isinstance(self.schema, str) or not _SCHEMA_NAME.fullmatch(self.schema):
            raise ValueError(
                "schema must be 1-63 letters, digits or underscores, not starting with a digit; "
                f"got {self.schema!r}"
            )
        if self.search not in SEARCH_MODES:
            raise ValueError(f"search must be local, server or hnsw, got {self.search!r}")
        fix = object.__setattr__  # frozen: the checked numbers replace what was given
        if self.ef_search is not None:
            fix(self, "ef_search", _int("ef_search", self.ef_search, 1, _EF_SEARCH_MAX))
        fix(self, "minconn", _int("minconn", self.minconn, 1, _POOL_MAX))
        fix(self, "maxconn", _int("maxconn", self.maxconn, 1, _POOL_MAX))
        if self.minconn > self.maxconn:
            raise ValueError(
                f"minconn must not exceed maxconn, got minconn={self.minconn}, maxconn={self.maxconn}"
            )
        if self.dims is not None:
            fix(self, "dims", _int("embedding_model_dims", self.dims, 1, _DIMS_MAX))

    def __str__(self) -> str:
        return f"{redact(self.conninfo)} (schema {self.schema})"


def redact(conninfo: str) -> str:
    """The connection string without its password (for messages)."""
    text = re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", conninfo)
    return re.sub(r"(password=)(\S+)", r"\1***", text)


Location = Path | PostgresLocation


def default_path() -> Path:
    return hm_config.home() / "memory.sqlite"


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _int(name: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return number


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    """hivemem's options from URL query parameters or a config dict (``PostgresLocation`` checks them)."""
    out: dict[str, Any] = {k: raw[k] for k in ("ef_search", "minconn", "maxconn") if raw.get(k) is not None}
    if "schema" in raw:
        out["schema"] = str(raw["schema"])
    if "search" in raw:
        out["search"] = str(raw["search"])
    if "hnsw" in raw and _flag("hnsw", raw["hnsw"]):  # Mem0's pgvector option
        out["search"] = "hnsw"
    return out


def parse_url(url: str) -> PostgresLocation:
    """A ``postgresql://`` URL → its location (hivemem's query parameters taken out)."""
    parts = urlsplit(url)
    ours = {"schema", "search", "hnsw", "ef_search", "minconn", "maxconn"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    mine = {k: v for k, v in query if k in ours}
    rest = [(k, v) for k, v in query if k not in ours]
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return PostgresLocation(conninfo, **_options(mine))


def resolve(location: str | Path | PostgresLocation | None) -> Location:
    """Where ``Memory(location)`` keeps its memories (see the module docstring)."""
    if location is None:
        env = Settings.from_env().memory_url
        return resolve(env) if env else default_path()
    if isinstance(location, PostgresLocation):
        return location
    if isinstance(location, Path):
        if _COLLAPSED.match(str(location)):
            raise ValueError(
                f"{str(location)!r} looks like a URL that was turned into a file path (pathlib drops "
                "one '/' of '//'); pass the URL as a string"
            )
        return location
    if not isinstance(location, str):
        raise TypeError(f"a memory location is a path or a URL string, got {type(location).__name__}")
    if not location.strip():
        raise ValueError("the memory location is empty")
    if _URL.match(location):
        scheme = location.split(":", 1)[0].lower()
        if scheme in _PG_SCHEMES:
            return parse_url(location)
        if scheme == "sqlite":
            path = urlsplit(location).path
            if not path or path == "/":
                raise ValueError(f"{location!r} names no file; write sqlite:///absolute/path.sqlite")
            return Path(path)
        raise ValueError(
            f"unsupported memory URL scheme {scheme + '://'!r}: use a file path (SQLite), "
            "postgresql://user@host/db (PostgreSQL) or sqlite:///path"
        )
    return Path(location)


def from_mem0_pgvector(cfg: dict[str, Any]) -> PostgresLocation:
    """Mem0's ``{"provider": "pgvector", "config": {…}}`` → a location.

    ``connection_string`` or ``dbname/user/password/host/port/sslmode``; ``collection_name`` is the
    schema (namespace) that holds this store's tables; ``embedding_model_dims`` must match the
    embedder; ``hnsw`` (true: ``search="hnsw"``), ``search``, ``ef_search``, ``minconn``,
    ``maxconn`` as in the URL form.
    """
    known = {"connection_string", "dbname", "user", "password", "host", "port", "sslmode",
             "collection_name", "embedding_model_dims", "hnsw", "search", "ef_search", "minconn", "maxconn",
             "diskann", "connection_pool"}  # fmt: skip
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"unknown pgvector config keys {sorted(unknown)}; known: {sorted(known)}")
    if cfg.get("diskann"):
        raise ValueError("diskann (pgvectorscale) is not supported; use hnsw: true for an approximate index")
    if cfg.get("connection_pool") is not None:
        raise ValueError(
            "connection_pool objects are not accepted; give connection_string (hivemem pools itself)"
        )
    raw: dict[str, Any] = {
        k: cfg[k] for k in ("search", "hnsw", "ef_search", "minconn", "maxconn") if k in cfg
    }
    if cfg.get("collection_name") is not None:
        raw["schema"] = cfg["collection_name"]
    if cfg.get("connection_string"):
        conn = cfg["connection_string"]
        if not isinstance(conn, str):
            raise TypeError("connection_string must be a string")
        base = parse_url(conn) if _URL.match(conn) else PostgresLocation(conn)
        conninfo = base.conninfo
        raw = {
            **{k: getattr(base, k) for k in ("schema", "search", "ef_search", "minconn", "maxconn")},
            **raw,
        }
    else:
        from psycopg.conninfo import make_conninfo

        parts = {k: cfg[k] for k in ("dbname", "user", "password", "host", "port", "sslmode") if cfg.get(k)}
        if not parts:
            raise ValueError("the pgvector config needs connection_string or dbname/user/host/…")
        conninfo = make_conninfo(**{k: str(v) for k, v in parts.items()})
    return PostgresLocation(conninfo, dims=cfg.get("embedding_model_dims"), **_options(raw))
