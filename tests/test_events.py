"""The event log: what requests, refreshes and commands write to ``events.jsonl``, and ``authpool log``.

Requests go to a real loopback provider; other processes are real ``authpool`` subprocesses; the
follow test waits for the line itself (generous deadline), never for a time. Every test that mints
secrets scans the log for them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from authpool import RequestFailed
from authpool.events import Event, EventFilter, EventLog, follow_events, read_events
from tests.conftest import REPO, Follow, LoopbackPool, assert_no_secrets, home_texts, run_cli

CHAT = "/v1/chat/completions"
BODY = {"model": "loopback-small", "messages": [{"role": "user", "content": "hi"}]}
DEADLINE = 60.0


def events_of(acme: LoopbackPool) -> list[dict[str, object]]:
    acme.pool.events.flush()
    path = acme.home / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_rotated_request_logs_each_attempt_and_the_cooldown(acme: LoopbackPool) -> None:
    """a answers 429: an attempt rate_limited with its deadline, a cooldown event, then b's ok attempt."""
    acme.add_api_key("a")
    acme.add_api_key("b")
    acme.lp.set_rate_limit("a", 0, retry_after=120)
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).status_code == 200
    docs = [d for d in events_of(acme) if d["kind"] in {"attempt", "cooldown"}]
    assert [(d["kind"], d["account"], d["outcome"], d.get("status")) for d in docs] == [
        ("attempt", "acme/a", "rate_limited", 429), ("cooldown", "acme/a", "rate_limited", 429),
        ("attempt", "acme/b", "ok", 200)]
    attempt, cooldown, ok = docs
    assert attempt["until"] == cooldown["until"] and float(cooldown["until"]) > time.time() + 60  # type: ignore[arg-type]
    assert ok["model"] == "loopback-small" and float(ok["latency_ms"]) >= 0  # type: ignore[arg-type]
    assert {d["pid"] for d in docs} == {os.getpid()}
    assert_no_secrets(home_texts(acme.home), acme.secrets())


def test_a_refresh_and_a_dead_login_are_logged(acme: LoopbackPool) -> None:
    """An expired token renewed (refresh renewed, with its latency); a revoked login: invalid_grant, needs-reauth."""
    acme.add_oauth("a", expires_in=-60)
    with acme.pool.sync_client("acme") as client:
        assert client.post(CHAT, json=BODY).status_code == 200
    refresh = [d for d in events_of(acme) if d["kind"] == "refresh"]
    assert [(d["account"], d["outcome"]) for d in refresh] == [("acme/a", "renewed")]
    acme.lp.revoke_refresh_tokens("a")
    acme.lp.expire_access_tokens("a")
    with acme.pool.sync_client("acme") as client, pytest.raises(RequestFailed):
        client.post(CHAT, json=BODY)
    docs = events_of(acme)
    assert ("refresh", "invalid_grant") in {(d["kind"], d.get("outcome")) for d in docs}
    assert ("state", "needs-reauth") in {(d["kind"], d.get("outcome")) for d in docs}
    assert_no_secrets(home_texts(acme.home), acme.secrets())


def test_commands_log_their_state_changes_across_processes(acme: LoopbackPool) -> None:
    """add, disable, enable, reset, remove from the CLI: each one line, written by the CLI's process."""
    acme.add_api_key("a")
    for args in (["disable", "acme/a"], ["enable", "acme/a"], ["reset", "acme/a"], ["remove", "acme/a"]):
        r = run_cli("accounts", *args)
        assert r.returncode == 0, r.stderr
    docs = [d for d in events_of(acme) if d["kind"] in {"state", "login"}]
    assert [d["outcome"] for d in docs] == ["added", "disabled", "enabled", "reset", "removed"]
    assert len({d["pid"] for d in docs[1:]}) == 4 and os.getpid() not in {d["pid"] for d in docs[1:]}


