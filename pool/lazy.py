"""Names a package hands out but loads on first use (PEP 562), so start-up pays only for what it uses."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy_names"]


def lazy_names(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``name`` comes from module ``where[name]`` when asked for.

    Example:
        >>> __getattr__ = lazy_names(__name__, {"Engine": "authpool.rotation.engine"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
