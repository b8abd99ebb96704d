"""What the engine's queue costs per text when many threads call it, without the model's noise.

    python benchmarks/queue_overhead.py                                   # this tree
    python benchmarks/before_after.py --before 0c8afef -- queue_overhead.py --no-plots

A stand-in backend sleeps ``--model-ms`` per batch (the GIL released, as ONNX Runtime's run
releases it) and returns zeros, so what is left of the wall and of the process's CPU time is the
queue's and the callers' Python: ``--threads`` threads calling ``embed_one`` over ``--n`` texts
(cache off). Reported per text, median of ``--rounds``: the CPU time, and the wall time beyond
the stand-in's sleeps. Also times the mean pooling of one parallel run (GIL held) for a few batch
shapes. Prints a table, one JSON line, and a plot (docs/img/queue_overhead.png).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from plots import add_plot_options, bars
from threads import in_threads

from hivemem import Embedder
from hivemem.embed.onnx_backend import _mean_pool_normalise


class StandIn:
    """A backend that sleeps instead of computing (the GIL released, like a model run)."""

    model_id = "stand-in"
    dim = 384
    truncated = 0

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000.0

    def encode(self, texts: list[str]) -> np.ndarray:
        time.sleep(self.seconds)
        return np.zeros((len(texts), self.dim), dtype=np.float32)

    def close(self) -> None:
        pass


def pooling_us(batch: int, tokens: int, reps: int = 300) -> float:
    """Median µs of ``_mean_pool_normalise`` on one run's hidden states."""
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((batch, tokens, 384)).astype(np.float32)
    mask = np.ones((batch, tokens), dtype=np.int64)
    mask[:, tokens - tokens // 4 :] = 0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _mean_pool_normalise(hidden, mask)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--n", type=int, default=1600, help="texts per round")
    ap.add_argument("--model-ms", type=float, default=12.0, help="the stand-in's time per batch")
    ap.add_argument("--rounds", type=int, default=5)
    add_plot_options(ap)
    args = ap.parse_args()
    texts = [f"text number {i}" for i in range(args.n)]
    cpu, wall, sizes = [], [], []
    with Embedder(StandIn(args.model_ms), cache=False) as emb:
        queue = emb._queue
        assert queue is not None
        emb.embed(["warm up"])
        for _ in range(args.rounds):
            batches, c0 = queue.batches, time.process_time()
            seconds = in_threads(lambda part: [emb.embed_one(t) for t in part], texts, args.threads)
            cpu.append(1e6 * (time.process_time() - c0) / args.n)
            n = queue.batches - batches
            wall.append(1e6 * (seconds - n * args.model_ms / 1000) / args.n)
            sizes.append(args.n / n)
    shapes = [(4, 20), (8, 30), (32, 40)]
    pool = {f"{b}x{t}": pooling_us(b, t) for b, t in shapes}
    out = {
        "threads": args.threads,
        "n": args.n,
        "model_ms": args.model_ms,
        "cpu_us_per_text": statistics.median(cpu),
        "wall_us_per_text_beyond_model": statistics.median(wall),
        "texts_per_batch": statistics.median(sizes),
        "pooling_us": pool,
    }
    print(f"| figure ({args.threads} threads × embed_one, stand-in {args.model_ms:g} ms/batch, "
          f"median of {args.rounds}) | value |")  # fmt: skip
    print("|---|---|")
    print(f"| CPU per text, µs | {out['cpu_us_per_text']:.1f} |")
    print(f"| wall per text beyond the stand-in, µs | {out['wall_us_per_text_beyond_model']:.1f} |")
    print(f"| texts per batch | {out['texts_per_batch']:.1f} |")
    for shape, us in pool.items():
        print(f"| mean pooling of a {shape} run (texts × tokens), µs | {us:.0f} |")
    bars(
        args,
        "queue_overhead",
        f"Queue cost per text, {args.threads} threads × embed_one (stand-in model)",
        ["CPU per text", "wall beyond the model"],
        {"µs": [out["cpu_us_per_text"], out["wall_us_per_text_beyond_model"]]},
        ylabel="µs per text",
        fmt="{:.1f}",
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
