"""What the benchmark scripts share: percentiles, timing, number formats, text and markdown tables, and a
description of the machine and its load.

The scripts import it as ``benchmarks.stats``, with the repository root on ``sys.path``: run directly
(``python benchmarks/NAME.py``), a script keeps its own directory off the path, because ``benchmarks/server.py``
would shadow authpool's ``server`` package.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any

# -- statistics and timing -------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Seconds each of ``repeat`` calls of ``fn`` took."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# -- formatting ------------------------------------------------------------------------------


def ms(seconds: float, digits: int = 1) -> str:
    """Seconds as milliseconds, with ``digits`` decimals."""
    return f"{seconds * 1e3:.{digits}f}"


def us(seconds: float, digits: int = 1) -> str:
    """Seconds as microseconds, with ``digits`` decimals."""
    return f"{seconds * 1e6:.{digits}f}"


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    head = _row(headers, widths)
    return "\n".join([head, "-" * len(head), *(_row(r, widths) for r in rows)])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table, aligned like ``table``."""
    align = "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(headers))) + "|"
    return "\n".join(["| " + " | ".join(headers) + " |", align, *("| " + " | ".join(r) + " |" for r in rows)])


# -- the machine -----------------------------------------------------------------------------


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def cpu_count() -> int | None:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine(dists: Iterable[str], *notes: str) -> str:
    """CPUs, Python and platform, then the version of each distribution in ``dists``, then ``notes``."""
    return ", ".join([
        f"{cpu_count()} CPUs",
        f"Python {platform.python_version()} ({platform.system()} {platform.machine()})",
        *(f"{dist} {version_of(dist)}" for dist in dists),
        *notes,
    ])


def load_note(at_start: float) -> str:
    """The 1-minute load average at the start and end, with a warning when other work competed for the CPUs."""
    cpus = cpu_count() or 1
    at_end = os.getloadavg()[0]
    note = f"load average {at_start:.1f} at the start, {at_end:.1f} at the end ({cpus} CPUs)"
    if max(at_start, at_end) > cpus:
        note += ": other work competed for the CPUs, so absolute times are inflated and noisy (ratios less so)"
    return note
