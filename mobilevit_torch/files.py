"""Atomic file writes: checkpoints, decode caches, splits, metrics, export sidecars and downloads.
And :func:`existing_path`, the torch-free check that a named file is there.

Each is written to a temporary file in the target's folder and renamed over the target only once
it is complete, so a reader (or a resumed run after a crash) never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    """The process umask. Reading it means setting it, so this runs once, at import."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", *, sync: bool = False, suffix: str = ".tmp", **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """``with atomic_write(path, "wb") as file: ...``: ``path`` appears, complete, when the block ends.

    The temporary file (``.<name>.<random><suffix>`` beside ``path``) gets the permissions a file
    made by ``open()`` would have (``mkstemp`` makes it owner-only), then replaces ``path``; if the
    block raises, it is deleted and ``path`` is left as it was. ``sync=True`` flushes it to disk
    before the rename (checkpoints: a power cut then leaves the old file or the new one).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as file:
            yield file
            if sync:
                file.flush()
                os.fsync(file.fileno())
        os.chmod(tmp, _NEW_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def existing_path(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` with ``~`` expanded; FileNotFoundError ``"<what> not found: <path>"`` when nothing is there.

    Torch-free, so that a command line can say a named file is missing before it imports torch."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path
