"""The token-refresh protocol, model-checked: docs/model/refresh.pml run under SPIN by docs/model/check.sh.

The correct model must verify exhaustively (within its bounds) for two and three processes, and
every deliberately broken variant must yield a counterexample for the property it breaks, which
shows the properties are not vacuous. Without the `spin` model checker (or gcc) these tests are
skipped, unless AUTHPOOL_REQUIRE_SPIN=1 makes a missing checker a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "docs" / "model"
CHECK = MODEL_DIR / "check.sh"

MUTANTS = {
    "no-lock/P1", "no-lock/P4", "lock-survives-crash/P4", "no-gen-recheck/P6", "cached-token/P1",
    "gen-before-secret/P3", "gen-before-secret/P5", "journal-after-send/P3", "signal-aborts/P1",
    "signal-aborts/P2", "timeout-clears-journal/P3", "no-gen-bump/P5",
}
FINDINGS = {"spec-5xx-clears-journal/P3", "spec-no-wait/P3", "spec-no-wait/P1", "blame-names-the-loser/P7"}


def require_spin() -> None:
    """Skip when spin or gcc is missing; fail instead when AUTHPOOL_REQUIRE_SPIN=1."""
    missing = [tool for tool in ("spin", "gcc") if shutil.which(tool) is None]
    if not missing:
        return
    why = f"{' and '.join(missing)} not installed (Debian/Ubuntu: apt-get install spin gcc)"
    if os.environ.get("AUTHPOOL_REQUIRE_SPIN") == "1":
        pytest.fail(f"AUTHPOOL_REQUIRE_SPIN=1 but {why}")
    pytest.skip(why)


def check(*args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run check.sh with ARGS; return the process and its summary rows by run name."""
    proc = subprocess.run(["bash", str(CHECK), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    rows = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("ok", "FAIL"):
            rows[parts[1]] = line
    return proc, rows


def states(row: str) -> int:
    """The number of states SPIN stored for a summary row."""
    return int(row.split()[3])


def model_dir_files() -> set[str]:
    return {p.name for p in MODEL_DIR.iterdir()}


def test_the_refresh_protocol_verifies_under_spin_with_two_processes() -> None:
    """Two processes, three refreshes each, two SIGKILLs, three 5xx/timeouts: no property is ever violated."""
    require_spin()
    proc, rows = check("correct-n2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = rows["correct-n2"]
    assert row.startswith("ok") and "verified, 0 errors" in row, row
    assert states(row) > 100_000, row  # the search really explored the interleavings


@pytest.mark.slow
def test_the_refresh_protocol_verifies_under_spin_with_three_processes() -> None:
    """Three processes, two refreshes each, two SIGKILLs, two 5xx/timeouts: no property is ever violated."""
    require_spin()
    proc, rows = check("correct-n3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = rows["correct-n3"]
    assert row.startswith("ok") and "verified, 0 errors" in row, row
    assert states(row) > 1_000_000, row


def test_each_broken_variant_of_the_protocol_yields_a_counterexample() -> None:
    """Every mutant (no lock, no gen re-check, cached token, wrong store order, ...) breaks the property it names."""
    require_spin()
    before = model_dir_files()
    proc, rows = check("mutants")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(rows) == MUTANTS, proc.stdout
    for name, row in rows.items():
        expected = name.rsplit("/", 1)[1]
        assert row.startswith("ok") and f"counterexample: {expected}" in row, row
    assert model_dir_files() == before, "check.sh left build artifacts in docs/model"


def test_the_protocol_as_first_specified_leaves_revocations_unexplained() -> None:
    """Clearing the journal on a 5xx, or not waiting out an interrupted request, breaks P3; blame can be misplaced."""
    require_spin()
    proc, rows = check("findings")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(rows) == FINDINGS, proc.stdout
    for name, row in rows.items():
        expected = name.rsplit("/", 1)[1]
        assert row.startswith("ok") and f"counterexample: {expected}" in row, row


def test_a_counterexample_replays_as_a_readable_story() -> None:
    """--trail prints the shortest interleaving: a killed owner's late request revokes the login after a rotation."""
    require_spin()
    proc = subprocess.run(["bash", str(CHECK), "--trail", "spec-no-wait/P3"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    story = proc.stdout
    assert "SIGKILLed" in story
    assert "REUSE of a used token: the login is revoked" in story
    assert "P3_every_revocation_explained" in story


def test_the_checker_says_clearly_when_spin_is_missing() -> None:
    """Without spin on PATH, check.sh exits 2 and says how to install it (no spin needed for this test)."""
    with tempfile.TemporaryDirectory() as bin_dir:
        dirname = shutil.which("dirname") or shutil.which("dirname", path=os.defpath)
        bash = shutil.which("bash") or shutil.which("bash", path=os.defpath)
        if dirname is None or bash is None:
            pytest.skip("needs bash and dirname")
        Path(bin_dir, "dirname").symlink_to(dirname)
        proc = subprocess.run([bash, str(CHECK)], capture_output=True, text=True, timeout=30, cwd=REPO,
                              env={"PATH": bin_dir})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "apt-get install spin" in proc.stderr
