"""The MCP server: the pool as tools and resources.

- ``server``: ``build_server`` assembles the server; its lifespan hands each tool the ``state``.
- ``state``: what one server keeps between calls (its pool, recent attempts, started logins).
- ``tools``: the seven pool tools (``proxy_request``, ``list_accounts``, ...), module-level functions.
- ``login``: ``start_login`` / ``finish_login``, adding accounts with the device flow.
- ``resources``: ``authpool://accounts`` and ``authpool://providers``.
- ``schemas``: the tools' output models and their conversion from the library's views.
- ``proxy``: what ``proxy_request`` does after the front door: send, collect, shape the answer.
- ``boundary``: how failures reach the client, one readable line each.
- ``stdio``: the stdio wire, answering every JSON-RPC frame; ``serve``: ``authpool serve``.
"""
