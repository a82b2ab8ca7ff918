"""The ``authpool`` command line.

- ``main``: ``main()``, the parser assembled from the command modules, exit statuses, SIGTERM.
- ``accounts``, ``login``, ``imports``, ``request``, ``status``, ``credentials`` (``secrets move``),
  ``doctor``, ``demo``: one module per command, each with its ``add_parser``.
- ``format``: times, tables and account states for people; ``errors``: exit statuses, ``UsageError``.
"""
