"""Adding many API keys at once: `accounts add-key --from-file` and `Pool.add_api_keys`, all or nothing.

The CLI runs as a real subprocess on a real home (the encrypted vault holds the secrets); every
test scans what the CLI printed and every readable file of the home for the keys it minted.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from authpool import Account, DuplicateLabel, InvalidInput, Pool, SecretError, SecretStore
from authpool.accounts.secret import Secret
from tests.conftest import REPO, assert_no_secrets, home_texts, raw_pool, run_cli, start_worker
from tests.keyrings import FullKeyring, vault_commits, vault_entries


def new_key() -> str:
    return f"sk-bulk-{secrets.token_hex(16)}"


def jsonl(*entries: dict[str, Any] | str) -> str:
    return "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries)


@pytest.fixture
def pool(home: Path) -> Pool:
    """A pool that has one key already (so its secret backend, the vault, is chosen and recorded)."""
    p = Pool.open(home)
    p.add_api_key("openai", "existing", "sk-existing-0001")
    return p


def test_a_file_of_keys_adds_every_account_in_the_file_s_order(pool: Pool, home: Path, tmp_path: Path) -> None:
    """200 lines become 200 accounts after the existing one, each with its own key; no key is printed or on disk."""
    keys = [new_key() for _ in range(200)]
    file = tmp_path / "keys.jsonl"
    file.write_text(jsonl(*({"label": f"team-{i:03d}", "key": k} for i, k in enumerate(keys))))
    r = run_cli("accounts", "add-key", "openai", "--from-file", str(file), "--namespace", "teams")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "added 200 API-key accounts to openai (namespace teams)\n"
    fresh = Pool.open(home)
    added = fresh.accounts("openai")[1:]
    assert [a.label for a in added] == [f"team-{i:03d}" for i in range(200)]
    assert [a.order for a in added] == list(range(1, 201)) and {a.namespace for a in added} == {"teams"}
    assert [fresh.secret_of(a).api_key for a in added] == keys
    listed = run_cli("accounts", "list", "--limit", "1000")
    assert_no_secrets([r.stdout, r.stderr, listed.stdout, *home_texts(home)], keys)


def test_keys_piped_on_stdin_are_added_and_blank_lines_are_skipped(pool: Pool, home: Path) -> None:
    """`--from-file -` reads stdin; blank and whitespace-only lines (and a BOM) are not entries."""
    keys = [new_key(), new_key()]
    text = "\ufeff" + jsonl({"label": "a", "key": keys[0]}, "", "   \t", {"label": "b", "key": f"  {keys[1]}  "}) + "\n"
    r = run_cli("accounts", "add-key", "anthropic", "--from-file", "-", input=text)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "added 2 API-key accounts to anthropic\n"
    fresh = Pool.open(home)
    assert [fresh.secret_of(a).api_key for a in fresh.accounts("anthropic")] == keys
    assert_no_secrets([r.stdout, r.stderr], keys)


SECRET = "sk-bulk-never-shown-0123456789"
GOOD = {"label": "good", "key": "sk-bulk-good-1"}

# (the file's lines, the error after "stdin line N: " or a whole message, the line it names)
BAD_FILES: list[tuple[list[dict[str, Any] | str], str]] = [
    ([GOOD, "{not json " + SECRET], 'stdin line 2: not a JSON object such as {"label": "...", "key": "..."}'),
    ([GOOD, "", json.dumps([SECRET, "x"])], "stdin line 3: not a JSON object"),
    ([GOOD, SECRET], "stdin line 2: not a JSON object"),
    ([GOOD, {"label": "x"}], 'stdin line 2: an entry has exactly two fields, "label" and "key"'),
    ([GOOD, {"label": "x", "key": SECRET, "note": "y"}], 'stdin line 2: an entry has exactly two fields'),
    ([GOOD, {"label": "x", "key": 12345}], 'stdin line 2: "label" and "key" must be strings'),
    ([GOOD, {"label": "x", "key": f"{SECRET} {SECRET}"}], "stdin line 2: the API key contains whitespace"),
    ([GOOD, {"label": "x", "key": "   "}], "stdin line 2: the API key is empty"),
    ([GOOD, {"label": f"team/{SECRET}", "key": "sk-1"}], "stdin line 2: the label must be 1-100 printable"),
    ([GOOD, {"label": "", "key": SECRET}], "stdin line 2: the label must be 1-100 printable"),
    ([GOOD, {"label": "x", "key": "sk-2"}, "", {"label": "X", "key": SECRET}],
     "stdin line 4: its label is also the label of line 2"),
    ([GOOD, {"label": "Existing", "key": SECRET}],
     "stdin line 2: openai has an account with this label already ("),
    ([], 'stdin has no entries: one {"label": "...", "key": "..."} per line'),
    (["", "  "], "stdin has no entries"),
]


@pytest.mark.parametrize(("lines", "message"), BAD_FILES, ids=[f"bad-{i}" for i in range(len(BAD_FILES))])
def test_a_wrong_line_is_named_by_its_number_without_its_content_and_nothing_is_added(
        pool: Pool, home: Path, lines: list[dict[str, Any] | str], message: str) -> None:
    """One line on stderr naming the line; exit 1; no account and no secret stored, not even the good lines'."""
    before = (pool.store.read().model_dump_json(), vault_entries(home))
    r = run_cli("accounts", "add-key", "openai", "--from-file", "-", input=jsonl(*lines))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"authpool: error: {message}"), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert_no_secrets([r.stderr], [SECRET, "sk-bulk-good-1", "team/"])
    assert (Pool.open(home).store.read().model_dump_json(), vault_entries(home)) == before


