"""One Mem0 process whose embedder is hivemem's shared service (the recipe of docs/integrations.md).

Run as ``python mem0_worker.py URL DIR NAME TEXTS_JSON``: adds the texts (infer=False) for user
NAME, updates the second, deletes the third, searches, and prints one JSON line: the ids, the top
hit, the stored vectors, and which model runtimes this process imported (none should be).
"""

from __future__ import annotations

import json
import os
import sys


def mem0_config(url: str, directory: str, name: str) -> dict:
    """Mem0 on hivemem's model: the openai embedder pointed at `hivemem serve --http`."""
    return {
        "embedder": {
            "provider": "openai",
            "config": {
                "model": "all-MiniLM-L6-v2",
                "openai_base_url": f"{url}/v1",
                "api_key": "unused-on-loopback",
                "embedding_dims": 384,
            },
        },
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "path": f"{directory}/qdrant-{name}",
                "collection_name": "mem0",
                "embedding_model_dims": 384,
                "on_disk": True,
            },
        },
        "llm": {"provider": "openai", "config": {"api_key": "unused-infer-is-false"}},
        "history_db_path": f"{directory}/history-{name}.db",
    }


def main() -> None:
    os.environ["MEM0_TELEMETRY"] = "False"
    from mem0 import Memory  # here: the tests import this module for mem0_config only

    url, directory, name, texts_json = sys.argv[1:5]
    texts = json.loads(texts_json)
    m = Memory.from_config(mem0_config(url, directory, name))
    ids = []
    for i, text in enumerate(texts):
        meta = {"category": "test", "n": i} if i % 2 else None
        ids.append(m.add(text, user_id=name, metadata=meta, infer=False)["results"][0]["id"])
    m.update(ids[1], text=texts[1] + " Updated later.")
    m.delete(ids[2])
    top = m.search(texts[0], filters={"user_id": name}, top_k=3)["results"][0]["memory"]
    points = m.vector_store.client.retrieve("mem0", ids, with_vectors=True)
    vectors = {}
    for p in points:
        vec = p.vector
        if isinstance(vec, dict):  # named vectors: the dense one has the empty name
            vec = vec.get("", next(v for v in vec.values() if isinstance(v, list)))
        vectors[str(p.id)] = vec
    m.close()
    loaded = [mod for mod in ("onnxruntime", "torch", "sentence_transformers") if mod in sys.modules]
    print(json.dumps({"ids": ids, "top": top, "vectors": vectors, "model_runtimes": loaded}))


if __name__ == "__main__":
    main()
