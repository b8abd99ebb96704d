"""``python -m hivemem.mcp``: the same relay as ``hivemem mcp`` (stdio MCP server for one agent)."""

import sys

from hivemem.mcp.relay import main

sys.exit(main())
