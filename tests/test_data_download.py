"""tf_flowers download and extraction against a local HTTP server: checksums, hints, hostile archives."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from mobilevit_torch.data import download
from mobilevit_torch.data.download import (
    FLOWERS_SHA256,
    FLOWERS_URL,
    download_file,
    prepare_flowers,
    safe_extract_tar,
)
from mobilevit_torch.data.folder import DataError, scan_image_folder

UNREACHABLE = "http://127.0.0.1:9/x.tgz"  # the discard port: nothing listens, the connection is refused


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) of an HTTP server on 127.0.0.1 with an OS-chosen port."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, *, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def flowers_tgz(path: Path) -> str:
    """A miniature flower_photos.tgz (two classes and the LICENSE.txt); returns its SHA-256."""
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "flower_photos/LICENSE.txt", b"CC-BY 2.0")
        add_file(tar, "flower_photos/daisy/1.png", png_bytes((250, 250, 250)))
        add_file(tar, "flower_photos/daisy/2.png", png_bytes((240, 240, 200)))
        add_file(tar, "flower_photos/roses/3.png", png_bytes((200, 0, 20)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_flowers_constants() -> None:
    assert FLOWERS_URL.startswith("https://") and FLOWERS_URL.endswith("/flower_photos.tgz")
    assert len(FLOWERS_SHA256) == 64 and int(FLOWERS_SHA256, 16) >= 0


def test_download_file_verifies_checksum(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    payload = b"x" * 300_000
    (served / "blob.bin").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()

    dest = download_file(f"{url}/blob.bin", tmp_path / "dl" / "blob.bin", sha256=good)
    assert dest.read_bytes() == payload

    with pytest.raises(DataError, match=f"expected sha256 {'0' * 64}, got {good}"):
        download_file(f"{url}/blob.bin", tmp_path / "dl" / "other.bin", sha256="0" * 64)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["blob.bin"]  # no partial or bad file left


def test_download_errors_give_a_hint(tmp_path: Path, server: tuple[str, Path]) -> None:
    dest = tmp_path / "data" / "flower_photos.tgz"
    with pytest.raises(DataError) as info:
        download_file(UNREACHABLE, dest, sha256=FLOWERS_SHA256, timeout=5)
    message = str(info.value)
    assert message.startswith(f"could not download {UNREACHABLE} (")
    assert "data.root" not in message  # the library's own words; train.py adds its options (test_train_config)
    assert not dest.exists() and list(dest.parent.iterdir()) == []

    url, _ = server
    with pytest.raises(DataError, match="HTTP 404"):
        download_file(f"{url}/missing.tgz", dest, sha256=FLOWERS_SHA256)


def test_prepare_flowers_downloads_verifies_and_extracts(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    sha = flowers_tgz(served / "flower_photos.tgz")
    root = tmp_path / "data"

    folder = prepare_flowers(root, url=f"{url}/flower_photos.tgz", sha256=sha)
    assert folder == root.absolute() / "flower_photos"
    samples, classes = scan_image_folder(folder)
    assert classes == ["daisy", "roses"] and len(samples) == 3
    assert (folder / "LICENSE.txt").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["flower_photos"]  # archive and staging removed

    # Already there: no network needed (this URL would fail).
    assert prepare_flowers(root, url=UNREACHABLE, sha256=sha) == folder
    assert prepare_flowers(folder, url=UNREACHABLE, sha256=sha) == folder


def test_prepare_flowers_uses_a_folder_of_classes_as_is(tmp_path: Path) -> None:
    (tmp_path / "tulips").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "tulips" / "a.jpg")
    assert prepare_flowers(tmp_path, url=UNREACHABLE) == tmp_path.absolute()


@pytest.mark.parametrize("inside", [True, False], ids=["root/flower_photos", "root"])
def test_finding_the_flowers_says_nothing_the_scan_says(
    tmp_path: Path, inside: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The probe for class folders is quiet: an empty class or a stray file is warned about once, by the
    scan that reads the folder (it used to be warned about once per probe too: three times in all)."""
    folder = tmp_path / "flower_photos" if inside else tmp_path
    (folder / "tulips").mkdir(parents=True)
    (folder / "daisy").mkdir()
    Image.new("RGB", (4, 4)).save(folder / "daisy" / "a.jpg")
    (folder / "daisy" / "notes.txt").write_text("not a photo")
    with caplog.at_level("WARNING"):
        assert prepare_flowers(tmp_path, url=UNREACHABLE) == folder.absolute()
        assert caplog.messages == []
        samples, classes = scan_image_folder(folder)
    assert classes == ["daisy"] and len(samples) == 1
    assert len(caplog.messages) == 2, caplog.messages
    assert "dropping class 'tulips'" in caplog.messages[1] and "(1 .txt)" in caplog.messages[0]


