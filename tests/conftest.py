"""Session set-up shared by every test: one prepared model, one private HIVEMEM_HOME.

The model is exported once into the real ``HIVEMEM_HOME`` (CI points that at a fresh temp dir, so
the first run exercises ``hivemem model prepare`` end to end); the tests then run in a private home
whose ``models`` holds hard links to it, so no test ever touches the user's cache or database.

PostgreSQL tests get a server from ``pg_dsn`` and a private schema of it from ``pg_url``.

The fast loop (``make test-fast``) selects ``-m "fast and not slow and not model and not pg"``:
``fast`` is set by hand on the modules or tests that need neither the model, torch nor PostgreSQL;
``model`` and ``pg`` are added here from the fixtures a test uses (or set by hand on a test that
embeds without one). The model is exported and linked only when a selected test may need it, and
PostgreSQL starts only when a test asks for ``pg_dsn``, so the fast loop runs in an empty home
with neither.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite starts its own servers: never embed on, or cache into, the ones a developer configured.
for _var in ("HIVEMEM_EMBEDDER_URL", "HIVEMEM_CACHE_URL", "HIVEMEM_CACHE_TTL"):
    os.environ.pop(_var, None)
# Services, runs and task conversions put their sockets and registry entries in the per-user runtime
# directory (the dashboard's fleet page lists runs and libraries from there): the suite's go to a
# private one, removed at the end, never the developer's.
_RUNTIME = tempfile.mkdtemp(prefix="hivemem-test-rt-")
os.environ["XDG_RUNTIME_DIR"] = _RUNTIME
atexit.register(shutil.rmtree, _RUNTIME, ignore_errors=True)


def _prepared_models_dir() -> Path:
    from hivemem.embed.model import is_current, read_manifest
    from hivemem.infra import config

    manifest = read_manifest()
    if manifest is None or not is_current(manifest):  # first run here, or an older recipe: the real CLI
        subprocess.run([sys.executable, "-m", "hivemem.app.cli", "model", "prepare"], check=True)
    return config.models_dir()


def _link_models(models: Path, to: Path) -> None:
    """A private copy of the prepared models made of hard links (a copy where links fail): the
    engine may rewrite a model's files in place (``hivemem.embed.mapped`` converts an older layout),
    and it must do so in the test home, never in the developer's cache."""
    for src in models.iterdir():
        if src.name.startswith(".") or not src.is_dir():
            continue  # locks, half-written exports
        (to / src.name).mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("."):
                try:
                    os.link(f, to / src.name / f.name)
                except OSError:
                    shutil.copy2(f, to / src.name / f.name)


# Fixtures whose use means "this test embeds with the real model" / "this test needs PostgreSQL"
# (``item.fixturenames`` is the whole closure: ``mem`` counts through ``embedder``).
MODEL_FIXTURES = {"embedder", "model_home", "local_embedder", "local_engine", "hm_service"}
PG_FIXTURES = {"pg_dsn", "pg_url"}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: the selection sees these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if names & PG_FIXTURES or any(isinstance(v, str) and v == "postgres" for v in params.values()):
            item.add_marker("pg")
        if names & MODEL_FIXTURES:
            item.add_marker("model")


def _needs_model(items: list[pytest.Item]) -> bool:
    """Whether a selected test may embed with the real model: any test not marked ``fast``, or
    marked ``model``."""
    return any(item.get_closest_marker("fast") is None or item.get_closest_marker("model") for item in items)


@pytest.fixture(scope="session", autouse=True)
def hivemem_home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = _prepared_models_dir() if _needs_model(request.session.items) else None
    home = tmp_path_factory.mktemp("hivemem-home")
    if models is not None:
        _link_models(models, home / "models")
    os.environ["HIVEMEM_HOME"] = str(home)  # inherited by every subprocess a test starts
    return home


# -- PostgreSQL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL server with pgvector: ``HIVEMEM_TEST_PG_DSN`` when set, else a throwaway one
    (``tests/pgtemp.py``) started on first use and stopped at the end of the session. If neither is
    possible the tests that need it fail with the reason; they are never skipped."""
    dsn = os.environ.get("HIVEMEM_TEST_PG_DSN", "").strip()
    if dsn:
        yield dsn
        return
    from pgtemp import TempPostgres

    with TempPostgres() as server:
        yield server.dsn


@pytest.fixture(scope="session")
def pg_url(pg_dsn: str) -> Iterator[Callable[[], str]]:
    """``new()`` → a ``postgresql://`` URL of a fresh schema (namespace) of the test server, so tests
    never see each other's rows; every schema handed out is dropped at the end of the session."""
    import psycopg

    made: list[str] = []

    def new() -> str:
        schema = f"t_{uuid.uuid4().hex[:16]}"
        made.append(schema)
        return f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}schema={schema}"

    yield new
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for schema in made:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``small_tmpfs(size, at=None, readonly=False)``: a new tmpfs of ``size`` bytes, mounted for
    this test (a disk that really fills up: ENOSPC, SQLITE_FULL; or a read-only folder) at ``at``
    or a new folder; unmounted afterwards. Skips where mounting is not
    permitted (not root, no CAP_SYS_ADMIN); CI runs as root, so there the tests run."""
    mounted: list[Path] = []

    def mount(size: int, at: Path | None = None, readonly: bool = False) -> Path:
        where = at or tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir(exist_ok=True)
        options = f"size={size},mode=0777" + (",ro" if readonly else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def fill_disk() -> Callable[[Path], Path]:
    """``fill_disk(directory)``: a file written in ``directory`` until its file system is full
    (returned: delete it to free the space)."""
    return _fill_disk


def _fill_disk(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler
