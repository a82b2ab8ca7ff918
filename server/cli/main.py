"""The ``authpool`` command line: the parser, and how a command ends.

Every command is a thin shell over the library, in a module named for its noun
(:mod:`~authpool.server.cli.accounts`, :mod:`~authpool.server.cli.request`, ...); this module
assembles their parsers and turns how a command ended into an exit status. Errors are one line
on stderr and a non-zero exit status, never a traceback (``AUTHPOOL_DEBUG=1`` shows one for
bugs). Whatever ends a command, a token refresh it sent is waited for before the process exits;
SIGTERM and SIGHUP (a closed terminal, a dropped SSH session) unwind a command like Ctrl-C and exit
143 and 129. Ad-hoc commands must stay fast, so nothing
here imports the MCP SDK except ``serve``/``demo``, and each command's module is imported only
when the parser is built.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from authpool import PoolError
from authpool.server.cli.errors import EXIT_CANCELLED, EXIT_ERROR, EXIT_USAGE, UsageError

__all__ = ["build_parser", "main", "setup_logging"]

log = logging.getLogger("authpool")


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt, so the command unwinds."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script exits with it).

    Whatever ends a command (success, an error, Ctrl-C, SIGTERM, SIGHUP), a token refresh it sent is
    waited for before the process exits: the provider may have rotated the login already, and
    leaving before the answer is stored would log the user out.
    """
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = _on_signals(_raise_terminated)
    try:
        status = _run(argv)
    finally:
        _restore(previous)
    return _after_refreshes(status)


def _run(argv: list[str]) -> int:  # noqa: PLR0911 - one exit status per failure kind
    handler: Callable[[argparse.Namespace], int] | None
    if argv == ["serve"]:
        # An MCP client is waiting for `initialize`: skip building every command's parser.
        handler, args = cmd_serve, argparse.Namespace()
    else:
        parser = build_parser()
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
    try:
        return handler(args)
    except PoolError as e:
        print(f"authpool: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except UsageError as e:
        print(f"authpool: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _tell("authpool: interrupted")
        return EXIT_CANCELLED
    except Terminated as e:
        said = "" if _name(e.signum) == "SIGTERM" else f" ({_name(e.signum)})"
        _tell(f"authpool: terminated{said}")
        return 128 + e.signum
    except BrokenPipeError:
        return EXIT_ERROR  # stdout closed early (e.g. `| head`): nothing left to say
    except Exception as e:  # a bug: keep the one-line contract, offer the traceback on request
        if os.environ.get("AUTHPOOL_DEBUG"):
            raise
        print(
            f"authpool: internal error ({type(e).__name__}); rerun with AUTHPOOL_DEBUG=1 for details",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _tell(line: str) -> None:
    """A line on stderr, if it can still be written: after a hangup the terminal answers EIO, and a
    failed message must not skip the wait for a sent refresh."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _on_signals(handler: Any) -> dict[int, Any]:
    """Install ``handler`` for SIGTERM and, where there is one and it is not ignored (``nohup``),
    SIGHUP (main thread only); returns the previous handlers. SIGHUP's default would end the process
    at once, a sent refresh with it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    hup = getattr(signal, "SIGHUP", None)
    wanted = [signal.SIGTERM, *([hup] if hup is not None and signal.getsignal(hup) is not signal.SIG_IGN else [])]
    return {sig: signal.signal(sig, handler) for sig in wanted}


def _restore(previous: dict[int, Any]) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _after_refreshes(status: int) -> int:
    """Wait for this process's token refreshes that reached their endpoint, then return ``status``.

    A second Ctrl-C or SIGTERM leaves at once: the journal then tells the next process what
    happened, and the error message names it if the provider revoked the login.
    """
    from authpool.auth import Flight, drain, in_flight

    if not in_flight():
        return status

    def say(pending: list[Flight]) -> None:
        names = ", ".join(sorted({f.name for f in pending}))
        _tell(f"authpool: finishing a token refresh ({names}) before exiting: the provider may have rotated "
              "the login already; press Ctrl-C again to leave anyway")

    previous = _on_signals(_raise_terminated)
    try:
        drain(notify=say)
    except (KeyboardInterrupt, Terminated):
        _tell("authpool: left before a token refresh finished; if the provider revoked the login, the next "
              "request says so")
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        os._exit(status or EXIT_CANCELLED)  # the refresh threads must not hold the exit up any longer
    finally:
        _restore(previous)
    return status


def setup_logging() -> None:
    """Log to stderr only (stdout is for results, and for JSON-RPC under ``serve``)."""
    level_name = os.environ.get("AUTHPOOL_LOG", "WARNING").upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("authpool: %(message)s"))
    root = logging.getLogger("authpool")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: each command's module adds its own parser."""
    from authpool.server.cli import (
        accounts,
        credentials,
        demo,
        doctor,
        gateway,
        imports,
        keys,
        log,
        login,
        models,
        request,
        serve,
        status,
        store,
        top,
    )

    parser = argparse.ArgumentParser(
        prog="authpool",
        description="A pool of LLM-provider accounts: rotates on rate limits, refreshes tokens safely.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    accounts.add_parser(sub)
    login.add_parser(sub)
    request.add_parser(sub)
    models.add_parser(sub)
    credentials.add_parser(sub)
    store.add_parser(sub)
    keys.add_parser(sub)
    status.add_parser(sub)
    log.add_parser(sub)
    top.add_parser(sub)
    imports.add_parser(sub)
    serve.add_parser(sub)
    gateway.add_parser(sub)
    demo.add_parser(sub)
    doctor.add_parser(sub)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    """``authpool serve``: the MCP server on stdio or over HTTP (see :mod:`authpool.server.cli.serve`)."""
    from authpool.server.cli.serve import cmd_serve as serve

    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
