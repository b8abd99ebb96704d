"""Text → vectors: backends, the micro-batching queue, the content-addressed cache.

Data path: ``engine.Embedder`` → ``cache.EmbeddingCache`` (hits) → ``queue.MicroBatcher`` (misses,
gathered across threads) → a backend (``onnx_backend``, ``st_backend``, ``openai_backend``).
"""