def test_a_file_that_is_not_utf8_or_cannot_be_read_is_one_clear_line(pool: Pool, tmp_path: Path) -> None:
    file = tmp_path / "keys.jsonl"
    file.write_bytes(jsonl(GOOD).encode() + b'{"label": "x", "key": "sk-\xff\xfe"}\n')
    r = run_cli("accounts", "add-key", "openai", "--from-file", str(file))
    assert (r.returncode, r.stderr) == (1, f"authpool: error: {file} line 2: not UTF-8 text; nothing was added\n")
    r = run_cli("accounts", "add-key", "openai", "--from-file", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and r.stderr.startswith("authpool: error: cannot read ") and r.stderr.count("\n") == 1
    assert len(Pool.open().accounts()) == 1


def test_keys_are_never_read_from_a_terminal_or_argv(pool: Pool) -> None:
    """`--from-file -` with a terminal on stdin is refused (typed keys would show); --label and --from-file exclude."""
    import pty

    controller, terminal = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "authpool.server.cli", "accounts", "add-key", "openai",
                            "--from-file", "-"], stdin=terminal, capture_output=True, text=True, cwd=REPO,
                           timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert r.returncode == 2 and "pipe or redirect them in" in r.stderr
    both = run_cli("accounts", "add-key", "openai", "--label", "x", "--from-file", "-", input=jsonl(GOOD))
    assert both.returncode == 2 and "not allowed with argument --label" in both.stderr
    assert len(Pool.open().accounts()) == 1


def test_a_failed_metadata_update_removes_the_secrets_it_saved(pool: Pool, home: Path, tmp_path: Path) -> None:
    """While another process holds the store's update, the batch times out: its secrets leave the vault again."""
    keys = [new_key() for _ in range(20)]
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder = start_worker("disable-when", "openai/existing", str(ready), str(go))
    try:
        deadline = 60.0
        start = time.monotonic()
        while not ready.exists():
            assert time.monotonic() - start < deadline, holder.stderr.read() if holder.stderr else ""
            time.sleep(0.01)
        before = vault_entries(home)
        r = run_cli("accounts", "add-key", "openai", "--from-file", "-", env={"AUTHPOOL_LOCK_TIMEOUT": "1"},
                    input=jsonl(*({"label": f"k{i}", "key": k} for i, k in enumerate(keys))))
        assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert vault_entries(home) == before
    finally:
        go.touch()
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert [a.label for a in Pool.open(home).accounts()] == ["existing"]
    assert_no_secrets([r.stdout, r.stderr, *home_texts(home)], keys)


