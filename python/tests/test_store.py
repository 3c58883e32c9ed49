"""Round trips through granary.Store on mem:// and file:// stores."""

from __future__ import annotations

import os
import threading

import pytest

import granary


def test_version_is_the_package_version() -> None:
    assert granary.__version__.count(".") == 2
    from importlib.metadata import version

    assert granary.__version__ == version("granary")


def test_put_get_round_trip(store: granary.Store) -> None:
    store.put("a/b.bin", b"hello world")
    assert store.get("a/b.bin") == b"hello world"
    assert isinstance(store.get("a/b.bin"), bytes)


def test_put_replaces_existing_object(store: granary.Store) -> None:
    store.put("k", b"old contents")
    store.put("k", b"new")
    assert store.get("k") == b"new"


def test_empty_object(store: granary.Store) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.stat("empty").size == 0


def test_put_accepts_any_bytes_like(store: granary.Store) -> None:
    store.put("ba", bytearray(b"abc"))
    store.put("mv", memoryview(b"xxabcxx")[2:5])
    assert store.get("ba") == b"abc"
    assert store.get("mv") == b"abc"


def test_put_rejects_str(store: granary.Store) -> None:
    with pytest.raises(TypeError):
        store.put("k", "text")  # type: ignore[arg-type]


def test_ranged_get(store: granary.Store) -> None:
    data = bytes(range(256)) * 4
    store.put("r", data)
    assert store.get("r", offset=10, length=20) == data[10:30]
    assert store.get("r", offset=1000) == data[1000:]
    assert store.get("r", offset=1000, length=100) == data[1000:]  # ends first
    assert store.get("r", offset=len(data)) == b""
    assert store.get("r", offset=len(data) + 5, length=3) == b""
    assert store.get("r", length=0) == b""
    assert store.get("r", offset=5, length=1 << 40) == data[5:]  # huge length: no huge alloc


def test_negative_offset_or_length_is_value_error(store: granary.Store) -> None:
    store.put("r", b"abc")
    with pytest.raises(ValueError):
        store.get("r", offset=-1)
    with pytest.raises(ValueError):
        store.get("r", length=-1)


def test_large_object_round_trip(store: granary.Store) -> None:
    data = os.urandom(3 << 20) * 3  # 9 MiB: crosses the 1 MiB direct-I/O threshold
    store.put("big", data)
    assert store.get("big") == data
    assert store.get("big", offset=(4 << 20) + 3, length=1 << 20) == data[
        (4 << 20) + 3 : (5 << 20) + 3
    ]


def test_stat_and_exists(store: granary.Store) -> None:
    store.put("x/y", b"12345")
    info = store.stat("x/y")
    assert info == ("x/y", 5, info.mtime_ns)
    assert info.key == "x/y" and info.size == 5
    assert info.mtime_ns >= 0 and info.mtime == info.mtime_ns / 1e9
    assert store.exists("x/y") and "x/y" in store
    assert not store.exists("x/z") and "x/z" not in store


def test_list_sorted_with_prefix(store: granary.Store) -> None:
    for key in ["b/2", "a/1", "b/1", "c", "bb"]:
        store.put(key, key.encode())
    assert [o.key for o in store.list()] == ["a/1", "b/1", "b/2", "bb", "c"]
    assert [o.key for o in store.list("b/")] == ["b/1", "b/2"]
    assert [o.key for o in store.list("b")] == ["b/1", "b/2", "bb"]
    assert store.list("nothing") == []
    assert {o.key: o.size for o in store.list()}["bb"] == 2


def test_scan_pages_through_everything(store: granary.Store) -> None:
    keys = [f"k/{i:03d}" for i in range(25)]
    for key in keys:
        store.put(key, b"x")
    assert [o.key for o in store.scan("k/", page_size=7)] == keys
    with pytest.raises(ValueError):
        next(store.scan(page_size=0))


def test_delete(store: granary.Store) -> None:
    store.put("d", b"1")
    store.delete("d")
    assert not store.exists("d")
    with pytest.raises(FileNotFoundError):
        store.delete("d")


def test_put_if_absent(store: granary.Store) -> None:
    store.put_if_absent("once", b"first")
    with pytest.raises(FileExistsError) as info:
        store.put_if_absent("once", b"second")
    assert "once" in str(info.value)
    assert store.get("once") == b"first"


def test_put_if_absent_has_exactly_one_winner(store: granary.Store) -> None:
    winners = []
    errors = []

    def race(i: int) -> None:
        try:
            store.put_if_absent("manifest", f"writer {i}".encode())
            winners.append(i)
        except FileExistsError:
            pass
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(winners) == 1
    assert store.get("manifest") == f"writer {winners[0]}".encode()


def test_get_many_batch(store: granary.Store) -> None:
    store.put("m/0", b"0123456789")
    store.put("m/1", b"abcdefghij")
    bufs = [bytearray(4), bytearray(4), bytearray(8)]
    n = store.get_many([("m/0", 0, bufs[0]), ("m/1", 6, bufs[1]), ("m/0", 5, bufs[2])])
    assert n == [4, 4, 5]
    assert bufs[0] == b"0123" and bufs[1] == b"ghij" and bufs[2][:5] == b"56789"
    assert store.get_many([]) == []


def test_get_many_error_names_the_failing_key(store: granary.Store) -> None:
    store.put("m/0", b"0123")
    with pytest.raises(FileNotFoundError) as info:
        store.get_many([("m/0", 0, bytearray(4)), ("m/missing", 0, bytearray(4))])
    assert "m/missing" in str(info.value)


def test_same_mem_name_is_same_store() -> None:
    a = granary.open("mem://pytest-shared-name")
    b = granary.open("mem://pytest-shared-name")
    a.put("k", b"v")
    assert b.get("k") == b"v"
    b.delete("k")


def test_file_store_accepts_plain_paths(tmp_dir) -> None:
    s = granary.open(tmp_dir / "plain")
    s.put("a/b", b"data")
    assert (tmp_dir / "plain" / "a" / "b").read_bytes() == b"data"
    assert s.url == f"file://{tmp_dir / 'plain'}"
    assert granary.open(str(tmp_dir / "plain")).get("a/b") == b"data"


def test_file_store_persists_across_opens(tmp_dir) -> None:
    url = f"file://{tmp_dir}/s"
    granary.open(url).put("k", b"durable")
    assert granary.open(url).get("k") == b"durable"


def test_closed_store_raises_value_error(store_url: str) -> None:
    s = granary.open(store_url)
    s.close()
    assert s.closed
    with pytest.raises(ValueError, match="closed"):
        s.get("k")
    s.close()  # idempotent


def test_non_ascii_keys(store: granary.Store) -> None:
    store.put("données/é.bin", b"1")
    assert [o.key for o in store.list()] == ["données/é.bin"]
    assert store.get("données/é.bin") == b"1"
