"""hivemem over the Model Context Protocol: the memory tools for agents (docs/mcp.md).

``relay`` is ``hivemem mcp``, the stdio process each agent starts (standard library only);
``host`` is the service companion that serves relays on one socket per machine; ``server`` is the
one MCP SDK server behind it and behind ``/mcp`` over HTTP; ``tools`` are the eight tools.
"""
