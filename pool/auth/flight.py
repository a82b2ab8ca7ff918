"""Flights: refreshes running in threads of their own, and what a process waits for before it exits.

A refresh that has sent its token request may already have rotated the login at the provider:
losing its answer logs the user out. So a refresh never runs in its caller's thread, where a
cancelled task, a passed deadline or Ctrl-C could interrupt it. It runs as a *flight*: a
non-daemon thread that callers only wait on. A process about to exit calls :func:`drain`, which
waits for the flights that have sent and stops the others from sending at all. A program that
uses the library and is told to stop (SIGTERM, SIGHUP) waits for them too before the signal ends
it (:func:`guard_exit_signals`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from authpool.accounts.secret import Secret
from authpool.errors import RefreshError

__all__ = ["Flight", "RefreshMode", "Renewal", "drain", "exiting", "guard_exit_signals", "in_flight", "launch",
           "mark_sending"]

log = logging.getLogger("authpool")

RefreshMode = Literal["force", "mandatory", "advisory"]


@dataclass(frozen=True)
class Renewal:
    """A secret fresh enough to use, and whether this call renewed it at the token endpoint.

    ``performed`` is False when another process (or an earlier caller) had already renewed it:
    a 401 with a token someone else minted proves nothing about the login, while a 401 with the
    token this call just minted means the login itself is refused.
    """

    secret: Secret
    performed: bool


@dataclass(eq=False)
class Flight:
    """One refresh of one account, running in its own thread; callers wait on ``future``.

    The result is a :class:`Renewal`, or None when an advisory refresh found another one
    running (keep using the current token).
    """

    account_id: str
    name: str  # provider/label, for messages
    seen_generation: int
    mode: RefreshMode
    started: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future[Renewal | None] = field(default_factory=concurrent.futures.Future)
    sent: bool = False  # the token request may have left: the flight must land before the process exits


# Every flight of this process, whatever pool started it: what `drain` waits for at exit.
_guard = threading.Lock()
_flights: set[Flight] = set()
# Set once the process is exiting (drain, or a signal: see _land_then_exit). A plain flag, not an
# Event: a signal handler sets it, and must take no lock the interrupted thread may be holding.
_exit_requested = False
_signals_guarded = False


def launch(flight: Flight, body: Callable[[], Renewal | None], on_done: Callable[[], None]) -> None:
    """Run ``body`` as ``flight`` in a thread of its own; its outcome lands in ``flight.future``."""
    flight.future.set_running_or_notify_cancel()  # a running flight cannot be cancelled
    with _guard:
        _flights.add(flight)

    def fly() -> None:
        try:
            result = body()
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits, in their thread
            flight.future.set_exception(e)
        else:
            flight.future.set_result(result)
        finally:
            with _guard:
                _flights.discard(flight)
            on_done()

    # Not a daemon: an interpreter that exits (a script's last line, Ctrl-C) waits for it.
    threading.Thread(target=fly, name=f"authpool-refresh-{flight.account_id}", daemon=False).start()


def mark_sending(flight: Flight | None, what: str) -> None:
    """Note that ``flight`` is about to send its token request, unless the process is exiting.

    Raises:
        RefreshError: the process is exiting: nothing may leave that it could not wait for.
    """
    with _guard:
        if _exit_requested:
            raise RefreshError(f"{what} was not renewed: this process is exiting")
        if flight is not None:
            flight.sent = True


def exiting() -> bool:
    """Whether :func:`drain` was called for the process's exit (flights waiting for a lock give up)."""
    return _exit_requested


def in_flight() -> list[Flight]:
    """This process's refreshes that have not finished."""
    with _guard:
        return [f for f in _flights if not f.future.done()]


