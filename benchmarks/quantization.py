"""Quantization recipes side by side: speed, fidelity and batch invariance of every recipe tried.

    python benchmarks/quantization.py              # ~15 min on 2 shared cores
    python benchmarks/quantization.py --n 400 --rounds 2

Builds each recipe from the prepared model's fp32 graph (SmoothQuant factors from the same held-out
calibration text ``prepare`` uses: ``sentences(256, seed=7)``), then measures them all in ONE process:
throughput as the best of interleaved rounds (A B C … A B C …) with sentence-transformers
``encode(batch_size=32)`` in every round, fidelity against sentence-transformers on three corpora
none of which was used for calibration — generated sentences, real English prose (this Python's
stdlib docstrings) and one templated sentence (near-ties: where quantization moves neighbours
first) — and batch invariance (lowest cosine between a text alone and inside a batch). Prints a
table and, last, one JSON line. This is the source of the recipe table in docs/quantization.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from model_homes import load_onnx
from plots import add_plot_options, bars

from hivemem.embed import w8a8
from hivemem.embed.corpus import sentences, templated
from hivemem.embed.model import DIM, model_dir, source_dir
from hivemem.embed.onnx_backend import OnnxBackend
from hivemem.embed.prepare import cpu_flags, ensure_prepared, export_bert, fidelity

STDLIB = "os re json collections functools itertools pathlib subprocess threading asyncio sqlite3 logging "
STDLIB += "argparse typing dataclasses email http.client urllib.request unittest decimal statistics random "
STDLIB += (
    "textwrap shutil tempfile zipfile tarfile csv socket ssl heapq bisect inspect ast pickle enum string"
)


def prose(n: int, seed: int) -> list[str]:
    """Real English: 8–30-word sentences from the docstrings of this Python's standard library."""
    found: set[str] = set()
    for name in STDLIB.split():
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            if not isinstance(doc, str):
                continue
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 8 <= len(s.split()) <= 30 and s[0].isupper() and s.endswith("."):
                    found.add(s)
    out = sorted(found)
    random.Random(seed).shuffle(out)
    return out[:n]


def smoothing_fixed(acts: dict, weights: dict, alpha: float) -> dict:
    """SmoothQuant with one α for every smoothed layer (the recipe before per-layer α)."""
    out = {}
    for key, x in acts.items():
        if key[0] in w8a8.SMOOTHED_KINDS:
            a = np.maximum(np.abs(x).max(axis=0), 1e-5)
            w = np.maximum(np.abs(weights[key]).max(axis=1), 1e-5)
            out[key] = (a**alpha / w ** (1 - alpha)).astype(np.float32)
    return out


def build_recipes(fp32: Path, tmp: Path) -> dict[str, Path]:
    import onnx
    from onnx import numpy_helper

    from hivemem.embed.quantize import _feeds

    directory = model_dir()
    tokenizer = directory / "tokenizer.json"
    base = load_onnx(fp32)
    acts = w8a8.calibration_activations(base, _feeds(sentences(256, seed=7), tokenizer))
    init = {i.name: i for i in base.graph.initializer}
    weights = {k: numpy_helper.to_array(init[w]) for k, (_, w) in w8a8.layer_inputs(base).items()}
    per_layer = {}
    for key, x in acts.items():
        if key[0] in w8a8.SMOOTHED_KINDS:
            _, factors = w8a8.choose_smoothing(x, weights[key])
            if factors is not None:
                per_layer[key] = factors
    all_qkv = [("qkv", layer) for layer in range(6)]
    recipes: dict[str, dict] = {
        "w8a8, no smoothing, FFN out per token": {"smoothing": {}, "ffn_out_block": None},
        "w8a8, α=0.5 everywhere, FFN out per token": {
            "smoothing": smoothing_fixed(acts, weights, 0.5),
            "ffn_out_block": None,
        },
        "w8a8, α per layer, FFN out per token": {"smoothing": per_layer, "ffn_out_block": None},
        "w8a8, α per layer, FFN out blocks of 128": {"smoothing": per_layer, "ffn_out_block": 128},
        "w8a8 default, but attention fp32 (fused Attention)": {"smoothing": per_layer, "keep_fp32": all_qkv},
    }
    paths = {
        "fp32, SkipLayerNorm fused (old export)": tmp / "fp32-fused.onnx",
        "fp32": fp32,
        "int8 (MatMulNBits 8-bit, block 128)": directory / "model-int8.onnx",
        "int8-fast (dynamic per-tensor)": directory / "model-int8-fast.onnx",
        "w8a8 (default recipe)": directory / "model-w8a8.onnx",
    }
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(source_dir()), attn_implementation="eager").eval()
    export_bert(
        bert, paths["fp32, SkipLayerNorm fused (old export)"], num_heads=12, hidden_size=DIM, unfuse=False
    )
    for i, (name, kwargs) in enumerate(recipes.items()):
        model = load_onnx(fp32)
        w8a8.rewrite(model, **kwargs)
        paths[name] = tmp / f"recipe-{i}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


