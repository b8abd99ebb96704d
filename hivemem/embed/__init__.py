"""Text → vectors: backends, the micro-batching queue, the content-addressed cache.

Data path: ``engine.Embedder`` → ``cache.EmbeddingCache`` (hits; its optional shared tier across
hosts is ``shared_cache``) → ``queue.MicroBatcher`` (misses, gathered across threads) → a backend
(``onnx_backend``, ``st_backend``, ``openai_backend``). ``remote`` embeds on other hosts' servers
without a model here (``hivemem.connect(url=…)``).
"""
