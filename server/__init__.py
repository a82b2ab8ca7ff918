"""authpool's server side: the MCP server, the command line and the loopback provider.

- ``front``: the request front door every way into the pool shares (method, origin, header and
  body checks), used by ``authpool request``, MCP ``proxy_request`` and the coming HTTP gateway.
- ``mcp``: the MCP server (tools, resources, the stdio transport, ``authpool serve``).
- ``cli``: the ``authpool`` command line, one module per command noun.
- ``loopback``: a fake LLM provider on 127.0.0.1 for the demo and the tests.
"""
