"""sentence-transformers (torch) backend: the reference the ONNX variants are checked against.

Slower and heavier (torch in every process that uses it: docs/embed.md#measurements-behind-the-design)
— use it when you need bit-for-bit the upstream library's vectors, or torch's CUDA path.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hivemem.embed.model import DIM, MAX_TOKENS, source_dir


class SentenceTransformersBackend:
    def __init__(self, *, threads: int | None = None, batch_size: int = 32, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "backend='sentence-transformers' needs torch and sentence-transformers: "
                "pip install torch==2.13.0 'hivemem[export]'"
            ) from exc
        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} requested but torch sees no CUDA GPU")
        self.model: Any = SentenceTransformer(str(source_dir()), device=device)
        self.model.max_seq_length = MAX_TOKENS
        self.model_id = "all-MiniLM-L6-v2/st"
        self.dim = DIM
        self.batch_size = batch_size
        self.truncated = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        # A word piece covers at least one character, so only long texts can exceed the limit.
        long = [t for t in texts if len(t) > MAX_TOKENS - 2]
        if long:
            lengths = [len(ids) for ids in self.model.tokenizer(long, add_special_tokens=True)["input_ids"]]
            self.truncated += sum(1 for n in lengths if n > MAX_TOKENS)
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        self.model = None
