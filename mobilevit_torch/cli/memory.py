"""glibc's malloc told to keep freed memory: what ``train.py``, ``evaluate.py`` and ``predict.py`` set first."""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and stay there when freed; larger ones are still mmapped.
_KEEP_BELOW = 1 << 30
OPT_OUT = "MOBILEVIT_KEEP_FREED_MEMORY"


def keep_freed_memory() -> str:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel; says what it did.

    By default glibc hands a freed block of more than a few MiB straight back (``munmap``, or by
    trimming the heap), so the next step's activations are mapped in again page by page: on a CPU
    a batch-32 XXS training step took ~670,000 page faults and ran 1.6x slower for it
    (``benchmarks/NOTES.md``). Raising the mmap threshold to 1 GiB and turning heap trimming off
    (``mallopt``, the same as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``) keeps that
    memory in the process; the price is a peak resident size that does not shrink back (+11 % there).

    ``train.py``, ``evaluate.py`` and ``predict.py`` call this before their large allocations (``export.py``
    does not: it runs one model once); the library never does (it is process-wide).
    Nothing changes when ``MOBILEVIT_KEEP_FREED_MEMORY=0``, when the user tuned malloc already
    (``MALLOC_*``, ``GLIBC_TUNABLES``, or an allocator in ``LD_PRELOAD``), or off glibc.
    """
    if os.environ.get(OPT_OUT, "1") == "0":
        return f"malloc left alone ({OPT_OUT}=0)"
    if any(key.startswith("MALLOC_") for key in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return "malloc left alone (tuned by MALLOC_*/GLIBC_TUNABLES)"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return "malloc left alone (another allocator is preloaded)"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl, macOS and Windows lack it)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return "malloc left alone (not glibc)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW) and mallopt(_M_TRIM_THRESHOLD, -1):  # -1: never trim
        return f"glibc malloc keeps freed memory for reuse ({OPT_OUT}=0 turns this off)"
    return "malloc left alone (mallopt refused)"
