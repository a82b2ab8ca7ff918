"""A stand-in for an official CLI (Claude Code's file format) that shares a login with authpool.

It does what those tools do with their credential file, and nothing authpool-specific: it keeps
the login in memory; on a 401 it first re-reads its file (another process of the tool may have
renewed the login, the "guarded reload" the Codex CLI does before refreshing) and uses a newer
login found there, else renews the login itself: read the file, refresh at the token endpoint,
write the file back atomically (temp file, fsync, rename) with every other field kept.

Usage: python tests/official_cli.py FILE API_URL TOKEN_URL CLIENT_ID
Commands, one per stdin line, each answered by one JSON line on stdout:
  request   one API call (renewing or reloading on a 401 as above)
  refresh   renew the login now (what a tool does when its token nears expiry)
  quit
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2


class OfficialCli:
    def __init__(self, path: Path, api_url: str, token_url: str, client_id: str) -> None:
        self.path, self.api_url, self.token_url, self.client_id = path, api_url, token_url, client_id
        self.http = httpx2.Client(timeout=60)
        self.login = self._read()["claudeAiOauth"]

    def request(self) -> dict[str, Any]:
        status = self._call()
        reloaded = renewed = False
        if status == 401:
            on_disk = self._read()["claudeAiOauth"]
            if on_disk["accessToken"] != self.login["accessToken"]:
                self.login, reloaded = on_disk, True
            else:
                outcome = self.refresh()
                if not outcome["ok"]:
                    return {"status": 401, "logged_out": True, "error": outcome["error"]}
                renewed = True
            status = self._call()
        return {"status": status, "reloaded": reloaded, "renewed": renewed}

    def refresh(self) -> dict[str, Any]:
        doc = self._read()
        login = doc["claudeAiOauth"]
        r = self.http.post(self.token_url, data={"grant_type": "refresh_token", "client_id": self.client_id,
                                                 "refresh_token": login["refreshToken"]})
        if r.status_code != 200:
            return {"ok": False, "error": r.json().get("error_description", r.status_code)}
        tokens = r.json()
        login.update(accessToken=tokens["access_token"], refreshToken=tokens["refresh_token"],
                     expiresAt=int((time.time() + tokens["expires_in"]) * 1000))
        self._write(doc)
        self.login = login
        return {"ok": True}

    def _call(self) -> int:
        r = self.http.post(self.api_url, json={"model": "loopback-small", "messages": []},
                           headers={"authorization": "Bearer " + self.login["accessToken"]})
        return r.status_code

    def _read(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.path.read_text())
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".credentials-")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def main() -> None:
    path, api_url, token_url, client_id = sys.argv[1:5]
    tool = OfficialCli(Path(path), api_url, token_url, client_id)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        result = tool.request() if command == "request" else tool.refresh()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
