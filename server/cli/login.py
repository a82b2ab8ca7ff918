"""``authpool login``: add an account by logging in with OAuth.

Three ways, one result: the browser (authorization code + PKCE, redirected back to a listener
on 127.0.0.1), ``--paste`` for a machine no browser can reach (open the URL anywhere, paste back
the address you land on or the code), and ``--device`` (open a URL on any device, enter a code).
URLs, codes and progress go to stderr; the result goes to stdout (``--json`` for scripts). The
URL is always printed, because opening a browser can silently fail.

A browser is opened only where one can show up: never with ``--no-browser`` or on CI, always
when ``BROWSER`` names one, else on Linux only with a display (``DISPLAY``/``WAYLAND_DISPLAY``),
and on macOS/Windows unless this is an SSH session.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import threading
import time
import webbrowser
from typing import TextIO

from authpool import InvalidInput, LoginCancelled, LoginTimeout, Pool
from authpool.accounts import validate_label
from authpool.auth import DeviceEvent, browser_login, device_login, paste_login
from authpool.auth.login import DEFAULT_TIMEOUT, NOTHING_STORED
from authpool.server.cli.errors import EXIT_CANCELLED

__all__ = ["add_parser", "browser_available", "cmd_login"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``login`` to the CLI's subcommands."""
    p = sub.add_parser(
        "login",
        help="add an account by logging in with OAuth (browser, --paste or --device)",
        description="Log in to PROVIDER and add the login to the pool as an account. Logging in again with an "
                    "existing label gives that account new tokens and keeps its history.",
    )
    p.add_argument("provider")
    p.add_argument("--label", help="the account's label (default: the email or user id the provider reports, "
                                   "else account-N)")
    p.add_argument("--namespace", default="default", help="sub-pool for a new account (default: default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--paste", action="store_true",
                      help="no browser can reach this machine: open the URL anywhere, then paste the address you "
                           "are sent back to (or the code)")
    mode.add_argument("--device", action="store_true",
                      help="device code login: open a URL on any device and enter the code shown")
    p.add_argument("--no-browser", action="store_true", help="print the URL but do not open a browser")
    p.add_argument("--timeout", type=float, metavar="S",
                   help=f"seconds to wait for the login (default {DEFAULT_TIMEOUT:g}; --device: until the code "
                        "expires)")
    p.add_argument("--json", action="store_true", help="print {id, name, created} as JSON")
    p.set_defaults(handler=cmd_login)


