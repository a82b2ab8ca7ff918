"""The writer thread: a daemon thread that runs a write whenever it is kicked.

The event log and the usage counters both queue in memory on the request's path and leave the
disk to a thread of their own, so no request waits for a write. Both need the same small
machine: start the thread on first use (again if a write killed it), let any number of kicks
before it runs mean one write, and stop after the current write so the owner can write what is
left itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Writer"]


class Writer:
    """Runs ``write`` on a daemon thread named ``name`` after each :meth:`kick`.

    ``on_start`` runs once, when the thread is first started (the event log registers its
    close at exit there, so a command that exits without closing its pool still writes).
    ``linger``: seconds the thread waits after a kick before it writes, so a burst of kicks is
    one write. The event log is kicked on every request; woken each time, its thread took the
    interpreter from the requests for a write of one line. :meth:`stop` cuts the wait short.
    """

    def __init__(self, write: Callable[[], None], *, name: str, on_start: Callable[[], None] | None = None,
                 linger: float = 0.0) -> None:
        self._write = write
        self._linger = linger
        self._stopping = threading.Event()
        self._name = name
        self._on_start = on_start
        self._guard = threading.Lock()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def kick(self) -> bool:
        """Have the thread write soon, starting it if it is not running; returns at once.

        False once :meth:`stop` was called: nothing will write, the caller writes itself.
        """
        with self._guard:
            if self._stopped:
                return False
            if self._thread is None or not self._thread.is_alive():
                if self._thread is None and self._on_start is not None:
                    self._on_start()
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._kick.set()
        return True

    def stop(self) -> None:
        """End the thread after its current write, and wait for it (unless called from it)."""
        with self._guard:
            self._stopped = True
            thread = self._thread
        self._stopping.set()
        self._kick.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            self._kick.wait()
            if self._linger:
                self._stopping.wait(self._linger)
            self._kick.clear()
            if self._stopped:
                return
            self._write()
