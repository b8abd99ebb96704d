"""hivemem.connect(url=...): embeddings from other hosts' `hivemem serve --http`, with failover."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from cluster_helpers import ROOT, free_port, kill_group, start_http_service

import hivemem
from hivemem.embed.corpus import sentences
from hivemem.embed.remote import EmbedderUnavailable, RemoteEmbedder

pytestmark = pytest.mark.slow
KEY = "cluster-test-key-1"


@pytest.fixture(scope="module")
def servers() -> Iterator[list[dict]]:
    """Two `hivemem serve --http` processes (API key required), started side by side."""
    started: list[dict] = []
    try:
        for _ in range(2):
            proc, url, directory = start_http_service(args=["--api-key", KEY])
            started.append({"proc": proc, "url": url, "dir": directory})
        yield started
    finally:
        for s in started:
            kill_group(s["proc"])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_remote_vectors_and_model_id_match_the_local_engine(servers, tmp_path, monkeypatch) -> None:
    texts = sentences(40, seed=301)
    with (
        hivemem.Embedder(cache=False) as local,
        hivemem.connect(url=[s["url"] for s in servers], api_key=KEY) as emb,
    ):
        assert isinstance(emb, RemoteEmbedder) and isinstance(emb, hivemem.EmbedderLike)
        assert (emb.model_id, emb.dim) == (local.model_id, local.dim)  # one id: stores work both ways
        remote = emb.embed(texts)
        assert remote.dtype == np.float32 and remote.shape == (40, local.dim)
        assert _cos(remote, local.embed(texts)).min() > 0.999
        assert np.allclose(np.linalg.norm(remote, axis=1), 1.0, atol=1e-5)
        assert emb.embed([]).shape == (0, local.dim)
        # A Memory store written with the local engine is searched through the remote servers.
        path = tmp_path / "mem.sqlite"
        with hivemem.Memory(path, embedder=local) as mem:
            mem.add("Julia is allergic to peanuts", user_id="u")
    monkeypatch.setenv("HIVEMEM_EMBEDDER_URL", ",".join(s["url"] for s in servers))
    monkeypatch.setenv("HIVEMEM_API_KEY", KEY)
    with hivemem.Memory(path) as mem:
        hits = mem.search("what food allergies?", user_id="u")["results"]
        assert isinstance(mem.embedder, RemoteEmbedder)
        assert hits and "peanuts" in hits[0]["memory"]


def test_concurrent_single_calls_share_few_requests(servers) -> None:
    texts = sentences(320, seed=302)
    emb = RemoteEmbedder(servers[0]["url"], api_key=KEY)
    try:
        out: dict[str, np.ndarray] = {}

        def one_thread(part: list[str]) -> None:
            for t in part:
                out[t] = emb.embed_one(t)

        threads = [threading.Thread(target=one_thread, args=(texts[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(out) == 320
        requests = emb.stats()["hosts"][0]["requests"]
        assert requests <= 320 / 4, f"{requests} HTTP requests for 320 single calls from 16 threads"
        together = emb.embed(texts[:20])  # same vectors as one batch call
        assert _cos(np.stack([out[t] for t in texts[:20]]), together).min() > 0.999
    finally:
        emb.close()


def test_bad_configuration_fails_clearly(servers) -> None:
    with pytest.raises(ValueError, match="must start with http"):
        RemoteEmbedder("gpu-1:8080")
    with pytest.raises(ValueError, match="no embedder url"):
        RemoteEmbedder(" , ")
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EmbedderUnavailable, match=dead.replace(".", r"\.")):
        RemoteEmbedder(dead, connect_timeout=1)
    with pytest.raises(PermissionError, match="refused the API key"):
        RemoteEmbedder(servers[0]["url"], api_key="wrong-key").embed(["x"])
    with pytest.raises(ValueError, match="not the expected model id"):
        RemoteEmbedder(servers[0]["url"], api_key=KEY, model_id="some-other-model")
    with RemoteEmbedder(servers[0]["url"], api_key=KEY) as emb, pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.embed(["ok", 3])  # type: ignore[list-item]


class _Odd(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose vectors are wrong in the way its path says."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # no /health: the client probes with one embedding
        self.send_error(404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = len(body["input"])
        kind = self.server.kind  # type: ignore[attr-defined]
        if kind == "floats-only" and body.get("encoding_format") == "base64":
            self._send(400, {"error": {"message": "encoding_format base64 is not supported"}})
            return
        vec = np.full(8, 0.5, dtype=np.float32)  # norm 1.414: not unit length
        if kind == "nan" and self.server.calls:  # type: ignore[attr-defined]
            vec[3] = np.nan
        self.server.calls += 1  # type: ignore[attr-defined]
        data = [{"object": "embedding", "index": i, "embedding": vec.tolist()} for i in range(n)]
        self._send(200, {"object": "list", "data": data, "model": "odd-model"})

    def _send(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.mark.parametrize("kind", ["floats-only", "nan"])
def test_vectors_from_other_servers_are_checked(kind: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    server.kind, server.calls = kind, 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with RemoteEmbedder(f"http://127.0.0.1:{server.server_port}", timeout=2) as emb:
            assert (emb.model_id, emb.dim) == ("odd-model", 8)
            if kind == "nan":
                with pytest.raises(EmbedderUnavailable, match="NaN"):
                    emb.embed(["a", "b"])
            else:  # asked for floats after the refusal; not unit length → re-normalised
                vecs = emb.embed(["a", "b"])
                assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0) and emb.stats()["renormalised"] >= 2
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_killed_mid_run_fails_no_call_and_is_used_again_once_back(servers) -> None:
    texts = sentences(1200, seed=303)
    emb = RemoteEmbedder([s["url"] for s in servers], api_key=KEY, timeout=60)
    victim = servers[1]
    done: list[int] = [0]
    failures: list[str] = []

    def one_thread(part: list[str]) -> None:
        for t in part:
            try:
                emb.embed_one(t)
                done[0] += 1
            except Exception as exc:
                failures.append(repr(exc))

    try:
        threads = [threading.Thread(target=one_thread, args=(texts[i::16],)) for i in range(16)]
        for t in threads:
            t.start()
        while done[0] < 200 and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        kill_group(victim["proc"])  # SIGKILL, with requests in flight
        for t in threads:
            t.join()
        assert failures == [] and done[0] == 1200
        hosts = emb.stats()["hosts"]
        assert hosts[1]["failures"] >= 1 and "Connect" in hosts[1]["last_error"]
        assert emb.retries >= 1

        # The same server comes back on the same port: after its backoff it gets requests again.
        port = int(victim["url"].rsplit(":", 1)[1])
        victim["proc"], _, _ = start_http_service(port=port, args=["--api-key", KEY])
        before = hosts[1]["requests"]
        deadline = time.monotonic() + 90
        while emb.stats()["hosts"][1]["requests"] == before:
            assert time.monotonic() < deadline, "the restarted server never got a request"
            emb.embed(sentences(8, seed=int(time.monotonic() * 1000) % 100000))
            time.sleep(0.2)
        assert emb.stats()["hosts"][1]["healthy"]
    finally:
        emb.close()


def test_client_stays_light() -> None:
    """connect(url=...) loads neither onnxruntime nor tokenizers nor torch in the worker."""
    code = (
        "import sys, hivemem\n"
        "from hivemem.embed import remote\n"
        "print(sorted(m for m in ('onnxruntime', 'tokenizers', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
