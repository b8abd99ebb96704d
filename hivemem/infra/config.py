"""Where hivemem keeps its files.

Everything persistent (the exported ONNX model, the embedding cache, the default memory database)
lives under one directory, ``HIVEMEM_HOME`` (default ``~/.cache/hivemem``), so that all processes of
one user on one machine find and share the same files. Runtime files (the service socket, its lock)
live in a per-user directory that only the owner may enter.
"""

from __future__ import annotations

import os
from pathlib import Path

from hivemem.infra.settings import Settings


def home() -> Path:
    """The root of hivemem's persistent files (created on first use)."""
    settings = Settings.from_env()
    if settings.home:
        path = Path(settings.home).expanduser()
    else:
        xdg = settings.xdg_cache_home
        path = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "hivemem"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Exported model variants, one sub-directory per model id."""
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_path() -> Path:
    """The machine-wide embedding cache (one SQLite file)."""
    return Path(Settings.from_env().cache or home() / "embeddings.sqlite")


def runtime_dir() -> Path:
    """A per-user directory (mode 0700) for sockets and lock files.

    ``$XDG_RUNTIME_DIR/hivemem`` when the session has one, otherwise a directory named after the
    uid in the temp dir. Refuses a directory owned by somebody else: another user could otherwise
    plant a socket there and receive our texts.
    """
    base = Settings.from_env().xdg_runtime_dir
    if base:
        path = Path(base) / "hivemem"
    else:  # imported here: tempfile (shutil, random…) costs each `hivemem mcp` relay ~0.5 MB
        import tempfile

        path = Path(tempfile.gettempdir()) / f"hivemem-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to us ({os.getuid()})")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path
