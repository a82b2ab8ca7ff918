"""`authpool serve` answers `initialize` before it loads what only a request or a login needs.

An MCP client waits for the server's start on every launch (benchmarks/server.py holds it to
1.15x of a minimal MCPServer): the rotation engine, its transport and the keyring load with the
first request or secret that needs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DEFERRED = [
    "authpool.rotation.driver",
    "authpool.rotation.engine",
    "authpool.rotation.effects",
    "keyring",
]

PROBE = """
import json, sys
from authpool import Pool
from authpool.server.mcp.server import build_server
pool = Pool.open()
build_server(pool)
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("authpool", "keyring")))))
"""


def test_a_built_server_has_not_loaded_the_engine_or_the_keyring(tmp_path: Path) -> None:
    env = {"AUTHPOOL_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "authpool.rotation.roster" in loaded  # the probe does see what the pool loads
    assert not loaded & set(DEFERRED), sorted(loaded & set(DEFERRED))


def test_the_engine_loads_on_first_use_through_the_package() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, authpool.rotation as r; "
                          "assert 'authpool.rotation.engine' not in sys.modules; "
                          "print(r.Engine.__module__, r.PoolTransport.__module__)"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["authpool.rotation.engine", "authpool.rotation.driver"]
