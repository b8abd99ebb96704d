"""Any OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, TEI, infinity, a hivemem service)."""

from __future__ import annotations

import numpy as np

_CHUNK = 256  # inputs per request; most servers cap the request size


class OpenAIBackend:
    """Sends texts to ``{url}/embeddings`` and returns L2-normalised float32 vectors.

    ``url`` is the API base (``http://host:port/v1``). ``dim`` is probed with one request when not
    given, so a wrong URL fails at construction with the URL in the message.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str = "all-MiniLM-L6-v2",
        api_key: str | None = None,
        dim: int | None = None,
        timeout: float = 60.0,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        self.model_id = f"openai:{self.url}/{model}"
        self.truncated = 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.dim = dim if dim is not None else int(self._request(["dimension probe"]).shape[1])

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        parts = [self._request(texts[i : i + _CHUNK]) for i in range(0, len(texts), _CHUNK)]
        return np.concatenate(parts)

    def _request(self, texts: list[str]) -> np.ndarray:
        import httpx

        try:
            response = self._client.post(
                "/embeddings", json={"input": texts, "model": self.model, "encoding_format": "float"}
            )
        except httpx.HTTPError as exc:
            raise ConnectionError(
                f"cannot reach the embeddings endpoint {self.url}/embeddings: {exc}"
            ) from None
        if response.status_code != 200:
            raise ConnectionError(
                f"{self.url}/embeddings answered HTTP {response.status_code}: {response.text[:300]}"
            )
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        if len(vectors) != len(texts):
            raise ConnectionError(
                f"{self.url}/embeddings returned {len(vectors)} vectors for {len(texts)} inputs"
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
        return unit

    def close(self) -> None:
        self._client.close()
