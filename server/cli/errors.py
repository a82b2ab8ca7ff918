"""How the CLI ends: exit statuses and the error for a command line that cannot be run."""

from __future__ import annotations

__all__ = ["EXIT_CANCELLED", "EXIT_ERROR", "EXIT_USAGE", "UsageError"]

EXIT_ERROR = 1  # a PoolError: one line on stderr
EXIT_USAGE = 2  # as argparse exits on a bad command line
EXIT_CANCELLED = 130  # as a shell reports a command ended by Ctrl-C
# A command ended by SIGTERM or SIGHUP exits 128 + the signal (143, 129), as a shell reports it.


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2)."""
