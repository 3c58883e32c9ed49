"""The node-local cache of s3:// stores from Python and the CLI, against the S3 test server:
options as keywords, URL query and environment; stats by tier; warm, stat, evict, verify."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

import granary
import granary.cache


def test_open_with_cache_keywords_counts_hits_by_tier(s3_url: str, tmp_dir: pathlib.Path) -> None:
    payload = os.urandom(5 << 20)
    with granary.open(s3_url) as plain:
        plain.put("blob", payload)
        assert plain.cache_stats() is None
    cache_dir = tmp_dir / "cache"
    with granary.open(s3_url, cache_dir=cache_dir, cache_bytes="1G", ram_cache_bytes=64 << 20) as s:
        assert s.get("blob") == payload
        assert s.get("blob", 1 << 20, 1000) == payload[1 << 20 : (1 << 20) + 1000]
        st = s.cache_stats()
        assert st["misses"] == 3 and st["miss_bytes"] == len(payload)
        assert st["ram_hits"] == 1 and st["ram_hit_bytes"] == 1000
        assert st["disk_bytes"] > len(payload)
    # A new handle (a restarted process) reads from disk; the URL query says the same thing.
    with granary.open(f"{s3_url}?cache_dir={cache_dir}") as s:
        assert s.get("blob") == payload
        st = s.cache_stats()
        assert st["misses"] == 0 and st["disk_hits"] == 3
    info = granary.cache.stat(cache_dir)
    assert info["pages"] == 3 and info["objects"] == 1
    assert info["misses"] == 3 and info["disk_hits"] == 3  # summed over closed handles
    assert granary.cache.verify(cache_dir) == {
        "pages": 3, "bytes": info["bytes"], "removed": 0}
    assert granary.cache.evict(cache_dir, 0) == info["bytes"]
    assert granary.cache.stat(cache_dir)["pages"] == 0


def test_an_object_replaced_in_the_bucket_is_never_served_from_the_cache(
    s3_url: str, tmp_dir: pathlib.Path
) -> None:
    old, new = os.urandom(3 << 20), os.urandom((3 << 20) + 7)
    cache_dir = tmp_dir / "cache"
    with granary.open(s3_url) as writer, granary.open(
        s3_url, cache_dir=cache_dir, ram_cache_bytes=64 << 20
    ) as cached:
        writer.put("obj", old)
        assert cached.get("obj") == old and cached.get("obj") == old
        assert cached.cache_stats()["ram_hits"] == 2
        with pytest.raises(FileNotFoundError, match="absent"):
            cached.get("absent")
        with pytest.raises(ValueError, match="1024"):
            cached.get("k" * 1100, 0, 10)  # the key check of the batched HEADs
        with pytest.raises(ValueError, match=r"'\.\.' component"):
            cached.get("../escape", 0, 10)
        writer.put("obj", new)  # another node replaces it, behind this cache's back
        assert cached.get("obj") == new
        assert cached.get("obj", 1 << 20, 100) == new[1 << 20 : (1 << 20) + 100]
        assert cached.cache_stats()["stale"] == 1
    # Trusting ETags for an hour (immutable data): warm hits send no request, so the old
    # version stays visible to that handle's reads until it next misses (stat still asks).
    with granary.open(f"{s3_url}?cache_dir={cache_dir}&cache_revalidate_seconds=3600") as s:
        assert s.get("obj") == new
        with granary.open(s3_url) as writer:
            writer.put("obj", old)
        assert s.get("obj", 0, len(new)) == new
        assert s.stat("obj").size == len(old)
    with granary.open(f"{s3_url}?cache_dir={cache_dir}") as s:
        assert s.get("obj") == old


def test_cache_from_environment_and_bad_sizes(
    s3_url: str, tmp_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with granary.open(s3_url) as s:
        s.put("k", b"value")
    monkeypatch.setenv("GRANARY_CACHE_DIR", str(tmp_dir / "envcache"))
    with granary.open(s3_url) as s:
        assert s.get("k") == b"value"
        assert s.cache_stats()["misses"] == 1
    with pytest.raises(ValueError, match="cache_bytes"):
        granary.open(s3_url, cache_bytes="lots")
    with pytest.raises(ValueError, match="byte size"):
        granary.open(f"{s3_url}?cache_bytes=lots")


def test_datasets_read_through_the_cache(s3_url: str, tmp_dir: pathlib.Path) -> None:
    import granary.data as gd

    with gd.Writer(s3_url + "/ds", shard_bytes=64 << 10) as w:
        for i in range(200):
            w.add(f"s{i}", {"bin": bytes([i % 256]) * 1000})
    url = f"{s3_url}/ds?cache_dir={tmp_dir / 'c'}"
    for _ in range(2):
        ds = gd.Dataset(url, as_bytes=True)
        got = ds.get_batch(list(range(200)))
        assert [s["bin"] for s in got] == [bytes([i % 256]) * 1000 for i in range(200)]
    info = granary.cache.stat(tmp_dir / "c")
    assert info["pages"] > 0 and info["disk_hits"] > 0


def test_cli_warm_then_cache_stat_evict_verify(
    granary_cli: str, s3_url: str, tmp_dir: pathlib.Path
) -> None:
    with granary.open(s3_url) as s:
        for i in range(3):
            s.put(f"model/part-{i}", os.urandom(3 << 20))
        s.put("other/x", b"x")
    cache_dir = str(tmp_dir / "cache")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([granary_cli, *args], capture_output=True, text=True, timeout=300)

    warm = run("warm", s3_url, "model/", "--cache-dir", cache_dir)
    assert warm.returncode == 0, warm.stderr
    assert "warmed 3 objects" in warm.stdout and "misses:      6" in warm.stdout
    again = run("warm", f"{s3_url}?cache_dir={cache_dir}", "model/")
    assert again.returncode == 0 and "disk hits:   6" in again.stdout
    stat = run("cache", "stat", cache_dir)
    assert stat.returncode == 0 and "pages:       6" in stat.stdout
    assert "objects:     3" in stat.stdout
    verify = run("cache", "verify", cache_dir)
    assert verify.returncode == 0 and "removed 0 damaged" in verify.stdout
    evict = run("cache", "evict", cache_dir, "--keep", "4M")
    assert evict.returncode == 0
    assert granary.cache.stat(cache_dir)["bytes"] <= 4 << 20
    no_cache = run("warm", s3_url)
    assert no_cache.returncode == 1 and "no cache" in no_cache.stderr
    assert run("cache", "stat", str(tmp_dir / "nothing")).returncode == 1