def test_authpool_log_filters_and_prints_json_lines(acme: LoopbackPool) -> None:
    """--account (label or id), --provider, --kind, -n and --json; people get one line per event."""
    a = acme.add_api_key("a")
    acme.add_api_key("b")
    acme.pool.set_enabled("acme/b", False)
    acme.pool.events.flush()
    r = run_cli("log", "--json", "--account", "acme/b")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["outcome"] for line in r.stdout.splitlines()] == ["added", "disabled"]
    r = run_cli("log", "--json", "--account", a.id)
    assert [json.loads(line)["account"] for line in r.stdout.splitlines()] == ["acme/a"]
    r = run_cli("log", "--provider", "acme", "-n", "1")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1
    assert "state" in r.stdout and "acme/b" in r.stdout and "disabled" in r.stdout
    r = run_cli("log", "--kind", "refresh")
    assert r.returncode == 0 and r.stdout == "" and "no events match" in r.stderr
    r = run_cli("log", "--provider", "nosuch", "--since", "10m")
    assert r.returncode == 0 and r.stdout == ""


@pytest.mark.parametrize("since", ["yesterday", "10 parsecs", "-5m"])
def test_a_since_that_is_no_time_is_one_clear_line(home: Path, since: str) -> None:
    r = run_cli("log", f"--since={since}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--since" in r.stderr
    assert "Traceback" not in r.stderr


def test_authpool_log_follow_shows_another_process_s_change(acme: LoopbackPool) -> None:
    """`authpool log -f` prints a disable made by another CLI process, as it happens."""
    acme.add_api_key("a")
    proc = subprocess.Popen([sys.executable, "-m", "authpool.server.cli", "log", "-f", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    followed = Follow(proc.stdout, '"disabled"')
    try:
        # -f prints the existing events first: once "added" is out, the follower is reading.
        deadline = time.monotonic() + DEADLINE
        while not any('"added"' in line for line in followed.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run_cli("accounts", "disable", "acme/a").returncode == 0
        assert followed.seen.wait(DEADLINE), f"the disable never reached `authpool log -f`: {followed.lines}"
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)


def test_the_log_rotates_at_its_size_and_keeps_every_line_whole(tmp_path: Path) -> None:
    """A small size limit: the files rotate (.1, .2), at most ``keep`` of them, each line a whole event."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=4000, keep=2)
    for n in range(400):
        log.emit(Event("attempt", "acme", f"acme/k{n}", f"id{n}", "ok", 200, 1.0))
        if n % 50 == 0:
            log.flush()
    log.close()
    files = {p.name for p in tmp_path.glob("events.jsonl*") if ".lock" not in p.name}
    assert {"events.jsonl.1", "events.jsonl.2"} <= files <= {"events.jsonl", "events.jsonl.1", "events.jsonl.2"}
    kept = [e.account for e in read_events(path)]
    numbers = [int(str(a).removeprefix("acme/k")) for a in kept]
    assert numbers == sorted(numbers) and numbers[-1] == 399  # oldest first, the newest kept
    # A file passes the limit by at most one write, which may carry all 50 events emitted between two
    # flushes (the writer thread need not run in between); a line's length grows with the pid's digits.
    logs = [p for p in tmp_path.glob("events.jsonl*") if ".lock" not in p.name]
    longest = max(len(line) for p in logs for line in p.read_bytes().splitlines(keepends=True))
    assert all(p.stat().st_size <= 4000 + 50 * longest for p in logs)


def _emit_many(path: str, who: int, n: int) -> None:  # runs in a child process
    log = EventLog(Path(path), max_bytes=10**9)
    for k in range(n):
        log.emit(Event("attempt", "acme", f"acme/p{who}", f"{who}-{k}", "ok", 200, float(k), detail="x" * 200))
    log.close()


def test_four_processes_appending_at_once_lose_no_line_and_tear_none(tmp_path: Path) -> None:
    """4 processes x 2,000 events into one file: 8,000 lines, every one a whole event."""
    import multiprocessing as mp

    path = tmp_path / "events.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_emit_many, args=(str(path), who, 2000)) for who in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(DEADLINE * 2)
        assert p.exitcode == 0
    raw = path.read_text().splitlines()
    assert len(raw) == 8000
    events = list(read_events(path))
    assert len(events) == 8000
    for who in range(4):
        mine = [e.account_id for e in events if e.account == f"acme/p{who}"]
        assert mine == [f"{who}-{k}" for k in range(2000)]  # each process's lines in its order


def test_a_log_that_cannot_be_written_costs_requests_nothing(acme: LoopbackPool) -> None:
    """events.jsonl is a directory (cannot be opened): requests still succeed; the events are counted as dropped."""
    acme.add_api_key("a")
    (acme.home / "events.jsonl").mkdir()
    with acme.pool.sync_client("acme") as client:
        for _ in range(5):
            assert client.post(CHAT, json=BODY).status_code == 200
    acme.pool.events.flush()
    assert acme.pool.events.dropped >= 5


def test_follow_reads_across_a_rotation(tmp_path: Path) -> None:
    """A follower keeps reading when the file it reads is rotated away under it."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=3000, keep=5)
    stop = threading.Event()
    got: list[str] = []
    done = threading.Event()

    def follow() -> None:
        for e in follow_events(path, EventFilter(provider="acme"), poll=0.01, stop=stop):
            got.append(str(e.account_id))
            if e.account_id == "id-299":
                done.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    for n in range(300):
        log.emit(Event("attempt", "acme", "acme/a", f"id-{n}", "ok", 200, 1.0))
        if n % 20 == 19:
            log.flush()
            # The follower catches up before the next batch: two rotations between two of its
            # reads would take a whole file from under it (the log is bounded, not a queue).
            deadline = time.monotonic() + DEADLINE
            while f"id-{n}" not in got and time.monotonic() < deadline:
                time.sleep(0.005)
    log.close()
    assert done.wait(DEADLINE)
    stop.set()
    follower.join(DEADLINE)
    assert got == [f"id-{n}" for n in range(300)]


def test_lines_that_are_not_events_are_skipped(tmp_path: Path) -> None:
    """A torn last line, a foreign line, a line of another shape: readers skip them, never fail."""
    path = tmp_path / "events.jsonl"
    good = Event("state", "acme", "acme/a", "id1", "disabled").to_json()
    path.write_text("\n".join(["not json", '{"kind": "nope", "at": 1}', '[1, 2]', good,
                               '{"kind": "attempt", "at": "soon"}', good[: len(good) // 2]]))
    assert [e.outcome for e in read_events(path)] == ["disabled"]


def test_a_caller_s_strange_model_name_costs_one_short_ascii_line(tmp_path: Path) -> None:
    """A lone surrogate, an escape sequence or a megabyte of model name: the event is still one short
    ASCII line, and the writer lives on to write the next one."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    for model in ("bad-\ud800", "\x1b]0;owned\x07", "m" * 1_000_000):
        log.emit(Event("attempt", "acme", "acme/a", "id-a", "ok", 200, 1.0, model=model))
        log.flush()
    log.emit(Event("state", "acme", "acme/a", "id-a", "disabled"))
    log.close()
    raw = path.read_bytes()
    assert raw.isascii() and len(raw) < 4000
    events = list(read_events(path))
    assert [e.outcome for e in events] == ["ok", "ok", "ok", "disabled"] and log.dropped == 0
    assert len(events[2].model or "") <= 200


def test_a_writer_that_falls_behind_drops_the_oldest_counts_them_and_warns_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Past the pending limit the oldest events go (counted in ``dropped``), with one warning until the
    writer takes the pending events again; the newest are the ones written."""
    from authpool.events.log import PENDING_MAX

    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.close()  # no writer thread: emit only queues, so the overflow is exact
    with caplog.at_level("WARNING", logger="authpool"):
        for n in range(PENDING_MAX + 3):
            log.emit(Event("state", "acme", "acme/a", "id-a", f"e{n}"))
    assert log.dropped == 3
    warnings = [r for r in caplog.records if "fell" in r.getMessage()]
    assert len(warnings) == 1 and "authpool_events_dropped_total" in warnings[0].getMessage()
    log.flush()
    outcomes = [e.outcome for e in read_events(path)]
    assert len(outcomes) == PENDING_MAX and outcomes[0] == "e3" and outcomes[-1] == f"e{PENDING_MAX + 2}"
