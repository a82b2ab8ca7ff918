"""Shared fixtures: a private home per test, the CLI as a real subprocess, secret scanning."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "workers.py"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh AUTHPOOL_HOME whose secrets go to the encrypted-file vault (never the user's keyring)."""
    h = tmp_path / "home"
    monkeypatch.setenv("AUTHPOOL_HOME", str(h))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "pool.vault.VaultKeyring")
    monkeypatch.delenv("AUTHPOOL_VAULT_KEY", raising=False)
    monkeypatch.delenv("AUTHPOOL_LOG", raising=False)
    yield h


def run_cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `authpool ARGS` as a real subprocess with the current environment."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def run_worker(*args: str, input: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run tests/workers.py ARGS in a real subprocess."""
    return subprocess.run(
        [sys.executable, str(WORKERS), *args], input=input, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ), cwd=REPO,
    )


def start_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKERS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ), cwd=REPO,
    )


def assert_no_secrets(texts: list[str] | str, secrets: list[str]) -> None:
    """Fail if any secret value occurs in any of ``texts``."""
    if isinstance(texts, str):
        texts = [texts]
    for secret in secrets:
        for text in texts:
            assert secret not in text, "a secret value leaked into output"


def home_texts(home: Path) -> list[str]:
    """Every readable file under the home, except the encrypted vault and its key."""
    out = []
    for p in home.rglob("*"):
        if p.is_file() and p.name not in {"vault.json", "vault.key"}:
            out.append(p.read_text(errors="replace"))
    return out