class IntraOp(OnnxBackend):
    """The execution before this change: one session with ``threads`` intra-op threads, runs in turn."""

    def __init__(self, path: Path, tokenizer: Path) -> None:
        import onnxruntime as ort

        super().__init__(path, tokenizer, threads=1, batch_size=32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="texts per throughput pass and per fidelity corpus")
    ap.add_argument("--rounds", type=int, default=3)
    add_plot_options(ap)
    args = ap.parse_args()
    manifest = ensure_prepared()
    tokenizer = model_dir() / "tokenizer.json"
    corpora = {
        "generated": sentences(args.n, seed=2024),
        "prose": prose(args.n, seed=3),
        "templated": templated(min(args.n, 600), seed=2025),
    }
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(source_dir()), device="cpu")
    reference = {k: st.encode(t, batch_size=32, normalize_embeddings=True) for k, t in corpora.items()}

    with tempfile.TemporaryDirectory() as tmp:
        paths = build_recipes(model_dir() / "model-fp32.onnx", Path(tmp))
        backends: dict[str, OnnxBackend] = {}
        for name, path in paths.items():
            size = 16 if "w8a8" in name or "int8" in name or name == "fp32" else 32
            backends[name] = OnnxBackend(path, tokenizer, batch_size=size)
        backends["w8a8 default, intra-op threads, bs 32 (old execution)"] = IntraOp(
            paths["w8a8 (default recipe)"], tokenizer
        )
        backends["int8, intra-op threads, bs 32 (old default)"] = IntraOp(
            paths["int8 (MatMulNBits 8-bit, block 128)"], tokenizer
        )

        results: dict[str, dict] = {}
        for name, backend in backends.items():
            entry: dict = {}
            for corpus, texts in corpora.items():
                mean, low, overlap = fidelity(backend.encode(texts), reference[corpus])
                entry[corpus] = {
                    "mean_cos": round(mean, 5),
                    "min_cos": round(low, 5),
                    "top5": round(overlap, 4),
                }
            texts = corpora["generated"]
            together = backend.encode(texts)
            alone = np.concatenate([backend.encode([t]) for t in texts[:64]])
            entry["invariance"] = round(float(np.sum(alone * together[:64], axis=1).min()), 7)
            results[name] = entry

        sample = corpora["generated"]
        fns: dict[str, Callable[[list[str]], object]] = {
            "sentence-transformers bs 32": lambda t: st.encode(t, batch_size=32)
        }
        fns.update({name: b.encode for name, b in backends.items()})
        for fn in fns.values():
            fn(sample[:64])
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn(sample)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
        for b in backends.values():
            b.close()
    rates = {k: len(sample) / v for k, v in best.items()}
    base = rates["sentence-transformers bs 32"]

    load = os.getloadavg()[0]
    print(f"\n{len(sample)} texts per pass, best of {args.rounds} interleaved rounds, load {load:.1f}")
    head = "gen. cos mean/min top-5 | prose top-5 | templ. top-5 | invariance"
    print(f"{'recipe':56} {'texts/s':>8} {'×ST':>5}  {head}")
    print(f"{'sentence-transformers bs 32':56} {base:8.0f}  1.00")
    for name, r in results.items():
        g, p, t = r["generated"], r["prose"], r["templated"]
        print(
            f"{name:56} {rates[name]:8.0f} {rates[name] / base:5.2f}  {g['mean_cos']:.4f}/{g['min_cos']:.4f} "
            f"{g['top5']:.3f} | {p['mean_cos']:.4f} {p['top5']:.3f} | {t['mean_cos']:.4f} {t['top5']:.3f} "
            f"| {r['invariance']:.7f}"
        )
    out = {
        "benchmark": "quantization",
        "n": len(sample),
        "rounds": args.rounds,
        "cpu_flags": cpu_flags(),
        "int8_pairs_saturate": manifest.get("cpu", {}).get("int8_pairs_saturate"),
        "loadavg": os.getloadavg()[0],
        "texts_per_s": {k: round(v, 1) for k, v in rates.items()},
        "vs_st_bs32": {k: round(v / base, 2) for k, v in rates.items()},
        "fidelity": results,
    }
    print(json.dumps(out))
    names = list(rates)
    bars(
        args,
        "quantization_recipes",
        "Quantization recipes: throughput (bar) and generated-text top-5 overlap (label)",
        names,
        {"texts/s": [rates[n] for n in names]},
        labels={
            "texts/s": [
                f"{rates[n]:.0f} ({rates[n] / base:.2f}×)"
                + (f", top-5 {results[n]['generated']['top5']:.3f}" if n in results else "")
                for n in names
            ]
        },
        ylabel="texts/s (× sentence-transformers bs 32)",
        horizontal=True,
        note=f"one process, best of {args.rounds} interleaved rounds, load {load:.1f}: compare ratios",
    )


if __name__ == "__main__":
    main()
