"""Child processes and their memory: each measurement runs in a fresh interpreter."""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

SPAWN = multiprocessing.get_context("spawn")


def in_child(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a fresh (spawned) Python process and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:
        return pool.submit(fn, *args).result()


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (VmHWM; ru_maxrss elsewhere)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def rss_mb() -> float:
    """Current resident memory of this process, MB."""
    kib = _status_kib("VmRSS")
    return (kib or 0) / 1024
