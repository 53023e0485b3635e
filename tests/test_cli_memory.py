"""keep_freed_memory: the entry points' malloc setting, checked in fresh processes (it is process-wide)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# Allocates and frees a 64 MiB tensor (writing it) 21 times and reports the page faults of the
# last 9 (the heap settles in the first few: up to 9 when little else was imported before, as now
# that `mobilevit_torch.cli` imports no torch); glibc's default returns such a block to the kernel
# on every free.
PROBE = """
import json, resource, sys, torch
from mobilevit_torch.cli import keep_freed_memory
said = keep_freed_memory() if sys.argv[1] == "tune" else "untouched"
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    torch.ones(16 * 2**20)
before = faults()
for _ in range(9):
    torch.ones(16 * 2**20)
print(json.dumps({"said": said, "faults": (faults() - before) / 9}))
"""


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError, TypeError):
        return False
    return True


def _fresh_map_faults() -> int:
    """Fewest faults a fresh 64 MiB map takes: 16,384 small pages, or 32 huge ones where the kernel
    backs every large anonymous map with transparent huge pages."""
    try:
        always = "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        always = False
    return 30 if always else 10_000


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    clean.pop("MOBILEVIT_KEEP_FREED_MEMORY", None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _glibc(), reason="glibc malloc only")
def test_freed_activation_memory_is_reused_without_page_faults() -> None:
    default = _probe("plain")
    tuned = _probe("tune")
    # 64 MiB is 16,384 pages of 4 KiB: each fresh allocation faults them in again by default.
    assert default["faults"] > _fresh_map_faults(), default
    assert tuned["faults"] < min(100, default["faults"] / 10), tuned
    assert "keeps freed memory" in tuned["said"]


@pytest.mark.skipif(not _glibc(), reason="glibc malloc only")
def test_user_settings_win() -> None:
    opted_out = _probe("tune", MOBILEVIT_KEEP_FREED_MEMORY="0")
    assert "left alone" in opted_out["said"] and opted_out["faults"] > _fresh_map_faults()
    own = _probe("tune", MALLOC_ARENA_MAX="2")
    assert "tuned by MALLOC_" in own["said"] and own["faults"] > _fresh_map_faults()
