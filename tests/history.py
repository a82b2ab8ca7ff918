"""Modules of earlier authpool versions, from the repository's history: upgrade tests run the old code
itself against what the new code leaves behind (skipped where the history is not there, a shallow clone)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO


def module_at(commit: str, path: str, tmp_path: Path) -> ModuleType:
    """The module at ``path`` (in the repository) as it was at ``commit``, imported under a name of its own."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, cwd=REPO,
                            timeout=60)
    if source.returncode != 0:
        pytest.skip(f"the repository's history does not reach {commit} (a shallow clone)")
    name = f"old_{Path(path).stem}_{commit}"
    file = tmp_path / f"{name}.py"
    file.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
