"""Status codes become ordinary Python exceptions that name the key or path."""

from __future__ import annotations

import errno
import gc
import os
import pathlib
import subprocess

import pytest

import granary


def test_missing_key_is_file_not_found_naming_the_key(store: granary.Store) -> None:
    with pytest.raises(FileNotFoundError) as info:
        store.get("no/such/key")
    e = info.value
    assert "no/such/key" in str(e)
    assert e.errno == errno.ENOENT
    assert e.filename == "no/such/key"
    assert e.status_code == "NotFound"
    for call in (
        lambda: store.stat("no/such/key"),
        lambda: store.get_into("no/such/key", bytearray(4)),
        lambda: store.get("no/such/key", length=4),
        lambda: store.delete("no/such/key"),
    ):
        with pytest.raises(FileNotFoundError, match="no/such/key"):
            call()


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/", "", "a/./b", ".granary/x"])
def test_bad_keys_are_value_errors(store: granary.Store, key: str) -> None:
    with pytest.raises(ValueError) as info:
        store.put(key, b"data")
    assert info.value.status_code == "InvalidArgument"
    with pytest.raises(ValueError):
        store.get(key)


def test_bad_key_never_escapes_file_store(tmp_dir: pathlib.Path) -> None:
    s = granary.open(tmp_dir / "root")
    with pytest.raises(ValueError, match=r"\.\./escape"):
        s.put("../escape", b"x")
    assert not (tmp_dir / "escape").exists()


def test_put_if_absent_twice_is_file_exists(store: granary.Store) -> None:
    store.put_if_absent("k", b"1")
    with pytest.raises(FileExistsError) as info:
        store.put_if_absent("k", b"2")
    assert info.value.errno == errno.EEXIST
    assert "k" in str(info.value)


def test_s3_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="colour"):
        granary.open("s3://bucket/prefix?colour=blue")
    # Nothing listens on port 1: UnavailableError naming the endpoint, after the retries.
    with pytest.raises(granary.UnavailableError, match="127.0.0.1:1"):
        granary.open("s3://bucket/prefix?endpoint=http://127.0.0.1:1")


@pytest.mark.parametrize("url", ["http://example.com/x", "mem://", "file://remotehost/x", ""])
def test_bad_urls_are_value_errors(url: str) -> None:
    with pytest.raises(ValueError):
        granary.open(url)


def test_missing_root_without_create_is_file_not_found(tmp_dir: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        granary.open(tmp_dir / "absent", create_if_missing=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_denied_is_permission_error(tmp_dir: pathlib.Path) -> None:
    root = tmp_dir / "ro"
    s = granary.open(root)
    root.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            s.put("k", b"x")
    finally:
        root.chmod(0o700)


def test_exception_hierarchy() -> None:
    assert issubclass(granary.GranaryError, OSError)
    for cls in (granary.DataLossError, granary.UnavailableError, granary.ResourceExhaustedError):
        assert issubclass(cls, granary.GranaryError)
    e = granary.DataLossError("chunk 3 of 'a/b': crc mismatch")
    assert str(e) == "chunk 3 of 'a/b': crc mismatch"
    e.filename = "a/b"
    assert str(e) == "chunk 3 of 'a/b': crc mismatch"  # no "[Errno None]" noise
    full = granary.ResourceExhaustedError(errno.ENOSPC, "disk full", "k")
    assert full.errno == errno.ENOSPC and "disk full" in str(full)


@pytest.fixture
def small_fs(tmp_dir: pathlib.Path):
    """A 2 MiB tmpfs mounted in tmp_dir (needs root); skips the test where mounting is refused."""
    mount_point = tmp_dir / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "granary-test", str(mount_point)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here: " + done.stderr.decode().strip())
    try:
        yield mount_point
    finally:
        gc.collect()  # stores caught in exception reference cycles hold the directory open
        if subprocess.run(["umount", str(mount_point)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


@pytest.mark.parametrize("how", ["put", "writer"])
def test_disk_full_is_os_error_with_enospc(small_fs: pathlib.Path, how: str) -> None:
    with granary.open(small_fs / "store") as s:
        s.put("small", b"fits")
        with pytest.raises(OSError) as info:
            if how == "put":
                s.put("big", bytes(8 << 20))
            else:
                with s.writer("big", part_bytes=1 << 20) as w:
                    for _ in range(8):
                        w.write(bytes(1 << 20))
        e = info.value
        assert e.errno == errno.ENOSPC
        assert isinstance(e, granary.ResourceExhaustedError)
        assert "big" in str(e)
        assert not s.exists("big")
        assert s.get("small") == b"fits"
