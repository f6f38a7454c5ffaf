"""Medians with their spread, and the machine a result was measured on."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path


def spread(values: Sequence[float], digits: int = 0) -> str:
    """``median (min-max, n=N)``; a single value is marked as such."""
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:,.{digits}f} (n=1)"
    low, high = min(values), max(values)
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f}, n={len(values)})"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def machine() -> str:
    cpu = "unknown CPU"
    memory_gib = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB RAM; {platform.platform()}; "
        f"Python {platform.python_version()}"
    )