def test_prepare_flowers_offline_and_bad_checksum(tmp_path: Path, server: tuple[str, Path]) -> None:
    offline = tmp_path / "offline" / "flowers"
    with pytest.raises(DataError, match="could not download") as info:
        prepare_flowers(offline, url=UNREACHABLE)
    assert f"Download it yourself and extract it into {offline.absolute()} (it holds" in str(info.value)
    assert "data.root" not in str(info.value)
    assert not (tmp_path / "offline").exists(), "the folders made for the download go again (a typo'd data.root)"
    url, served = server
    flowers_tgz(served / "flower_photos.tgz")
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="checksum mismatch"):
        prepare_flowers(root, url=f"{url}/flower_photos.tgz", sha256="f" * 64)
    assert list(root.iterdir()) == [], "a folder that was there stays, emptied of what the download wrote"


def test_prepare_flowers_never_deletes_a_foreign_folder(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    sha = flowers_tgz(served / "flower_photos.tgz")
    (tmp_path / "flower_photos").mkdir()
    (tmp_path / "flower_photos" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="exists but holds no class folders"):
        prepare_flowers(tmp_path, url=f"{url}/flower_photos.tgz", sha256=sha)
    assert (tmp_path / "flower_photos" / "notes.txt").read_text() == "mine"

    (tmp_path / "flower_photos" / "notes.txt").unlink()  # an empty leftover is replaced
    assert scan_image_folder(prepare_flowers(tmp_path, url=f"{url}/flower_photos.tgz", sha256=sha))[1] == [
        "daisy",
        "roses",
    ]


def test_prepare_flowers_reuses_a_verified_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    sha = flowers_tgz(root / "flower_photos.tgz")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded although a verified archive was present")

    monkeypatch.setattr(download, "download_file", no_network)
    folder = prepare_flowers(root, sha256=sha)
    assert scan_image_folder(folder)[1] == ["daisy", "roses"]

    # An archive that does not match the checksum (truncated, or another file) is not trusted: fetched again.
    other = tmp_path / "other"
    other.mkdir()
    flowers_tgz(other / "flower_photos.tgz")
    (other / "flower_photos.tgz").write_bytes((other / "flower_photos.tgz").read_bytes()[:-100])  # truncated
    with pytest.raises(AssertionError, match="downloaded although"):
        prepare_flowers(other, sha256=sha)


def hostile(path: Path, build: object) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "ok.txt", b"fine")
        build(tar)  # type: ignore[operator]
    return path


@pytest.mark.parametrize(
    ("build", "named", "why"),
    [
        (lambda tar: add_file(tar, "../evil.txt", b"pwned"), "../evil.txt", "escapes"),
        (lambda tar: add_file(tar, "a/../../evil.txt", b"pwned"), "a/../../evil.txt", "escapes"),
        (lambda tar: add_file(tar, "/tmp/evil-absolute.txt", b"pwned"), "/tmp/evil-absolute.txt", "absolute"),
        (lambda tar: add_link(tar, "passwd", "/etc/passwd"), "passwd", "absolute"),
        (lambda tar: add_link(tar, "up", "../../outside"), "up", "escapes"),
        (lambda tar: add_link(tar, "hard", "../evil.txt", kind=tarfile.LNKTYPE), "hard", "escapes"),
        # Each link alone stays inside, but s2 resolves through s1 to the parent of the folder.
        (lambda tar: (add_link(tar, "s1", "."), add_link(tar, "s2", "s1/..")), "s2", "through the link 's1'"),
        # A link to a sub-folder is fine, writing through it is not: it could have pointed anywhere.
        (lambda tar: (add_link(tar, "d", "sub"), add_file(tar, "d/x.txt", b"x")), "d/x.txt", "through the link"),
        (lambda tar: add_link(tar, "fifo", "", kind=tarfile.FIFOTYPE), "fifo", "device file or FIFO"),
        (lambda tar: add_link(tar, "tty", "", kind=tarfile.CHRTYPE), "tty", "device file or FIFO"),
    ],
)
def test_safe_extract_refuses_hostile_members(tmp_path: Path, build: object, named: str, why: str) -> None:
    archive = hostile(tmp_path / "bad.tgz", build)
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(DataError, match="refusing to extract") as info:
        safe_extract_tar(archive, dest)
    assert repr(named) in str(info.value) and why in str(info.value)
    assert list(dest.iterdir()) == []  # checked before anything is written
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-absolute.txt").exists()


def test_safe_extract_allows_links_that_stay_inside(tmp_path: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "sub/data.txt", b"payload")
        add_link(tar, "sub/alias.txt", "data.txt")
        add_link(tar, "top-alias.txt", "sub/data.txt")
        add_link(tar, "hard.txt", "sub/data.txt", kind=tarfile.LNKTYPE)
        add_file(tar, "./sub/../dotted.txt", b"dotted")

    dest = tmp_path / "dest"
    safe_extract_tar(hostile(tmp_path / "fine.tgz", build), dest)
    for name in ("sub/alias.txt", "top-alias.txt", "hard.txt"):
        assert (dest / name).read_bytes() == b"payload"
    assert (dest / "dotted.txt").read_bytes() == b"dotted"


def test_safe_extract_rejects_non_archives(tmp_path: Path) -> None:
    (tmp_path / "fake.tgz").write_bytes(b"not a tar archive at all" * 10)
    with pytest.raises(DataError, match="could not extract"):
        safe_extract_tar(tmp_path / "fake.tgz", tmp_path / "dest")
