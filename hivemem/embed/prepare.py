"""Preparing the model: export to ONNX once, verify it, and pick the default variant by measurement.

``prepare_model()`` (CLI: ``hivemem model prepare``; ``main()`` in a child process when the engine
finds no current export: ``hivemem.embed.model.prepared_manifest``) runs once per machine and user.
It needs torch (the ``export`` extra); afterwards the serving path needs only onnxruntime +
tokenizers + numpy and reads the result through ``hivemem.embed.model`` (which never imports this
module).
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
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemem.embed.model import (
    DEFAULT_MODEL,
    DIM,
    MAX_TOKENS,
    MIN_BATCH_INVARIANCE,
    MIN_MEAN_COSINE,
    MIN_MIN_COSINE,
    MIN_TOP5_OVERLAP,
    RECIPE,
    is_current,
    lock_path,
    model_dir,
    read_manifest,
    source_dir,
)
from hivemem.errors import HivememError, ModelNotPrepared
from hivemem.infra import config
from hivemem.infra.locks import locked

if TYPE_CHECKING:
    from hivemem.embed.quantize import Profile

# The variants ``prepare`` builds: name → quantization profile (None: the fp32 export itself).
VARIANTS: dict[str, Profile | None] = {"fp32": None, "int8": "nbits", "w8a8": "w8a8", "int8-fast": "fast"}


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
    top5_by_corpus: dict[str, float] | None = None  # top5_overlap is the lowest of these
    batch_size: int = 32  # texts per model run that gave texts_per_s (the backend's default)
    error: str | None = None  # why the variant could not be built or run on this machine
    files: dict[str, dict[str, Any]] | None = None  # size, mtime, SHA-256 of each file (embed.mapped)


def ensure_prepared(model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """Return the manifest, preparing the model first (with a visible message) if needed.

    A directory exported by an older recipe (an upgraded install, an old ``~/.cache``) is prepared
    again, with the same one-line message, rather than served with stale or missing variants.
    """
    manifest = read_manifest(model)
    if manifest is not None and is_current(manifest):
        return manifest
    why = (
        "for first use"
        if manifest is None
        else f"again: it was exported by an older recipe ({manifest.get('recipe', 1)}, now {RECIPE})"
    )
    print(
        f"hivemem: preparing {model} {why} (one-time ONNX export and fidelity check "
        f"into {model_dir(model)}) …",
        file=sys.stderr,
        flush=True,
    )
    return prepare_model(model)


def main(argv: list[str]) -> int:
    """Entry of the child process a serving process starts (``model.prepared_manifest``): prepare
    the model named in ``argv`` and exit 0, or print the reason on one line and exit 1."""
    try:
        ensure_prepared(*argv[:1])
    except Exception as exc:  # the parent raises ModelNotPrepared with this line
        print(f"hivemem: {exc if isinstance(exc, HivememError) else repr(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise ``prepare`` across processes: N workers starting at once export once."""
    with locked(lock_path, mode=0o644):
        yield


def prepare_model(
    model: str = DEFAULT_MODEL, *, force: bool = False, threads: int | None = None
) -> dict[str, Any]:
    """Export, quantise, verify and measure the model; write it atomically; return the manifest."""
    if model != DEFAULT_MODEL:
        raise ValueError(f"unknown model {model!r}; hivemem ships {DEFAULT_MODEL!r}")
    target = model_dir(model)
    manifest = read_manifest(model)
    if not force and manifest is not None and is_current(manifest):
        return manifest
    with _exclusive(lock_path(model)):
        manifest = read_manifest(model)
        if not force and manifest is not None and is_current(manifest):
            print(f"hivemem: {model} was prepared by another process meanwhile", file=sys.stderr, flush=True)
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


