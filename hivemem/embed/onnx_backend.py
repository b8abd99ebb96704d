"""ONNX Runtime backend: the default, and the only one the serving path needs.

Speed comes from three things measured on this 2-core CPU (``docs/embed.md``): ORT's fused BERT
graph, per-batch padding instead of the tokenizer file's fixed 128 tokens, and sorting each call's
texts by token length so a batch of 32 holds texts of similar length (real-token share 0.59 → 0.99).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from hivemem.embed.model import DIM, MAX_TOKENS


def load_tokenizer(path: Path, max_tokens: int = MAX_TOKENS) -> Tokenizer:
    """The model's tokenizer with fixed padding off and truncation at the model's limit."""
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok


def default_threads() -> int:
    """One intra-op thread per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OnnxBackend:
    """Runs a BERT-style ONNX graph (``last_hidden_state`` out), mean-pools and L2-normalises.

    Not thread-safe by itself: the engine's queue calls ``encode`` from a single thread.
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
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Batches change shape on every call, so the arena and memory patterns only keep peak-sized
        # buffers alive: off, ~10 MB less per process at the same throughput (docs/embed.md).
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "device='cuda' needs the GPU build of ONNX Runtime (pip install onnxruntime-gpu); "
                    f"available providers: {ort.get_available_providers()}"
                )
            index = int(device.split(":")[1]) if ":" in device else 0
            providers: list = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
        self.session = ort.InferenceSession(str(model_path), opts, providers=providers)
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = load_tokenizer(tokenizer_path)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts`` in input order; longer texts are truncated and counted."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        self.truncated += sum(1 for e in encodings if e.overflowing)
        self.last_tokens = lengths
        order = np.argsort(lengths, kind="stable")
        for start, stop in plan_batches(lengths[order].tolist(), self.batch_size):
            idx = order[start:stop]
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
        return out

    def close(self) -> None:
        self.session = None


# A model run costs about as much as this many extra tokens on top of the tokens it computes
# (single-text vs batched throughput on this CPU, docs/embed.md).
RUN_OVERHEAD_TOKENS = 24


def plan_batches(sorted_lengths: list[int], max_batch: int) -> list[tuple[int, int]]:
    """Cut length-sorted texts into batches that minimise padded tokens + per-run overhead.

    Every batch is padded to its longest text, so a batch of 16 random texts wastes ~30 % of its
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


def _mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
