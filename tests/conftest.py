"""Session set-up shared by every test: one prepared model, one private HIVEMEM_HOME.

The model is exported once into the real ``HIVEMEM_HOME`` (CI points that at a fresh temp dir, so
the first run exercises ``hivemem model prepare`` end to end); the tests then run in a private home
whose ``models`` links to it, so no test ever touches the user's cache or database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _prepared_models_dir() -> Path:
    from hivemem import config
    from hivemem.embed.model import is_current, read_manifest

    manifest = read_manifest()
    if manifest is None or not is_current(manifest):  # first run here, or an older recipe: the real CLI
        subprocess.run([sys.executable, "-m", "hivemem.cli", "model", "prepare"], check=True)
    return config.models_dir()


@pytest.fixture(scope="session", autouse=True)
def hivemem_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = _prepared_models_dir()
    home = tmp_path_factory.mktemp("hivemem-home")
    (home / "models").symlink_to(models, target_is_directory=True)
    os.environ["HIVEMEM_HOME"] = str(home)  # inherited by every subprocess a test starts
    return home