def _build(work: Path, *, threads: int | None) -> dict[str, Any]:
    from hivemem.embed.corpus import sentences, templated
    from hivemem.embed.mapped import record, split
    from hivemem.embed.quantize import quantize_int8
    from hivemem.embed.w8a8 import int8_pairs_saturate

    src = source_dir()
    shutil.copy(src / "tokenizer.json", work / "tokenizer.json")
    started = time.perf_counter()
    _export_fp32(src, work / "model-fp32.onnx")
    errors: dict[str, str] = {}
    for name, profile in VARIANTS.items():
        if profile is None:
            continue
        try:
            quantize_int8(
                work / "model-fp32.onnx",
                work / f"model-{name}.onnx",
                # Held-out calibration text (seed 7): never the verification or benchmark texts.
                calibration_texts=sentences(256 if profile == "w8a8" else 64, seed=7),
                tokenizer_path=work / "tokenizer.json",
                profile=profile,
            )
        except Exception as exc:  # one recipe failing on this machine must not cost the others
            errors[name] = f"{type(exc).__name__}: {exc}"
    for name in VARIANTS:  # the lookup tables to their own file, which ORT maps (hivemem.embed.mapped)
        if (work / f"model-{name}.onnx").exists():
            split(work / f"model-{name}.onnx")
    # Held-out verification texts: seeds different from calibration and from the benchmarks. The
    # templated corpus is where quantization moves neighbours first (near-ties everywhere).
    corpora = {"varied": sentences(1200, seed=1001), "templated": templated(400, seed=1002)}
    reference = _reference_vectors(src, corpora)
    reports = _verify_all(work, corpora, reference, errors, threads)
    for r in reports:
        if (work / r.file).exists():
            r.files = record(work / r.file)
    accepted = [r for r in reports if r.accepted]
    if not accepted:
        raise RuntimeError(f"no exported variant matched the reference: {reports}")
    default = max(accepted, key=lambda r: r.texts_per_s)
    fastest = max((r for r in reports if r.error is None), key=lambda r: r.texts_per_s)
    manifest = {
        "model": DEFAULT_MODEL,
        "model_id": f"sentence-transformers/{DEFAULT_MODEL}",
        "dim": DIM,
        "max_tokens": MAX_TOKENS,
        "recipe": RECIPE,
        "default": default.name,
        "fast": fastest.name,
        "variants": {r.name: asdict(r) for r in reports},
        "thresholds": {
            "mean_cosine": MIN_MEAN_COSINE,
            "min_cosine": MIN_MIN_COSINE,
            "top5_overlap": MIN_TOP5_OVERLAP,
            "batch_invariance": MIN_BATCH_INVARIANCE,
        },
        "cpu": {**cpu_flags(), "int8_pairs_saturate": int8_pairs_saturate()},
        "prepared_at": time.time(),
        "prepare_seconds": round(time.perf_counter() - started, 1),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide int8 speed (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp")}


def _export_fp32(src: Path, out: Path) -> None:
    """The bundled model → ``out`` (fused fp32 ONNX)."""
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()
    export_bert(bert, out, num_heads=12, hidden_size=DIM)


def export_bert(bert: Any, out: Path, *, num_heads: int, hidden_size: int, unfuse: bool = True) -> None:
    """torch → ONNX (eager attention so ORT can fuse it) → ORT's BERT optimiser (≈500 → 46 nodes).

    ``bert`` is a ``transformers`` BERT model; the graph takes ``input_ids``, ``attention_mask`` and
    ``token_type_ids`` and returns ``last_hidden_state`` (pooling happens in numpy). ``unfuse=False``
    keeps ``SkipLayerNormalization`` (only ``benchmarks/quantization.py`` wants the old graph).
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
    if unfuse:
        unfuse_skip_layer_norm(optimized.model)
    optimized.save_model_to_file(str(out))
    raw.unlink()


def unfuse_skip_layer_norm(model: Any) -> None:
    """Replace each ``SkipLayerNormalization`` by ``Add`` (+ bias ``Add``) → ``LayerNormalization``.

    Same arithmetic, but on ORT 1.32 the fused CPU kernel is several times slower than the three
    plain ops, so every variant runs faster unfused
    (docs/quantization.md#execution-skiplayernormalization-parallel-runs-batch-size). ORT does not
    fuse them back.
    """
    from onnx import helper

    nodes = []
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization":
            nodes.append(node)
            continue
        if len([o for o in node.output if o]) != 1:
            raise ValueError(f"{node.name}: SkipLayerNormalization with extra outputs is not expected here")
        x, skip, gamma, beta = node.input[:4]
        bias = node.input[4] if len(node.input) > 4 else ""
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        total = f"{node.name}/sum"
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{node.name}/add"))
        if bias:
            nodes.append(
                helper.make_node("Add", [total, bias], [f"{total}_bias"], name=f"{node.name}/add_bias")
            )
            total = f"{total}_bias"
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                [total, gamma, beta],
                [node.output[0]],
                name=f"{node.name}/layer_norm",
                axis=-1,
                epsilon=eps,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 17)  # LayerNormalization


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the export tool chain's warnings, logs and progress bars (the one message is ours)."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        disable: Any = hf_logging.disable_progress_bar  # untyped in transformers
        disable()
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


def _reference_vectors(src: Path, corpora: dict[str, list[str]]) -> dict[str, np.ndarray]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(src), device="cpu")
    return {
        name: st.encode(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        for name, texts in corpora.items()
    }


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


def _verify_all(
    work: Path,
    corpora: dict[str, list[str]],
    reference: dict[str, np.ndarray],
    errors: dict[str, str],
    threads: int | None,
) -> list[VariantReport]:
    """Fidelity and batch invariance of every variant, then speed measured interleaved.

    Speed decides the default, so the variants are timed in rounds (A B C A B C …, best of
    ``SPEED_ROUNDS``) rather than one after the other: a busy neighbour then slows every variant alike.
    """
    from hivemem.embed.onnx_backend import OnnxBackend

    reports: dict[str, VariantReport] = {}
    backends = {}
    for name in VARIANTS:
        file = f"model-{name}.onnx"
        if name in errors:
            reports[name] = _failed(name, file, errors[name])
            continue
        try:
            backend = OnnxBackend(work / file, work / "tokenizer.json", threads=threads, model_id=name)
            vectors = {k: backend.encode(texts) for k, texts in corpora.items()}
            varied = corpora["varied"]
            alone = np.concatenate([backend.encode([text]) for text in varied[:48]])
        except Exception as exc:  # e.g. an onnxruntime too old for an op the recipe uses
            reports[name] = _failed(name, file, f"{type(exc).__name__}: {exc}")
            continue
        backends[name] = backend
        by_corpus = {k: fidelity(vectors[k], reference[k]) for k in corpora}
        mean = min(f[0] for f in by_corpus.values())
        low = min(f[1] for f in by_corpus.values())
        overlap = min(f[2] for f in by_corpus.values())
        invariance = float(np.sum(alone * vectors["varied"][:48], axis=1).min())
        accepted = (
            mean >= MIN_MEAN_COSINE
            and low >= MIN_MIN_COSINE
            and overlap >= MIN_TOP5_OVERLAP
            and invariance >= MIN_BATCH_INVARIANCE
        )
        reports[name] = VariantReport(
            name,
            file,
            round(mean, 5),
            round(low, 5),
            round(overlap, 4),
            round(invariance, 7),
            0.0,
            accepted,
            top5_by_corpus={k: round(f[2], 4) for k, f in by_corpus.items()},
        )
    # Speed decides the default and each variant's batch size: every (variant, batch size) pair is
    # timed in interleaved rounds, best of SPEED_ROUNDS.
    sample = corpora["varied"][:SPEED_TEXTS]
    best: dict[tuple[str, int], float] = {}
    for backend in backends.values():
        backend.encode(sample[:64])  # warm-up
    for _ in range(SPEED_ROUNDS):
        for name, backend in backends.items():
            for size in SPEED_BATCH_SIZES:
                backend.batch_size = size
                t = time.perf_counter()
                backend.encode(sample)
                elapsed = time.perf_counter() - t
                best[(name, size)] = min(best.get((name, size), float("inf")), elapsed)
    for name, backend in backends.items():
        size = min(SPEED_BATCH_SIZES, key=lambda b: best[(name, b)])
        reports[name].texts_per_s = round(len(sample) / best[(name, size)], 1)
        reports[name].batch_size = size
        backend.close()
    return [reports[name] for name in VARIANTS]


# Interleaved speed rounds in ``prepare``: 3 rounds × 3 batch sizes × 400 texts per variant, a few
# seconds each. Batch size matters: the per-token int8 graph runs much faster in runs of 8 than of 32
# (a run's activations then stay in the core's L2), fp32 does not
# (docs/quantization.md#execution-skiplayernormalization-parallel-runs-batch-size).
SPEED_ROUNDS = 3
SPEED_TEXTS = 400
SPEED_BATCH_SIZES = (8, 16, 32)


def _failed(name: str, file: str, error: str) -> VariantReport:
    return VariantReport(name, file, 0.0, 0.0, 0.0, 0.0, 0.0, False, error=error[:500])
