"""ONNX Runtime backend: the default, and the only one the serving path needs.

Speed comes from four things (figures: ``docs/embed.md#measurements-behind-the-design``): ORT's
fused BERT graph, per-batch padding instead of the tokenizer file's fixed 128 tokens, sorting each
call's texts by token length so a batch holds texts of similar length (almost no padding left), and
running *batches* in parallel — one single-threaded model run per core on a shared session — instead
of splitting every operator across cores. MiniLM's operators are small, so ORT's per-operator
fork/join across threads costs more than it gains, most of all under load (a descheduled thread
stalls every operator of a multi-threaded run, but only its own run here); a run's rows never
depend on the other runs.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from hivemem.embed.mapped import advise_random, data_path
from hivemem.embed.model import DIM, MAX_TOKENS
from hivemem.embed.validate import model_input


def load_tokenizer(path: Path, max_tokens: int = MAX_TOKENS) -> Tokenizer:
    """The model's tokenizer with fixed padding off and truncation at the model's limit."""
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok


def default_threads() -> int:
    """One intra-op thread per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def providers_for(device: str, available: list[str]) -> list[str | tuple[str, dict[str, int]]]:
    """ONNX Runtime execution providers for ``device`` ("cpu", "cuda", "cuda:N") given ``available``.

    CUDA needs the GPU build of ONNX Runtime (``onnxruntime-gpu``); without it this raises a
    ``RuntimeError`` that says so instead of silently running on the CPU.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        index = "0" if device == "cuda" else device.partition(":")[2]
        if not index.isdigit():
            raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N' (N a GPU index)")
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"device={device!r} needs the GPU build of ONNX Runtime (pip install onnxruntime-gpu, "
                f"instead of onnxruntime) and a CUDA driver; this onnxruntime offers only {available}"
            )
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


class OnnxBackend:
    """Runs a BERT-style ONNX graph (``last_hidden_state`` out), mean-pools and L2-normalises.

    On the CPU, ``threads`` model runs go in parallel (each single-threaded) over one shared session;
    a call's texts are cut into at least that many runs when it has enough texts. Not thread-safe by
    itself: the engine's queue calls ``encode`` from a single thread.
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        *,
        threads: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        model_id: str = "onnx",
    ) -> None:
        self.model_id = model_id
        self.dim = DIM
        self.batch_size = batch_size
        self.truncated = 0
        self.last_tokens: np.ndarray | None = None  # tokens per text of the last encode (see Backend)
        self.threads = threads or default_threads()
        # CPU: parallel runs, one thread each (see the module docs). A GPU gets one run at a time.
        self._parallel_runs = self.threads if device == "cpu" else 1
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1 if device == "cpu" else self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Batches change shape on every call, so the arena and memory patterns only keep peak-sized
        # buffers alive: off, less memory per process at the same throughput
        # (docs/embed.md#measurements-behind-the-design).
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        providers = providers_for(device, ort.get_available_providers())
        opts.log_severity_level = 3  # ORT's warnings (e.g. unused initializers) are not the user's business
        self.session = ort.InferenceSession(str(model_path), opts, providers=providers)
        if data_path(model_path).exists():  # the tables ORT mapped from their file (embed.mapped)
            advise_random(data_path(model_path))
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = load_tokenizer(tokenizer_path)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts`` in input order; longer texts are truncated and counted (each is
        tokenized from a prefix that covers the model's window: ``validate.model_input``)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = model_input(self.tokenizer, texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        self.truncated += sum(1 for e in encodings if e.overflowing)
        self.last_tokens = lengths
        order = np.argsort(lengths, kind="stable")
        sorted_lengths = lengths[order].tolist()
        workers = self._parallel_runs
        if workers > 1 and len(texts) <= workers * self.batch_size:
            # A small call (16 threads × embed_one hand over ~16 texts): the cores must finish
            # together, which plain batch planning does not ensure
            # (docs/embed.md#measurements-behind-the-design).
            spans = plan_parallel(sorted_lengths, workers, self.batch_size)
        else:
            spans = plan_batches(sorted_lengths, self.batch_size)
        runs = [order[a:b] for a, b in spans]
        if self._parallel_runs == 1 or len(runs) == 1:
            for idx in runs:
                self._run(idx, encodings, lengths, out)
            return out
        # Largest first, each worker taking the next run when free: a simple, balanced schedule.
        runs.sort(key=lambda idx: -len(idx) * int(lengths[idx[-1]]))
        pending = iter(runs)
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    idx = next(pending, None)
                if idx is None:
                    return
                self._run(idx, encodings, lengths, out)

        helpers = [self._executor().submit(work) for _ in range(min(self._parallel_runs, len(runs)) - 1)]
        try:
            work()
        finally:
            for helper in helpers:
                helper.result()  # re-raises a helper's error, after every run has finished
        return out

    def _run(self, idx: np.ndarray, encodings: list[Encoding], lengths: np.ndarray, out: np.ndarray) -> None:
        """One model run over the texts ``idx``, padded to the longest; rows go to ``out[idx]``."""
        width = int(lengths[idx].max())
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            n = lengths[i]
            ids[row, :n] = encodings[i].ids
            mask[row, :n] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feed)[0]
        out[idx] = _mean_pool_normalise(hidden, mask)

    def _executor(self) -> ThreadPoolExecutor:
        """The helper threads, made again in a forked child (threads do not survive ``fork``)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self._parallel_runs - 1, thread_name_prefix="hivemem-onnx")
            self._pool_pid = os.getpid()
        return self._pool

    def close(self) -> None:
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool = None
        self.session = None


# A single-threaded model run of the int8 graphs costs about as much as this many extra tokens on top
# of the tokens it computes (docs/embed.md#measurements-behind-the-design).
RUN_OVERHEAD_TOKENS = 6


def plan_batches(sorted_lengths: list[int], max_batch: int) -> list[tuple[int, int]]:
    """Cut length-sorted texts into batches that minimise padded tokens + per-run overhead.

    Every batch is padded to its longest text, so a batch of random texts wastes much of its
    compute on padding; a few tighter batches cost less even with the extra runs. Exact dynamic
    programme over the sorted order (each batch is a contiguous run of at most ``max_batch``).
    """
    n = len(sorted_lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        longest = sorted_lengths[i - 1]
        for j in range(max(0, i - max_batch), i):
            cost = best[j] + (i - j) * longest + RUN_OVERHEAD_TOKENS
            if cost < best[i]:
                best[i], cut[i] = cost, j
    spans = []
    i = n
    while i > 0:
        spans.append((cut[i], i))
        i = cut[i]
    return spans[::-1]


def split_evenly(sorted_lengths: list[int], parts: int) -> list[tuple[int, int]]:
    """Cut length-sorted texts into at most ``parts`` contiguous runs with the smallest largest cost.

    A run costs its padded tokens plus ``RUN_OVERHEAD_TOKENS``; the runs go to parallel workers, so
    what counts is the slowest one. Exact dynamic programme (n is small: one queue batch).
    """
    n = len(sorted_lengths)
    parts = max(1, min(parts, n))

    def cost(i: int, j: int) -> float:  # texts i..j-1, padded to the longest (the last)
        return (j - i) * sorted_lengths[j - 1] + RUN_OVERHEAD_TOKENS

    # worst[k][j]: best achievable largest cost cutting the first j texts into k runs
    worst = [[float("inf")] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    worst[0][0] = 0.0
    for k in range(1, parts + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                value = max(worst[k - 1][i], cost(i, j))
                if value < worst[k][j]:
                    worst[k][j], cut[k][j] = value, i
    spans = []
    j = n
    for k in range(parts, 0, -1):
        spans.append((cut[k][j], j))
        j = cut[k][j]
    return spans[::-1]


def plan_parallel(sorted_lengths: list[int], workers: int, max_batch: int) -> list[tuple[int, int]]:
    """Runs for ``workers`` parallel cores that finish soonest (the slowest core decides).

    Candidates: one evenly cut run per core, or 2–4 tighter runs per core (less padding, more runs)
    given to the least-loaded core, longest first, as ``encode`` does. On random 16-text calls the
    tighter plans often finish sooner (docs/embed.md#measurements-behind-the-design).
    """
    n = len(sorted_lengths)

    def cost(span: tuple[int, int]) -> int:
        return (span[1] - span[0]) * sorted_lengths[span[1] - 1] + RUN_OVERHEAD_TOKENS

    def finish(spans: list[tuple[int, int]]) -> int:
        loads = [0] * workers
        for c in sorted(map(cost, spans), reverse=True):
            loads[loads.index(min(loads))] += c
        return max(loads)

    best = split_evenly(sorted_lengths, workers)
    for per_core in (2, 3, 4):
        cap = min(max_batch, max(1, -(-n // (workers * per_core))))
        spans = plan_batches(sorted_lengths, cap)
        if finish(spans) < finish(best):
            best = spans
    return best


def _mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over each row's real tokens, L2-normalised. One batched matmul (mask row × hidden
    states) instead of a masked copy of the states: 2–3× less time holding the GIL, which the
    parallel runs' threads take turns on (docs/embed.md, "Concurrent singles, issue 25")."""
    m = mask.astype(np.float32)
    pooled: np.ndarray = np.matmul(m[:, None, :], hidden.astype(np.float32, copy=False))[:, 0, :]
    pooled /= np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
    pooled /= np.maximum(np.sqrt(np.einsum("ij,ij->i", pooled, pooled))[:, None], 1e-12)
    return pooled
