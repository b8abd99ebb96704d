"""Loaded by every Python process of ``make test-fast`` (the Makefile puts this folder first on
``PYTHONPATH``, which the processes a test starts inherit): importing torch, the model-export stack
or the PostgreSQL wheel fails at once, so a test that needs them cannot hide in the fast loop."""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

BLOCKED = {"torch", "transformers", "sentence_transformers", "onnxscript", "pgserver"}


class _Block(MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"make test-fast: {fullname} is not available in the fast loop (mark the test "
                "`model`/`pg`, or leave it out of `fast`)",
                name=fullname,
            )
        return None


sys.meta_path.insert(0, _Block())