def drain(timeout: float | None = None, *, notify: Callable[[list[Flight]], None] | None = None,
          notify_after: float = 1.0, final: bool = True) -> bool:
    """Wait for this process's refreshes that have sent their token request; True if all landed.

    Called before a process exits: a refresh that reached the token endpoint may already have
    rotated the login there, so leaving before its answer is stored would log the user out.
    ``final`` (the default) also stops flights that have not sent yet from sending at all.
    ``notify`` is called once, with the flights still running, if they take ``notify_after``
    seconds or more.
    """
    global _exit_requested  # noqa: PLW0603 - the process's one flag
    if final:
        with _guard:
            _exit_requested = True
    deadline = None if timeout is None else time.monotonic() + timeout
    notify_at = time.monotonic() + notify_after if notify is not None else None
    while True:
        with _guard:
            pending = [f for f in _flights if f.sent and not f.future.done()]
        if not pending:
            return True
        now = time.monotonic()
        if notify is not None and notify_at is not None and now >= notify_at:
            notify_at = None
            notify(pending)
        # Short slices: the flight set changes, and a second Ctrl-C must be seen promptly.
        slice_ = 0.1 if deadline is None else min(0.1, deadline - now)
        if slice_ <= 0:
            return False
        concurrent.futures.wait([f.future for f in pending], timeout=slice_)


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's refresh threads: their flights are not its to wait for
    (a drain would wait forever, a signal would be held for them), and another thread may have held
    the guard at the fork."""
    global _guard  # noqa: PLW0603 - module state, replaced once in a new process
    _guard = threading.Lock()
    _flights.clear()
    if _exit_thread is not None:  # the parent's thread is not the child's; its handlers are inherited
        _start_exit_thread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def guard_exit_signals() -> None:
    """Let a program that uses authpool as a library finish a sent refresh when it is told to stop.

    SIGTERM (``docker stop``, systemd, ``kill``) and SIGHUP (a closed terminal) end a process at
    once by default: a refresh whose token request has left would be lost, and the next refresh
    would present the spent token, which revokes the login. Each of the two whose handler is still
    the default gets one that restores the default and:

    - with no refresh running, sends the signal again: the program ends as it would have;
    - otherwise hands the signal to a thread kept for it (``authpool-exit``), which stops new token
      calls, waits for the sent refreshes to be stored, and then sends the signal again. The
      program runs on meanwhile, undisturbed, and still ends by the signal.

    A second signal ends the process at once. A handler the program sets is its own (set before,
    this leaves it alone; set after, it replaces this one); the CLI, ``serve`` and the gateway drain
    refreshes themselves. Python runs signal handlers in the main thread between two bytecodes, so
    a main thread inside a long C call (``os.system``, a C extension) takes the signal when that
    call returns. Only the main thread may set handlers: called from another, this does nothing
    (the next call from the main thread does it). Not on Windows.
    """
    global _signals_guarded  # noqa: PLW0603 - once per process
    if _signals_guarded or sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return
    _signals_guarded = True
    guarded = False
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _land_then_exit)
                guarded = True
        except (ValueError, OSError):  # pragma: no cover - an embedded interpreter that refuses
            continue
    if guarded:
        _start_exit_thread()


# The signals _land_then_exit hands on. SimpleQueue.put may be called from a signal handler (it is
# reentrant and takes no lock the interrupted thread could hold).
_exit_signals: queue.SimpleQueue[int] = queue.SimpleQueue()
_exit_thread: threading.Thread | None = None


def _land_then_exit(signum: int, frame: object) -> None:
    """The signal handler: takes no lock (the main thread, which runs it, may hold any)."""
    global _exit_requested  # noqa: PLW0603 - the process's one flag
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once, as by default
    _exit_requested = True  # from now on no token request leaves (mark_sending)
    # Copying the set is one step under the interpreter lock. Any flight still running counts, sent
    # or not: one may be inside mark_sending, past the flag, about to mark itself sent; the exit
    # thread's drain takes the guard, so it sees that flight sent (and waits) or refused.
    if not any(not f.future.done() for f in _flights.copy()) or _exit_thread is None:
        signal.raise_signal(signum)  # nothing to wait for: end as the default would
        return
    _exit_signals.put(signum)


def _exit_after_landing() -> None:
    """The ``authpool-exit`` thread: wait for the sent refreshes, then let the signal end the process."""
    while True:
        signum = _exit_signals.get()
        names = sorted({f.name for f in in_flight() if f.sent})
        if names:
            log.warning("%s: finishing a token refresh (%s) before exiting: the provider may have rotated the "
                        "login already; send it again to leave anyway", signal.Signals(signum).name, ", ".join(names))
        drain()
        os.kill(os.getpid(), signum)  # the default action, restored by the handler


def _start_exit_thread() -> None:
    global _exit_thread  # noqa: PLW0603 - one per process
    _exit_thread = threading.Thread(target=_exit_after_landing, name="authpool-exit", daemon=True)
    _exit_thread.start()
