"""authpool gateway with the official OpenAI SDK, end to end on this machine alone.

    pip install openai && python examples/gateway.py

Starts a loopback provider with two accounts (the first one rate-limited), a temporary pool, and
``authpool gateway --port 0`` on it; then the OpenAI SDK, pointed at the gateway with the gateway
key, gets one normal answer: the 429 of the first account stayed inside the gateway, and the
``x-authpool-account`` header says which account served it. Nothing outside a temporary
directory is touched. With real accounts, only the last part applies::

    export OPENAI_BASE_URL=http://127.0.0.1:8787/openai/v1 OPENAI_API_KEY="$(authpool gateway key)"
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

from authpool import Pool, TokenSet
from authpool.server.loopback import LoopbackProvider


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, LoopbackProvider() as provider:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        env = {**os.environ, "AUTHPOOL_HOME": str(home), "AUTHPOOL_GATEWAY_KEY": "example-gateway-key-0123456789",
               "PYTHON_KEYRING_BACKEND": "authpool.storage.vault.VaultKeyring"}
        config = home / "config.toml"
        config.write_text(f'[providers.demo]\nbase_url = "{provider.base_url}"\n')
        config.chmod(0o600)
        os.environ.update({k: env[k] for k in ("AUTHPOOL_HOME", "PYTHON_KEYRING_BACKEND")})
        pool = Pool.open(home)
        for label in ("first", "second"):
            pool.add_oauth("demo", label, TokenSet.parse(provider.add_oauth_account(label)))
        pool.close()
        provider.set_rate_limit("first", 0)  # every request of the first account gets 429

        port_file = Path(tmp) / "port"
        gateway = subprocess.Popen([sys.executable, "-m", "authpool.server.cli", "gateway", "--port", "0",
                                    "--port-file", str(port_file)], env=env)
        try:
            while not port_file.exists():
                if gateway.poll() is not None:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.05)
            base_url = f"http://127.0.0.1:{port_file.read_text().strip()}/demo/v1"
            client = openai.OpenAI(base_url=base_url, api_key=env["AUTHPOOL_GATEWAY_KEY"])
            raw = client.chat.completions.with_raw_response.create(
                model="loopback-small", messages=[{"role": "user", "content": "hi"}])
            print(raw.parse().choices[0].message.content)
            print(f"served by {raw.headers['x-authpool-account']} after {raw.headers['x-authpool-attempts']} attempts")
        finally:
            gateway.terminate()
            gateway.wait()


if __name__ == "__main__":
    main()
