"""Tokenizing long texts: the whole text (before issue 26) against ``validate.model_input`` (the
prefix that gives the model the same 256 tokens), and one embed call through the engine.

    python benchmarks/long_texts.py [--repeat 5] [--no-plots]

Texts: English prose, Chinese (each ideograph a word) and a text with no place to cut (one long
"word" run of letters and "/" replaced by a non-cut symbol, so the prefix is the whole text), at
2 Ki, 8 Ki and 64 Ki characters (``MAX_TEXT_CHARS``). Median of ``--repeat`` runs, milliseconds.
Prints a table, one JSON line and a chart (docs/img/long_texts.png). Timings on a shared machine:
compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from plots import add_plot_options, bars

from hivemem import Embedder
from hivemem.embed.validate import MAX_TEXT_CHARS, model_input

SIZES = (2048, 8192, MAX_TEXT_CHARS)
KINDS = {
    "english": "the shared memory service keeps every agent's notes in one place, ",
    "chinese": "共享记忆服务把每个代理的笔记保存在同一个地方",
    "uncuttable": "ab\u00a6cd\u00a6",  # U+00A6 is a symbol, not a place where a word must start
}


def _median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    add_plot_options(parser)
    args = parser.parse_args()
    emb = Embedder(cache=False)
    tokenizer = emb.backend.tokenizer  # type: ignore[attr-defined]
    rows = []
    for kind, unit in KINDS.items():
        for size in SIZES:
            text = (unit * (size // len(unit) + 1))[:size]
            whole = _median_ms(
                lambda t=text: tokenizer.encode_batch([t], add_special_tokens=True), args.repeat
            )
            bounded = _median_ms(lambda t=text: model_input(tokenizer, [t]), args.repeat)
            embed = _median_ms(lambda t=text: emb.embed([t]), args.repeat)
            rows.append(
                {"kind": kind, "chars": size, "whole_ms": whole, "prefix_ms": bounded, "embed_ms": embed}
            )
    emb.close()
    print(f"{'text':<11} {'chars':>6} {'whole tokenize':>15} {'prefix tokenize':>16} {'embed call':>11}")
    for r in rows:
        print(
            f"{r['kind']:<11} {r['chars']:>6} {r['whole_ms']:>12.2f} ms {r['prefix_ms']:>13.2f} ms"
            f" {r['embed_ms']:>8.1f} ms"
        )
    print(json.dumps({"benchmark": "long_texts", "repeat": args.repeat, "rows": rows}))
    top = [r for r in rows if r["chars"] == MAX_TEXT_CHARS]
    bars(
        args,
        "long_texts",
        f"Tokenizing one {MAX_TEXT_CHARS:,}-character text",
        [r["kind"] for r in top],
        {"whole text": [r["whole_ms"] for r in top], "prefix (model_input)": [r["prefix_ms"] for r in top]},
        ylabel="ms (median)",
        fmt="{:.1f}",
    )


if __name__ == "__main__":
    main()
