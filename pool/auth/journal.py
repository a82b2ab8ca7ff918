"""The refresh journal: which process has a token call in flight, and what a leftover record means.

Before a refresh token leaves for the token endpoint, the refreshing process records (in the
store, no secret) that it is renewing the account from generation G. The update that stores the
new generation removes the record. A record found later under the account's refresh lock is a
refresh whose outcome never landed: the owner was killed mid-call (SIGKILL, power loss; nothing
else can stop a refresh once sent), or the call got no answer. If the provider rotated the
login meanwhile, the stored refresh token is dead and presenting it revokes the login; nothing
better exists than trying it once, but the record lets the error say exactly what happened.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time

from authpool.accounts.model import RefreshJournal

__all__ = ["describe_interrupted", "new_record", "owner_alive"]

# Added to a token call's time limit before its request counts as unable to reach the provider.
_SETTLE_MARGIN = 10.0


def new_record(from_generation: int, *, limit: float = 180.0, earlier: RefreshJournal | None = None,
               now: float | None = None) -> RefreshJournal:
    """The journal record of a refresh this process is about to send.

    ``limit`` is how long the token call may take; ``earlier`` an interrupted refresh it
    supersedes (kept, one level deep, so an explanation names the refresh that lost the rotation);
    ``now`` the store's clock (a team store's is the database's, so every machine reads the
    record's deadline alike).
    """
    now = time.time() if now is None else now
    if earlier is not None:
        earlier = earlier.model_copy(update={"earlier": None})
    return RefreshJournal(
        pid=os.getpid(),
        host=_host(),
        command=_command(),
        started_at=now,
        from_generation=from_generation,
        process_start=_process_start(os.getpid()),
        deadline=now + limit + min(_SETTLE_MARGIN, limit),
        earlier=earlier,
    )


def owner_alive(record: RefreshJournal) -> bool | None:
    """Whether the record's owner still runs; None when that cannot be told (another host)."""
    if record.host != _host():
        return None
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return None
    if record.process_start is not None:
        start = _process_start(record.pid)
        if start is not None and start != record.process_start:
            return False  # the pid was reused by a later process
    return True


def describe_interrupted(record: RefreshJournal) -> str:
    """What happened to the refresh the record names, in words for the person who must log in again.

    A record that superseded an earlier interrupted refresh names that one first: its rotation
    is the one that can have been lost.
    """
    if record.earlier is not None:
        return f"{_describe(record.earlier)} (and {_describe(record)})"
    return _describe(record)


def _describe(record: RefreshJournal) -> str:
    at = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(record.started_at))
    who = f"process {record.pid}" + (f" ({record.command})" if record.command else "")
    if record.host != _host():
        who += f" on {record.host}"
    alive = owner_alive(record)
    if record.outcome_unknown and alive is not False:
        return f"a refresh sent by {who} at {at} got no answer from the token endpoint"
    if alive is False or record.outcome_unknown:
        return f"a refresh was interrupted when {who} was killed during its token call (started {at})"
    return f"a refresh by {who} (started {at}) did not record its outcome"


def _host() -> str:
    return socket.gethostname() or "localhost"


def _command() -> str:
    """What this process is, for messages: ``authpool request``, ``python -c``, ``python -m app``, ``app.py``."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if prog == "-c":
        prog = "python -c"
    elif prog in ("__main__.py", "cli.py", "-m"):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = spec.name.removesuffix(".__main__") if spec is not None else ""
        prog = "authpool" if not name or name.startswith("authpool") else f"python -m {name}"
    sub = next((a for a in sys.argv[1:3] if a and not a.startswith("-")), "")
    return f"{prog} {sub}".strip()[:60]


def _process_start(pid: int) -> str | None:
    # Linux: field 22 of /proc/PID/stat is the start time in clock ticks since boot. The
    # command name (field 2) may contain spaces and parentheses, so split after its last ')'.
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    return None
