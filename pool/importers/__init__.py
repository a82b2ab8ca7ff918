"""Logins the user already has in other tools, turned into pool accounts without retyping them.

Each source is read by a plain function that returns a :class:`Scan`: the :class:`Candidate`
accounts found (provider, kind, suggested label, and the token set or key) and the entries
skipped with the reason. :func:`plan_import` matches candidates against the pool (an account
holding the same refresh token or API key is "already imported") and settles labels;
:func:`apply_import` adds the new ones. The ``authpool import`` command is a thin shell over
these three.

Sources and where they are read from (the tools' own environment overrides are honoured)::

    opencode     $XDG_DATA_HOME/opencode/auth.json     (default ~/.local/share/opencode/auth.json)
    claude-code  $CLAUDE_CONFIG_DIR/.credentials.json  (default ~/.claude/.credentials.json)
    codex        $CODEX_HOME/auth.json                 (default ~/.codex/auth.json)
    gemini       ~/.gemini/oauth_creds.json
    env          <PROVIDER>_API_KEY for every known provider (id upper-cased, '-' and '.' as '_'),
                 and GOOGLE_API_KEY for gemini

``env`` reads only the variable names other tools already use (OPENAI_API_KEY, ANTHROPIC_API_KEY,
GEMINI_API_KEY, and e.g. GROQ_API_KEY once a provider ``groq`` is configured). There is no
``AUTHPOOL_KEY_<PROVIDER>`` convention: a variable nobody else sets is not an existing login, and
``authpool accounts add-key`` already takes any key on stdin.

Source files are opened read-only and never written. Nothing read from them appears in a
message or a ``repr``: errors name the file and the key path, never a value.

The package is split by noun: :mod:`.candidate` (what a source yields), :mod:`.jsonfile`
(reading a credentials file safely), :mod:`.sources` (one reader per tool), :mod:`.plan`
(matching against the pool and adding).
"""

from __future__ import annotations

from authpool.accounts.jwt import jwt_claims
from authpool.auth.linked import LINKABLE
from authpool.importers.candidate import Candidate, Scan, Skipped
from authpool.importers.jsonfile import read_json_file
from authpool.importers.plan import Step, apply_import, import_candidates, plan_import, select
from authpool.importers.sources import (
    OPENCODE_PROVIDERS,
    SOURCES,
    TOOL_NAMES,
    default_path,
    env_variables,
    read_claude_code,
    read_codex,
    read_env,
    read_gemini,
    read_opencode,
    scan_source,
)

__all__ = [
    "LINKABLE",
    "OPENCODE_PROVIDERS",
    "SOURCES",
    "TOOL_NAMES",
    "Candidate",
    "Scan",
    "Skipped",
    "Step",
    "apply_import",
    "default_path",
    "env_variables",
    "import_candidates",
    "jwt_claims",
    "plan_import",
    "read_claude_code",
    "read_codex",
    "read_env",
    "read_gemini",
    "read_json_file",
    "read_opencode",
    "scan_source",
    "select",
]
