"""MCP (Model Context Protocol) awareness: the strict reading of one message (message.py) and the `mcp:` rules
that decide it (rules.py). Pure functions and data, shared by the proxy and the CLI."""
