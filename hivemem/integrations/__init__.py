"""Adapters to the frameworks people already use: ``hivemem.integrations.langchain`` (LangChain
``Embeddings`` and ``VectorStore``) and ``hivemem.integrations.llamaindex`` (a LlamaIndex
``BaseEmbedding``). Each needs its own optional extra (``hivemem[langchain]``,
``hivemem[llamaindex]``) and imports only hivemem's public API, so it can never reach into a part
that another change may move. See docs/integrations.md.
"""
