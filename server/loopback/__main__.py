"""Entry point for ``python -m authpool.server.loopback`` (see ``cli.main``)."""

from __future__ import annotations

import sys

from authpool.server.loopback.cli import main

if __name__ == "__main__":
    sys.exit(main())
