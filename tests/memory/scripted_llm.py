"""A real OpenAI-compatible chat-completions server on loopback whose answers come from a script.

NOT a model: the tests decide every answer (``reply(body) -> (status, content)``), so what they
check is hivemem's side of the exchange: what it sends, how it parses, retries and stores.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[dict[str, Any]], tuple[int, str]]


def new_messages(body: dict[str, Any]) -> list[str]:
    """The 'role: content' lines of the NEW MESSAGES section hivemem sent."""
    user = body["messages"][-1]["content"]
    section = re.search(r"## NEW MESSAGES\n(.*?)(?:\n\n## |\Z)", user, re.DOTALL)
    return section.group(1).splitlines() if section else []


def existing_memories(body: dict[str, Any]) -> list[str]:
    user = body["messages"][-1]["content"]
    section = re.search(r"## EXISTING MEMORIES\n(.*?)\n\n## ", user, re.DOTALL)
    return [m["text"] for m in json.loads(section.group(1))] if section else []


def one_fact_per_user_line(body: dict[str, Any]) -> tuple[int, str]:
    """The default script: every 'user…: text' line becomes the fact 'User said: text'."""
    facts = [
        {"text": f"User said: {line.split(': ', 1)[1]}", "attributed_to": "user"}
        for line in new_messages(body)
        if line.startswith("user")
    ]
    return 200, json.dumps({"memory": facts})


class ScriptedLLM:
    def __init__(self, reply: Reply = one_fact_per_user_line, delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with llm._lock:
                    llm.requests.append(body)
                    llm.headers.append(dict(self.headers))
                    llm.in_flight += 1
                    llm.max_in_flight = max(llm.max_in_flight, llm.in_flight)
                try:
                    time.sleep(llm.delay)
                    status, content = llm.reply(body) if self.path == "/v1/chat/completions" else (404, "")
                finally:
                    with llm._lock:
                        llm.in_flight -= 1
                answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                data = json.dumps(answer if status == 200 else {"error": {"message": content}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def config(self, **options: Any) -> dict[str, Any]:
        """Mem0's llm config pointing at this server."""
        return {"provider": "openai", "config": {"model": "scripted", "openai_base_url": self.url, **options}}


@contextmanager
def scripted_llm(reply: Reply = one_fact_per_user_line, delay: float = 0.0) -> Iterator[ScriptedLLM]:
    llm = ScriptedLLM(reply, delay)
    llm.thread.start()
    try:
        yield llm
    finally:
        llm.server.shutdown()
        llm.server.server_close()