def cmd_login(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.timeout > 0:
        raise InvalidInput("--timeout must be a positive number of seconds")
    if args.label is not None:
        validate_label(args.label)  # before the user logs in, not after
    pool = Pool.open()
    display = DeviceDisplay(sys.stderr)
    try:
        if args.device:
            result = device_login(pool, args.provider, on_event=display, label=args.label,
                                  namespace=args.namespace, timeout=args.timeout, sleep=display.sleep)
        elif args.paste:
            result = paste_login(pool, args.provider, label=args.label, namespace=args.namespace,
                                 read_pasted=lambda url, uri: read_pasted(url, uri, args.timeout or DEFAULT_TIMEOUT))
        else:
            open_it = not args.no_browser and browser_available()
            timeout = args.timeout or DEFAULT_TIMEOUT
            result = browser_login(pool, args.provider, label=args.label, namespace=args.namespace, timeout=timeout,
                                   on_url=lambda url, uri: show_url(url, uri, timeout, open_it))
    except KeyboardInterrupt:
        display.clear()
        print(f"\nauthpool: error: login cancelled; {NOTHING_STORED}", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        display.clear()
        pool.close()
    if args.json:
        print(json.dumps(result.view()))
    elif result.created:
        print(f"logged in: added {result.account.name} (id {result.account.id})")
    else:
        print(f"logged in again: new tokens for {result.account.name} (id {result.account.id}); its history is kept")
    return 0


# -- browser ------------------------------------------------------------------------------


def browser_available() -> bool:
    """Whether opening a browser can reach a person at this machine (see the module docstring)."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if os.environ.get("BROWSER", "").strip():
        return True
    if sys.platform in ("darwin", "win32"):
        return not os.environ.get("SSH_CONNECTION")
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_browser(url: str) -> bool:
    """Open ``url``; a browser started from here must not write into our stdout (it carries results)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        return webbrowser.open(url)
    except (webbrowser.Error, OSError):
        return False
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def show_url(url: str, redirect_uri: str, timeout: float, open_it: bool) -> None:
    err = sys.stderr
    print(f"To log in, open this URL in a browser:\n\n  {url}\n", file=err)
    if open_it and open_browser(url):
        print("(opened in your browser; if nothing appeared, open the URL above yourself)", file=err)
    print(f"Waiting up to {timeout:g}s for the login to come back to {redirect_uri} (Ctrl-C cancels)...",
          file=err, flush=True)


# -- paste --------------------------------------------------------------------------------


def read_pasted(url: str, redirect_uri: str, timeout: float) -> str:
    """Show the URL and read one pasted line from stdin (or the terminal), within ``timeout``."""
    err = sys.stderr
    print(f"To log in, open this URL in a browser on any machine:\n\n  {url}\n", file=err)
    print(f"After you log in, the browser is sent to {redirect_uri}?code=... and that page will probably not "
          "load. Copy the whole address from the address bar.", file=err)
    print("Paste it (or the code) here: ", end="", file=err, flush=True)
    box: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: box.put(sys.stdin.readline()), daemon=True, name="authpool-paste").start()
    try:
        line = box.get(timeout=timeout)
    except queue.Empty:
        print(file=err)
        raise LoginTimeout(f"nothing was pasted within {timeout:g}s; {NOTHING_STORED} (use --timeout to wait "
                           "longer)") from None
    if not line:
        raise LoginCancelled(f"stdin closed before anything was pasted; {NOTHING_STORED}")
    return line


# -- device -------------------------------------------------------------------------------


class DeviceDisplay:
    """Shows a device login: the URL and code, then a countdown (a terminal) or plain lines (a pipe)."""

    SPINNER = "|/-\\"
    PLAIN_EVERY = 30.0  # seconds between "still waiting" lines when stderr is not a terminal

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._expires = 0.0
        self._code = ""
        self._frame = 0
        self._drawn = False
        self._last_plain = 0.0

    def __call__(self, event: DeviceEvent) -> None:
        auth = event.authorization
        if event.kind == "started":
            self._expires = time.monotonic() + event.remaining
            self._code = auth.user_code
            self._last_plain = time.monotonic()
            lines = [f"To log in, open {auth.verification_uri} on any device and enter the code:", "",
                     f"  code: {auth.user_code}", ""]
            if auth.verification_uri_complete:
                lines.append(f"(or open {auth.verification_uri_complete} directly)")
            lines.append(f"Waiting for approval; the code expires in {_duration(event.remaining)} (Ctrl-C cancels)")
            self.say("\n".join(lines))
        elif event.kind == "slow_down":
            self.say(f"the provider asked authpool to poll less often: now every {event.interval:g}s")
        elif not self.tty and time.monotonic() - self._last_plain >= self.PLAIN_EVERY:
            self._last_plain = time.monotonic()
            self.say(f"still waiting for approval of {self._code} ({_duration(event.remaining)} left)")

    def sleep(self, seconds: float) -> None:
        """Wait, redrawing the countdown on a terminal."""
        if not self.tty:
            time.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._frame += 1
            remaining = max(0.0, self._expires - time.monotonic())
            self.stream.write(f"\r{self.SPINNER[self._frame % 4]} waiting for approval of {self._code}... "
                              f"{_duration(remaining)} left \033[K")
            self.stream.flush()
            self._drawn = True
            time.sleep(min(0.1, left))

    def say(self, text: str) -> None:
        self.clear()
        print(text, file=self.stream, flush=True)

    def clear(self) -> None:
        if self._drawn:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write("\r\033[K")
                self.stream.flush()
            self._drawn = False


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
