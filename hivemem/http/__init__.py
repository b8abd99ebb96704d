"""The HTTP application (``hivemem serve --http``; the ``server`` extra): the OpenAI-compatible
embeddings route, the Mem0-style memory REST API and the agent stream, composed from the parts.

``app.create_app`` builds the FastAPI app from an engine (any ``EmbedderLike``), an optional
``hivemem.Memory`` (``memory_routes``) and an optional ``WorkerPool`` (``agent_routes``); ``auth``
and ``keys`` decide what each API key may touch, ``limits`` bounds request size and read time,
``errors`` maps hivemem's error types to status codes, ``prometheus`` serves ``/metrics`` and
``openapi`` publishes the spec. Importing this package imports no FastAPI: only its modules do.
"""
