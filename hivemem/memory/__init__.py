"""The Mem0-compatible memory store (``hivemem.Memory``, ``hivemem.AsyncMemory``)."""
