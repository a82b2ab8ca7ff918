"""``python -m authpool.server.cli``: the ``authpool`` command."""

import sys

from authpool.server.cli.main import main

sys.exit(main())
