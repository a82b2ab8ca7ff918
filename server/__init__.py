"""authpool's MCP server and command-line interface."""