@pytest.fixture
def full_keyring(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The home's credential store is a plain file that takes 6 entries, then refuses every write;
    it holds one account's key already. Its file, for the test to read."""
    path = tmp_path / "keyring.json"
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.keyrings.FileFullKeyring")
    monkeypatch.setenv("TEST_KEYRING_FILE", str(path))
    monkeypatch.setenv("TEST_KEYRING_CAPACITY", "6")
    r = run_cli("accounts", "add-key", "openai", "--label", "existing", input="sk-existing-0001\n")
    assert r.returncode == 0, r.stderr
    return path


def keyring_entries(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def test_a_credential_store_that_fails_after_five_writes_leaves_no_account_and_no_secret_behind(
        full_keyring: Path, home: Path) -> None:
    """20 keys into a store with room for 5: one line naming the failure (the key it echoed hidden), exit 1;
    the 5 written are deleted again and no account row was written."""
    keys = [new_key() for _ in range(20)]
    before = (keyring_entries(full_keyring), raw_pool(home)["accounts"])
    r = run_cli("accounts", "add-key", "openai", "--from-file", "-",
                input=jsonl(*({"label": f"k{i:02d}", "key": k} for i, k in enumerate(keys))))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.startswith("authpool: error: the credential store tests.keyrings.FileFullKeyring failed to "
                               "write the secrets of 20 accounts: PasswordSetError: the store is full; refused "
                               '{"v":1,"kind":"api_key","api_key":"<hidden>"}'), r.stderr
    assert r.stderr.endswith("; nothing was added\n") and r.stderr.count("\n") == 1, r.stderr
    assert (keyring_entries(full_keyring), raw_pool(home)["accounts"]) == before
    assert [a.name for a in Pool.open(home).accounts()] == ["openai/existing"]
    assert_no_secrets([r.stdout, r.stderr, full_keyring.read_text(), *home_texts(home)], keys)


def test_the_library_keeps_none_of_a_batch_the_credential_store_refuses_partway(
        full_keyring: Path, home: Path) -> None:
    """Pool.add_api_keys raises SecretError (no key in it); the store and the credential store are as they were."""
    keys = [new_key() for _ in range(8)]
    pool = Pool.open(home)
    before = (keyring_entries(full_keyring), raw_pool(home)["accounts"])
    with pytest.raises(SecretError) as e:
        pool.add_api_keys("openai", [(f"k{i}", k) for i, k in enumerate(keys)])
    assert "failed to write the secrets of 8 accounts" in str(e.value)
    assert_no_secrets([str(e.value)], keys)
    assert (keyring_entries(full_keyring), raw_pool(home)["accounts"]) == before
    assert pool.add_api_keys("openai", [("k0", keys[0])])[0].name == "openai/k0"  # room for one more: it fits


def test_a_label_another_process_takes_while_the_batch_waits_for_the_store_is_named_by_line(
        pool: Pool, home: Path, tmp_path: Path) -> None:
    """The batch checked its labels, saved its secrets, then waited for the store's lock while another
    process added `k05`: the store refuses the batch whole, the error names line 6, the secrets go again."""
    from tests.test_lock_queue import wait_until_blocked

    keys = [new_key() for _ in range(10)]
    ready, go = tmp_path / "ready", tmp_path / "go"
    racer = start_worker("add-when", "openai", "k05", str(ready), str(go))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and racer.poll() is None, racer.stderr.read() if racer.stderr else ""
            time.sleep(0.01)
        before = vault_entries(home)
        file = tmp_path / "keys.jsonl"
        file.write_text(jsonl(*({"label": f"k{i:02d}", "key": k} for i, k in enumerate(keys))))
        batch = subprocess.Popen(
            [sys.executable, "-m", "authpool.server.cli", "accounts", "add-key", "openai", "--from-file", str(file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**os.environ, "AUTHPOOL_LOCK_TIMEOUT": "120"})
        wait_until_blocked(home / "locks" / "pool.lock", batch.pid)
        assert len(vault_entries(home)) == len(before) + 10  # its secrets first, as always
    finally:
        go.touch()
        racer_out, racer_err = racer.communicate(timeout=60)
    out, err = batch.communicate(timeout=60)
    assert racer.returncode == 0, racer_err
    assert batch.returncode == 1 and out == "", err
    assert err == (f"authpool: error: {file} line 6: openai has an account with this label already (racer001); "
                   "nothing was added\n")
    assert vault_entries(home) == before
    assert [a.label for a in Pool.open(home).accounts()] == ["existing", "k05"]
    assert_no_secrets([out, err, *home_texts(home)], keys)
    file.unlink()


def test_one_key_added_while_another_process_writes_reads_the_pool_inside_its_own_update(
        pool: Pool, home: Path, tmp_path: Path) -> None:
    """add_api_key waits for the store's lock while another process adds an account; its change then reads
    the pool (for the new account's order) inside its own transaction: the other account is seen, no error."""
    import threading

    from tests.test_lock_queue import wait_until_blocked

    ready, go = tmp_path / "ready", tmp_path / "go"
    racer = start_worker("add-when", "openai", "racer", str(ready), str(go))
    result: list[Any] = []
    adder = threading.Thread(target=lambda: result.append(_attempt(lambda: pool.add_api_key("openai", "mine",
                                                                                            "sk-mine-0001"))))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and racer.poll() is None, racer.stderr.read() if racer.stderr else ""
            time.sleep(0.01)
        adder.start()
        wait_until_blocked(home / "locks" / "pool.lock", os.getpid())
    finally:
        go.touch()
        racer.communicate(timeout=60)
        adder.join(timeout=60)
    assert racer.returncode == 0
    added = result[0]
    assert isinstance(added, Account), added
    assert [(a.label, a.order) for a in Pool.open(home).accounts("openai")] == [
        ("existing", 0), ("racer", 0), ("mine", 1)]


def _attempt(fn: Any) -> Any:
    try:
        return fn()
    except Exception as e:  # the test reports it
        return e


# -- the library ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entries", "error", "entry", "problem"), [
    ([("a", "sk-1"), ("b", "")], InvalidInput, 2, "the API key is empty"),
    ([("a", "sk-1"), ("b/c", "sk-2")], InvalidInput, 2, "the label must be 1-100 printable characters, without '/'"),
    ([("a", "sk-1"), ("b", "sk-2"), ("A", "sk-3")], DuplicateLabel, 3, "its label is also the label of entry 1"),
    ([("x", "sk-1"), ("EXISTING", "sk-2")], DuplicateLabel, 2, "openai has an account with this label already"),
])
def test_add_api_keys_checks_every_entry_first_and_names_the_wrong_one_by_position(
        pool: Pool, home: Path, entries: list[tuple[str, str]], error: type[Exception], entry: int,
        problem: str) -> None:
    """The error carries the entry's position; the pool and the vault are as they were."""
    before = vault_entries(home)
    with pytest.raises(error) as e:
        pool.add_api_keys("openai", entries)
    assert isinstance(e.value, InvalidInput) and e.value.entry == entry
    assert e.value.problem.startswith(problem) and str(e.value).startswith(f"entry {entry}: {problem}")
    assert_no_secrets([str(e.value)], [k for _, k in entries if k])
    assert [a.label for a in pool.accounts()] == ["existing"] and vault_entries(home) == before


def test_add_api_keys_writes_the_vault_once_for_a_thousand_keys(pool: Pool, home: Path) -> None:
    """1,000 new secrets cost one commit of the vault (its own count of transactions), then one metadata update."""
    keys = [new_key() for _ in range(1000)]
    before = vault_commits(home)
    added = pool.add_api_keys("openai", [(f"k{i:04d}", k) for i, k in enumerate(keys)])
    assert vault_commits(home) == before + 1
    assert len(added) == 1000 and [a.label for a in added][:2] == ["k0000", "k0001"]
    fresh = Pool.open(home)
    assert fresh.secret_of(fresh.get("openai/k0999")).api_key == keys[999]
    assert pool.add_api_keys("openai", []) == []


def test_a_credential_store_that_fails_midway_keeps_none_of_the_batch(home: Path) -> None:
    """A keyring written entry by entry: when the 4th write fails, the 3 written are deleted; the error hides keys."""
    backend = FullKeyring(capacity=3)
    store = SecretStore(backend)
    keys = [new_key() for _ in range(5)]
    with pytest.raises(SecretError) as e:
        store.save_many([(f"acct{i:04d}", Secret.from_api_key(k), 1) for i, k in enumerate(keys)])
    assert backend.entries == {}
    assert "failed to write the secrets of 5 accounts" in str(e.value)
    assert_no_secrets([str(e.value)], keys)


def test_a_team_store_adds_a_batch_in_one_go_that_another_member_reads_and_refuses_a_taken_label_whole(
        home: Path, team_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL: 300 keys, sealed, each readable from another machine's home; a second batch with one label
    taken adds nothing (no account row, no sealed row); the database holds no key in plain text."""
    import psycopg

    from tests.conftest import TEAM_KEY

    monkeypatch.setenv("AUTHPOOL_STORE", team_url)
    monkeypatch.setenv("AUTHPOOL_TEAM_KEY", TEAM_KEY)
    keys = [new_key() for _ in range(300)]
    pool = Pool.open(home)
    added = pool.add_api_keys("openai", [(f"k{i:03d}", k) for i, k in enumerate(keys)], namespace="team")
    other = Pool.open(tmp_path / "machine2")
    try:
        assert [other.secret_of(a).api_key for a in other.accounts("openai")] == keys
        assert [a.order for a in other.accounts("openai")] == list(range(300))

        def rows() -> tuple[int, int, str]:
            """Account rows, sealed rows, and every byte of both tables (decoded as Latin-1, to scan)."""
            with psycopg.connect(team_url) as conn:
                docs = [str(d) for (d,) in conn.execute("SELECT doc::text FROM authpool_accounts")]
                sealed = [bytes(b) for (b,) in conn.execute("SELECT sealed FROM authpool_secrets")]
            return len(docs), len(sealed), "".join(docs) + b"".join(sealed).decode("latin-1")

        before = rows()
        assert before[:2] == (300, 300)
        more = [new_key() for _ in range(5)]
        with pytest.raises(DuplicateLabel) as e:
            pool.add_api_keys("openai", [(f"new{i}", k) for i, k in enumerate(more[:4])] + [("K150", more[4])])
        assert e.value.entry == 5 and added[150].id in str(e.value)
        assert rows() == before
        assert_no_secrets([before[2], str(e.value)], keys + more)
    finally:
        other.close()
        pool.close()
