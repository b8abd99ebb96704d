"""``hivemem.connect(url=...)``: embeddings served by other hosts, over the OpenAI ``/v1/embeddings`` API.

Use (with two embedding servers running)::

    import hivemem

    emb = hivemem.connect(url="http://gpu-1:8080,http://gpu-2:8080", api_key="…")
    emb.embed(["a cat sat"]).shape  # (1, 384)

Any OpenAI-compatible server works (``hivemem serve --http``, TEI, infinity, vLLM, OpenAI).
What this client adds on top of one HTTP call:

* **Several hosts.** Requests go round-robin over the healthy URLs. A host that fails to answer
  (refused, reset, timed out, HTTP 429/5xx) is skipped for a backoff that doubles from 0.5 s to
  30 s, then tried again by the next request; the request that failed is resent at once to
  another host (embedding is idempotent), so a host dying under a call costs time, not the call.
  Only when every host failed within ``timeout`` does the call raise ``EmbedderUnavailable``,
  naming each URL and what it answered.
* **Micro-batching.** Concurrent small calls of one process are gathered by the same
  ``MicroBatcher`` the engine uses, so 16 threads calling ``embed_one`` send a few requests
  of ~16 texts, not 16 requests. Calls over ``max_batch`` texts are cut into requests sent in
  parallel across the hosts.
* **One model.** At start every reachable host is asked for its model id and width (``GET
  /health`` of a hivemem server, else one probe embedding); hosts that disagree are refused, and
  every answer's ``model`` is checked again. ``model_id`` is what the server reports: a hivemem
  server reports its engine's id (``all-MiniLM-L6-v2/onnx-int8``), the same id a local
  ``hivemem.Embedder`` of that variant has, so a ``Memory`` store and the embedding cache work
  the same through either.
* **Checked vectors.** Each answer must hold one finite, non-zero vector of the right width per
  input; vectors are re-normalised to unit length when a server does not.

Vectors travel as base64 float32 (``encoding_format="base64"``: smaller and much cheaper to parse
than JSON floats, docs/cluster.md#remote-embeddings-hivememembedremote); a server that refuses
base64 is asked for floats instead. Only httpx and numpy are imported: no model runtime, so a
worker process stays small.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from hivemem.embed.queue import MicroBatcher
from hivemem.embed.validate import check_text, check_texts
from hivemem.errors import EmbedderUnavailable
from hivemem.infra.settings import Settings

ENV_URL = "HIVEMEM_EMBEDDER_URL"
ENV_KEY = "HIVEMEM_API_KEY"
MAX_URLS = 64
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30.0
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_NORM_TOLERANCE = 1e-3
_MIN_SPLIT = 4  # a batch is split over several servers only in parts of at least this many texts


class _Host:
    __slots__ = ("base", "down_until", "failures", "float_only", "last_error", "requests", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.base = url[:-3] if url.endswith("/v1") else url  # requests go to {base}/v1/embeddings
        self.down_until = 0.0
        self.failures = 0
        self.float_only = False
        self.last_error = ""
        self.requests = 0

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


def parse_urls(url: str | Sequence[str]) -> list[str]:
    """``"http://a:8080, http://b:8080/v1"`` or a list → base URLs (ValueError naming a bad one)."""
    raw = url.split(",") if isinstance(url, str) else list(url)
    out: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise TypeError(f"url must be a string or a list of strings, got {type(item).__name__}")
        u = item.strip().rstrip("/")
        if not u:
            continue
        if not u.startswith(("http://", "https://")) or len(u) > 2048:
            raise ValueError(f"embedder url {item.strip()!r} must start with http:// or https://")
        if u not in out:
            out.append(u)
    if not out:
        raise ValueError("no embedder url given (expected 'http://host:port', several separated by commas)")
    if len(out) > MAX_URLS:
        raise ValueError(f"at most {MAX_URLS} embedder urls, got {len(out)}")
    return out


class RemoteEmbedder:
    """An ``EmbedderLike`` over one or more OpenAI-compatible embedding servers (module docstring).

    ``timeout``: seconds a call may take in all, failovers included; ``connect_timeout``: seconds
    to open a connection (a dead host is given up this fast). ``model``: the ``model`` field sent
    with each request (needed by OpenAI and some servers; a hivemem server accepts any of its
    names). ``model_id``/``dim``: expected values; refused at start if the servers report others.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        api_key: str | None = None,
        model: str | None = None,
        model_id: str | None = None,
        dim: int | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 3.0,
        max_batch: int = 256,
        max_wait_ms: float = 5.0,
        max_connections: int = 32,
    ) -> None:
        import httpx

        if not timeout > 0 or not connect_timeout > 0:
            raise ValueError("timeout and connect_timeout must be positive numbers of seconds")
        self._hosts = [_Host(u) for u in parse_urls(url)]
        self.model = model
        self.timeout = float(timeout)
        self.max_batch = max_batch
        key = api_key if api_key is not None else Settings.from_env().api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._lock = threading.Lock()
        self._next = 0
        self.retries = 0  # requests resent to another host after a failure
        self.renormalised = 0
        self._model_id: str | None = model_id
        self._dim: int | None = dim
        try:
            self._probe_all()
        except BaseException:
            self._client.close()
            raise
        self._pool: ThreadPoolExecutor | None = None
        self._queue = MicroBatcher(
            self._post_spread,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            alone_on_failure=False,  # a host's failure is not an input's: ask once, not once per call
            name="hivemem-remote-batcher",
        )

    # ---- EmbedderLike ------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        assert self._model_id is not None
        return self._model_id

    @property
    def dim(self) -> int:
        assert self._dim is not None
        return self._dim

    @property
    def urls(self) -> list[str]:
        return [h.url for h in self._hosts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        if len(items) <= self.max_batch:
            vectors: np.ndarray = self._queue.call(items)
            return vectors
        return self._embed_large(items)

    def embed_one(self, text: str) -> np.ndarray:
        one: np.ndarray = self.embed([check_text(text)])[0]
        return one

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        import asyncio

        items = check_texts(texts)
        if items and len(items) <= self.max_batch:
            vectors: np.ndarray = await asyncio.wrap_future(self._queue.submit(items))
            return vectors
        return await asyncio.to_thread(self.embed, items)

    async def aembed_one(self, text: str) -> np.ndarray:
        one: np.ndarray = (await self.aembed([check_text(text)]))[0]
        return one

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "model_id": self._model_id,
            "dim": self._dim,
            "retries": self.retries,
            "renormalised": self.renormalised,
            "queue": {"batches": self._queue.batches, "texts_computed": self._queue.texts_computed},
            "hosts": [
                {
                    "url": h.url,
                    "healthy": h.healthy(now),
                    "requests": h.requests,
                    "failures": h.failures,
                    "last_error": h.last_error,
                }
                for h in self._hosts
            ],
        }

    def close(self) -> None:
        self._queue.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._client.close()

    def __enter__(self) -> RemoteEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing ----------------------------------------------------------------------------

    def _parallel(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=max(2, 2 * len(self._hosts)), thread_name_prefix="hivemem-remote"
                )
            return self._pool

    def _embed_large(self, items: list[str]) -> np.ndarray:
        """Cut a large call into max_batch requests, sent in parallel over the hosts."""
        parts = [items[i : i + self.max_batch] for i in range(0, len(items), self.max_batch)]
        return np.concatenate(list(self._parallel().map(self._post, parts)))

    def _post_spread(self, texts: list[str]) -> np.ndarray:
        """The batcher's batch, split over the healthy hosts so that all of them work on it (16
        threads' single texts → 8 + 8 on two servers, at the same time)."""
        now = time.monotonic()
        healthy = sum(1 for h in self._hosts if h.healthy(now))
        parts = min(healthy, len(texts) // _MIN_SPLIT)
        if parts <= 1:
            return self._post(texts)
        size = -(-len(texts) // parts)
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        return np.concatenate(list(self._parallel().map(self._post, chunks)))

    def _probe_all(self) -> None:
        """Learn (model id, dim) from every host that answers; refuse hosts that disagree."""
        errors: list[str] = []
        seen: dict[tuple[str, int], str] = {}
        for host in self._hosts:
            try:
                seen.setdefault(self._probe(host), host.url)
            except (EmbedderUnavailable, OSError) as exc:
                self._mark_down(host, str(exc))
                errors.append(str(exc))
        if not seen:
            raise EmbedderUnavailable("no embedding server answered: " + "; ".join(errors))
        if len(seen) > 1:
            raise ValueError(
                "the embedding servers serve different models, refusing to mix their vectors: "
                + ", ".join(f"{url} → {m!r} (dim {d})" for (m, d), url in seen.items())
            )
        (model_id, dim), url = next(iter(seen.items()))
        if self._model_id is not None and self._model_id != model_id:
            raise ValueError(f"{url} serves {model_id!r}, not the expected model id {self._model_id!r}")
        if self._dim is not None and self._dim != dim:
            raise ValueError(f"{url} returns {dim}-d vectors, not the expected {self._dim}")
        self._model_id, self._dim = model_id, dim

    def _probe(self, host: _Host) -> tuple[str, int]:
        import httpx

        try:
            r = self._client.get(f"{host.base}/health")
            info = r.json() if r.status_code == 200 else None
        except httpx.HTTPError as exc:
            raise EmbedderUnavailable(f"{host.url}: cannot connect ({type(exc).__name__}: {exc})") from None
        except ValueError:
            info = None
        if isinstance(info, dict) and isinstance(info.get("model"), str) and isinstance(info.get("dim"), int):
            return info["model"], info["dim"]
        # Not a hivemem server: one tiny embedding tells the model and the width.
        vectors, reported = self._request(host, ["hivemem dimension probe"], check_dim=False)
        model = reported or self.model or self._model_id
        if not model:
            raise ValueError(f"{host.url} does not report its model: pass model_id='…' to name it")
        return model, int(vectors.shape[1])

    def _pick(self, tried: set[int]) -> int | None:
        """The next healthy host (round-robin) not yet tried in this round of the call."""
        now = time.monotonic()
        with self._lock:
            n = len(self._hosts)
            for step in range(n):
                i = (self._next + step) % n
                if i not in tried and self._hosts[i].healthy(now):
                    self._next = (i + 1) % n
                    return i
        return None

    def _mark_down(self, host: _Host, error: str) -> None:
        with self._lock:
            host.failures += 1
            host.last_error = error
            backoff = min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2 ** min(host.failures - 1, 16))
            host.down_until = time.monotonic() + backoff

    def _mark_up(self, host: _Host) -> None:
        if host.down_until:
            with self._lock:
                host.down_until = 0.0
                host.failures = 0

    def _post(self, texts: list[str]) -> np.ndarray:
        """One request's worth of texts → vectors, failing over between hosts until ``timeout``.

        Each round tries every healthy host once; when all failed or are backing off, it waits
        for the first one due back (never past the deadline), so a lone server that restarts
        costs its clients a delay, not an error."""
        deadline = time.monotonic() + self.timeout
        tried: set[int] = set()
        errors: list[str] = []
        while True:
            i = self._pick(tried)
            if i is None:
                due = min(h.down_until for h in self._hosts)
                if due >= deadline:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                tried.clear()
                continue
            tried.add(i)
            host = self._hosts[i]
            try:
                vectors, model = self._request(host, texts)
            except EmbedderUnavailable as exc:  # this host is unwell: the others get the call
                self._mark_down(host, str(exc))
                errors.append(str(exc))
                self.retries += 1
                continue
            if model is not None and model != self._model_id:
                raise ValueError(
                    f"{host.url} now serves {model!r}, not {self._model_id!r}: refusing to mix vectors "
                    "of different models"
                )
            self._mark_up(host)
            return vectors
        raise EmbedderUnavailable(
            f"no embedding server could embed {len(texts)} texts within {self.timeout:g} s: "
            + ("; ".join(errors[-len(self._hosts) :]) or "every host is backing off")
        )

    def _request(
        self, host: _Host, texts: list[str], *, check_dim: bool = True
    ) -> tuple[np.ndarray, str | None]:
        """POST one request to one host. Transient failures raise EmbedderUnavailable (try another
        host); answers that no host would do better with raise ValueError/PermissionError."""
        import httpx

        body: dict[str, Any] = {"input": texts, "encoding_format": "float" if host.float_only else "base64"}
        if self.model is not None:
            body["model"] = self.model
        url = f"{host.base}/v1/embeddings"
        host.requests += 1
        try:
            r = self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise EmbedderUnavailable(f"{url}: {type(exc).__name__}: {exc or 'no answer'}") from None
        if r.status_code in _TRANSIENT_STATUS:
            raise EmbedderUnavailable(f"{url} answered HTTP {r.status_code}: {_detail(r)}")
        if r.status_code in (400, 422) and not host.float_only and "base64" in r.text:
            host.float_only = True  # an older server without base64: ask for floats from now on
            return self._request(host, texts, check_dim=check_dim)
        if r.status_code in (401, 403):
            raise PermissionError(f"{url} refused the API key (HTTP {r.status_code}): {_detail(r)}")
        if r.status_code != 200:
            raise ValueError(f"{url} answered HTTP {r.status_code}: {_detail(r)}")
        try:
            payload = r.json()
            data = sorted(payload["data"], key=lambda d: d["index"])
            rows = [_decode(d["embedding"]) for d in data]
            model = payload.get("model")
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderUnavailable(f"{url} sent an answer that is not an embeddings list: {exc}") from None
        return self._check(url, rows, len(texts), check_dim), model if isinstance(model, str) else None

    def _check(self, url: str, rows: list[np.ndarray], n: int, check_dim: bool) -> np.ndarray:
        if len(rows) != n:
            raise EmbedderUnavailable(f"{url} returned {len(rows)} vectors for {n} inputs")
        widths = {len(r) for r in rows}
        if len(widths) != 1 or (check_dim and widths != {self._dim}):
            raise EmbedderUnavailable(
                f"{url} returned vectors of width {sorted(widths)}, expected {self._dim}"
            )
        vectors = np.stack(rows).astype(np.float32, copy=False)
        if not np.isfinite(vectors).all():
            raise EmbedderUnavailable(f"{url} returned vectors with NaN or infinite values")
        norms = np.linalg.norm(vectors, axis=1)
        if (norms == 0).any():
            raise EmbedderUnavailable(f"{url} returned an all-zero vector")
        if (np.abs(norms - 1.0) > _NORM_TOLERANCE).any():
            self.renormalised += int((np.abs(norms - 1.0) > _NORM_TOLERANCE).sum())
            vectors = vectors / norms[:, None]
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _decode(embedding: Any) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    if isinstance(embedding, list):
        return np.asarray(embedding, dtype=np.float32)
    raise TypeError(f"an embedding is {type(embedding).__name__}, expected a list or base64 text")


def _detail(r: Any) -> str:
    try:
        err = r.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    except Exception:
        pass
    return str(r.text)[:300]


def connect_url(url: str | Sequence[str] | None = None, **options: Any) -> RemoteEmbedder:
    """``RemoteEmbedder(url or $HIVEMEM_EMBEDDER_URL, **options)``."""
    url = url if url is not None else Settings.from_env().embedder_url
    if not url:
        raise ValueError(f"no embedder url: pass url='http://host:port' or set {ENV_URL}")
    return RemoteEmbedder(url, **options)
