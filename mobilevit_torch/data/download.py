"""Fetch and unpack tf_flowers: checksummed download, path-safe tar extraction.

The archive is 218 MiB from Google storage; it is verified against the SHA-256 that TensorFlow
Datasets records for it (``tensorflow_datasets/url_checksums/tf_flowers.txt``: 228,813,984 bytes),
and unpacked member by member only after every member has been checked to stay inside the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from mobilevit_torch.data.folder import DataError, holds_class_folders
from mobilevit_torch.files import atomic_write

logger = logging.getLogger(__name__)

FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWERS_FOLDER = "flower_photos"

_CHUNK = 1 << 20


def download_file(url: str, dest: Path, *, sha256: str, timeout: float = 30) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar; ``dest`` appears only once its SHA-256 matches."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_write(dest, "wb", suffix=".part") as file:  # dest appears only if the checksum matches
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name) as bar:
                    while chunk := response.read(_CHUNK):
                        file.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise DataError(f"could not download {url} ({_reason(error)})") from None
        got = digest.hexdigest()
        if got != sha256.lower():
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {got}; "
                f"the downloaded file was removed"
            )
    return dest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_extract_tar(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing the whole archive if any member could write outside it.

    Refused, before anything is written: absolute names, names that climb out with ``..``, names
    that pass through a link in the archive, symbolic or hard links pointing outside ``dest``,
    device files and FIFOs. Python's ``filter="data"`` is applied as well where it exists; it is a
    second line, not the only one, because older Pythons lack it.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            links: set[str] = set()
            for member in members:
                _check_member(member, links, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706
                tar.extractall(dest, members=members)
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"could not extract {archive} ({_reason(error)})") from None


def _check_member(member: tarfile.TarInfo, links: set[str], archive: Path) -> None:
    """Raise if ``member`` would land, or point, outside the extraction folder."""
    refuse = f"refusing to extract {archive}: member {member.name!r}"
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        raise DataError(f"{refuse} has an absolute path")
    normal, problem = _walk(member.name, links)
    if problem:
        raise DataError(f"{refuse} {problem}")
    if member.isdev():
        raise DataError(f"{refuse} is a device file or FIFO")
    if member.issym() or member.islnk():
        kind, target = "symbolic" if member.issym() else "hard", member.linkname
        if posixpath.isabs(target) or target.startswith("\\"):
            raise DataError(f"{refuse} is a {kind} link to the absolute path {target!r}")
        # A symlink's target is relative to its folder; a hard link's to the archive root.
        joined = posixpath.join(posixpath.dirname(normal), target) if member.issym() else target
        _, problem = _walk(joined, links)
        if problem:
            raise DataError(f"{refuse} is a {kind} link to {target!r}, which {problem}")
        links.add(normal)


def _walk(path: str, links: set[str]) -> tuple[str, str | None]:
    """Normalise ``path`` (relative to the extraction folder) one component at a time.

    Returns the normal form and, when it is unsafe, why: it climbs above the folder, or it passes
    through (or replaces) a link defined earlier in the archive, whose real location a lexical
    check cannot know.
    """
    parts: list[str] = []
    for part in path.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return path, "escapes the destination folder"
            parts.pop()
            continue
        parts.append(part)
        if "/".join(parts) in links:
            return path, f"goes through the link {'/'.join(parts)!r}"
    return "/".join(parts) or ".", None


def find_flowers(root: Path) -> Path | None:
    """Where tf_flowers' class folders are under ``root`` (``data=flowers``' ``data.root``): ``root/flower_photos``
    when it holds class folders of images, else ``root`` itself when it does; ``None`` when neither does."""
    root = Path(root).expanduser()
    for folder in (root / FLOWERS_FOLDER, root):
        if holds_class_folders(folder):
            return folder
    return None


def prepare_flowers(root: Path, *, url: str = FLOWERS_URL, sha256: str = FLOWERS_SHA256) -> Path:
    """The tf_flowers class folders under ``root``: found there, or downloaded and extracted.

    ``root/flower_photos`` is returned when it holds class folders of images, else ``root`` itself
    when it does (no network either way). Otherwise the archive is downloaded into ``root``,
    verified, extracted into a hidden temporary folder and moved into place, so an interrupted run
    never leaves a half-extracted dataset that would later pass for a complete one.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if (found := find_flowers(root)) is not None:
        return found
    folder = root / FLOWERS_FOLDER
    if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
        # Not ours to delete: it may be the user's own, half-copied data.
        raise DataError(f"{folder} exists but holds no class folders of images; move it away to download tf_flowers")

    made = [path for path in (root, *root.parents) if not path.exists()]  # deepest first
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{FLOWERS_FOLDER}.tgz"
    if not (archive.is_file() and sha256_of(archive) == sha256.lower()):
        logger.info("downloading tf_flowers from %s into %s", url, root)
        try:
            download_file(url, archive, sha256=sha256)
        except DataError as error:
            for path in made:  # a failed download (offline, a typo'd data.root) leaves no empty folders
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise DataError(
                f"{error}. Download it yourself and extract it into {root} (it holds "
                f"{FLOWERS_FOLDER}/<class>/<image>), or use a folder of class sub-folders of your own"
            ) from None
    staging = Path(tempfile.mkdtemp(prefix=".flower_photos.", dir=root))
    try:
        safe_extract_tar(archive, staging)
        extracted = staging / FLOWERS_FOLDER
        if not holds_class_folders(extracted):
            raise DataError(f"{archive} does not hold {FLOWERS_FOLDER}/<class>/<image> folders")
        os.replace(extracted, folder)  # over an empty folder at most (checked above)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    logger.info("tf_flowers ready in %s", folder)
    return folder


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__
