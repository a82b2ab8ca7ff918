"""Walls that import-linter cannot express: no module reaches into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "authpool":
            found += [f"{path.relative_to(REPO)}:{node.lineno}: {node.module}.{a.name}"
                      for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_of_the_library_or_the_server_imports_another_module_s_private_names() -> None:
    """``from authpool.x import _y`` couples two modules through a name one of them promised to keep to itself."""
    offenders = [line for folder in ("pool", "server") for path in sorted((REPO / folder).rglob("*.py"))
                 for line in _private_imports(path)]
    assert offenders == []
