"""One fleet worker (spawned by ``benchmarks/memory.py --fleet``): open a store, search, hold.

Imports nothing at the top beyond sys/os/time, so ``bare`` measures a bare interpreter and
``search`` pays exactly for what it loads. The query vectors are random unit vectors (no model:
the fleet figures are about storage), the query texts come from the benchmark corpus. Protocol:
prints ``ready`` once the store is open, waits for a line (the common start), runs its searches,
prints one JSON line, then waits for a line again (the parent measures PSS meanwhile).

    python memory_worker.py bare
    python memory_worker.py search PATH SEED SEARCHES MODE
    python memory_worker.py rounds PATH SEED SEARCHES MODE    (SEARCHES searches per line "go")
        MODE: hybrid | vector | default | vector-mapped (the index mapped even when run as root)
"""

import os
import sys
import time


def main() -> None:
    if sys.argv[1] == "bare":
        print("ready", flush=True)
        sys.stdin.readline()
        print(f'{{"pid": {os.getpid()}}}', flush=True)
        sys.stdin.readline()
        return
    path, seed, searches, mode = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    import json

    if mode == "vector-mapped":  # the index files mapped, as any non-root owner has them (root: pread)
        from hivemem.memory.storage import vectorindex

        vectorindex._mappable = lambda st: True
        mode = "vector"

    import numpy as np

    from hivemem import Memory
    from hivemem.embed.corpus import sentences

    class RandomQueries:
        """NOT a model: a random unit vector per call (the store holds random vectors too)."""

        model_id = "bench/random-unit"
        dim = 384

        def __init__(self, seed: int) -> None:
            self.rng = np.random.default_rng(seed)

        def embed(self, texts: list[str]) -> np.ndarray:
            v = self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        def embed_one(self, text: str) -> np.ndarray:
            return self.embed([text])[0]

        async def aembed(self, texts: list[str]) -> np.ndarray:
            return self.embed(texts)

    t0 = time.perf_counter()
    m = Memory(path, embedder=RandomQueries(seed))
    opened = time.perf_counter() - t0
    kwargs = {} if mode == "default" else {"mode": mode}
    if sys.argv[1] == "rounds":  # interleaved with other workers: SEARCHES searches per "go"
        texts = sentences(searches, seed=10_000 + seed)
        m.search(texts[0], user_id="one", top_k=10, **kwargs)  # first search: opens and verifies
        print("ready", flush=True)
        while sys.stdin.readline().strip() == "go":
            lat = []
            for text in texts:
                t0 = time.perf_counter()
                m.search(text, user_id="one", top_k=10, **kwargs)
                lat.append(time.perf_counter() - t0)
            print(json.dumps({"lat_s": lat}), flush=True)
        return
    texts = sentences(searches + 1, seed=10_000 + seed)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    m.search(texts[0], user_id="one", top_k=10, **kwargs)
    first = time.perf_counter() - t0
    lat = []
    for text in texts[1:]:
        t0 = time.perf_counter()
        m.search(text, user_id="one", top_k=10, **kwargs)
        lat.append(time.perf_counter() - t0)
    m.embedder.rng = np.random.default_rng(0)  # the same probe in every worker: same results?
    probe = [h["id"] for h in m.search("the probe query", user_id="one", top_k=10, **kwargs)["results"]]
    print(json.dumps({"pid": os.getpid(), "open_s": opened, "first_s": first, "lat_s": lat, "probe": probe}))
    sys.stdout.flush()
    sys.stdin.readline()


if __name__ == "__main__":
    main()
