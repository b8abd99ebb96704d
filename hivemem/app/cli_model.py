"""``hivemem model …`` and ``hivemem cache …``: the engine's verbs for people and scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

model_app = typer.Typer(no_args_is_help=True, help="Export, verify and inspect the embedding model.")
cache_app = typer.Typer(no_args_is_help=True, help="The machine-wide embedding cache.")


@model_app.command("prepare")
def model_prepare(
    force: bool = typer.Option(False, help="Export again even if a prepared model exists."),
) -> None:
    """Export the model to ONNX (fp32 and three int8 recipes), verify each variant against
    sentence-transformers, and pick the default by measurement. Runs automatically on first use."""
    from hivemem.embed.prepare import prepare_model

    manifest = prepare_model(force=force)
    _print_manifest(manifest)


@model_app.command("info")
def model_info() -> None:
    """Show the prepared model's variants and their measured fidelity and speed."""
    from hivemem.embed.model import model_dir, read_manifest

    manifest = read_manifest()
    if manifest is None:
        typer.echo(f"not prepared yet ({model_dir()}): run `hivemem model prepare`", err=True)
        raise typer.Exit(1)
    _print_manifest(manifest)


def _print_manifest(manifest: dict[str, Any]) -> None:
    typer.echo(f"model {manifest['model_id']} ({manifest['dim']}-d), default variant: {manifest['default']}")
    for name, v in manifest["variants"].items():
        limits = manifest["thresholds"]
        misses = [
            k
            for k, key in [
                ("mean cos", "mean_cosine"),
                ("min cos", "min_cosine"),
                ("top-5", "top5_overlap"),
                ("batch", "batch_invariance"),
            ]
            if key in limits and v.get(key, 1.0) < limits[key]
        ]
        if v.get("error"):
            typer.echo(f"  {name:9} could not be built or run here: {v['error']}")
            continue
        verdict = "accepted" if v["accepted"] else f"rejected ({', '.join(misses)})"
        typer.echo(
            f"  {name:9} {v['texts_per_s']:7.1f} texts/s (batches of {v.get('batch_size', 32)})  "
            f"cos mean {v['mean_cosine']:.4f} min {v['min_cosine']:.4f}  top-5 overlap "
            f"{v['top5_overlap']:.3f}  batch-invariant {v['batch_invariance']:.6f}  {verdict}"
        )
    cpu = manifest.get("cpu", {})
    if cpu:
        flags = " ".join(k for k, present in cpu.items() if present is True and k != "int8_pairs_saturate")
        saturates = "yes: weights ±63" if cpu.get("int8_pairs_saturate") else "no"
        typer.echo(f"  CPU flags: {flags or '-'}; int8 pair sums saturate: {saturates}")


@cache_app.command("stats")
def cache_stats() -> None:
    """Entries and bytes in the machine-wide cache, per model (JSON)."""
    from hivemem.embed.cache import EmbeddingCache

    typer.echo(json.dumps(EmbeddingCache().stats(), indent=2))


@cache_app.command("clear")
def cache_clear(model: str = typer.Option(None, help="Only this model id's entries.")) -> None:
    """Delete cached vectors (all, or one model's)."""
    from hivemem.embed.cache import EmbeddingCache

    deleted = EmbeddingCache().clear(model)
    typer.echo(json.dumps({"deleted": deleted}))


@cache_app.command("preload")
def cache_preload(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="One text per line, or JSONL strings."
    ),
    backend: str = typer.Option("onnx", help="onnx, sentence-transformers or openai."),
    variant: str = typer.Option("default", help="ONNX variant: default, fast, fp32, int8, w8a8, int8-fast."),
) -> None:
    """Embed a list of texts ahead of time (e.g. tool descriptions every agent will look up)."""
    from tqdm import tqdm

    from hivemem.embed.engine import Embedder

    texts = _read_texts(file)
    with Embedder(backend, variant=variant) as emb:
        for start in tqdm(range(0, len(texts), 256), unit="batch", disable=None):
            emb.embed(texts[start : start + 256])
        typer.echo(json.dumps({"texts": len(texts), "model_id": emb.model_id, **emb.stats()["cache"]}))


def _read_texts(file: Path) -> list[str]:
    texts = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith('"'):
            try:
                line = json.loads(line)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"{file}:{n}: not a JSON string: {exc}") from None
        texts.append(line)
    return texts
