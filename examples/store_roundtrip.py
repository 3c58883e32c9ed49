#!/usr/bin/env python3
"""A round trip through granary's object store, narrated.

    python examples/store_roundtrip.py DIR [--mib N]

Opens (or creates) a store in DIR and walks through what a training job does with it: atomic
puts, a create-only manifest, streaming a large object through a Writer with a checksum,
listing, a ranged read, a zero-copy read into a numpy buffer, and cleanup. Sizes and MB/s are
printed for each step. Everything it writes lives under the key prefix "demo/" and is deleted
at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import numpy as np

import granary

MiB = 1 << 20


def step(title: str) -> None:
    print(f"\n== {title}")


def rate(nbytes: int, seconds: float) -> str:
    mb_per_s = nbytes / 1e6 / max(seconds, 1e-9)
    return f"{nbytes / MiB:.1f} MiB in {seconds * 1e3:.1f} ms ({mb_per_s:.0f} MB/s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="directory of the store (created if missing)")
    parser.add_argument("--mib", type=int, default=64, help="size of the streamed object")
    args = parser.parse_args()

    store = granary.open(args.dir)
    print(f"granary {granary.__version__}: opened {store.url}")

    step("put: small objects, each replaced atomically")
    store.put("demo/config.json", b'{"lr": 0.001, "steps": 1000}')
    store.put("demo/config.json", b'{"lr": 0.0005, "steps": 2000}')
    print(f"demo/config.json = {store.get('demo/config.json').decode()}")

    step("put_if_absent: a create-only manifest; the second writer loses")
    store.put_if_absent("demo/manifest", b"step=100 rank0.bin")
    try:
        store.put_if_absent("demo/manifest", b"step=100 from another process")
        print("unexpected: second put_if_absent succeeded")
        return 1
    except FileExistsError as e:
        print(f"second put_if_absent -> FileExistsError: {e}")

    step(f"writer: stream {args.mib} MiB in 8 MiB parts; visible only at commit")
    rng = np.random.default_rng(42)
    chunk = rng.integers(0, 256, 4 * MiB, dtype=np.uint8)
    sha = hashlib.sha256()
    total = args.mib * MiB
    start = time.perf_counter()
    with store.writer("demo/shard-000.bin", part_bytes=8 * MiB) as w:
        written = 0
        while written < total:
            piece = chunk[: min(len(chunk), total - written)]
            sha.update(piece)
            w.write(piece)
            written += len(piece)
        assert not store.exists("demo/shard-000.bin"), "visible before commit"
    elapsed = time.perf_counter() - start
    print(f"wrote {rate(total, elapsed)}, hashing included; sha256 {sha.hexdigest()[:16]}...")

    step("list: everything under demo/")
    for info in store.list("demo/"):
        print(f"  {info.size:>12,d} B  {info.key}")

    step("get: the whole object back, checksum verified")
    start = time.perf_counter()
    data = store.get("demo/shard-000.bin")
    elapsed = time.perf_counter() - start
    ok = hashlib.sha256(data).hexdigest() == sha.hexdigest()
    print(f"read {rate(len(data), elapsed)}, checksum {'OK' if ok else 'MISMATCH'}")
    if not ok:
        return 1
    del data

    step("get: a ranged read (1 MiB at offset 10 MiB + 3)")
    offset = 10 * MiB + 3
    part = store.get("demo/shard-000.bin", offset=offset, length=MiB)
    expected = chunk[(offset % len(chunk)) : (offset % len(chunk)) + MiB].tobytes()
    print(f"got {len(part):,d} bytes, match: {part == expected}")

    step("get_into: zero copy into a preallocated numpy buffer")
    buf = np.empty(total, dtype=np.uint8)
    start = time.perf_counter()
    n = store.get_into("demo/shard-000.bin", buf)
    elapsed = time.perf_counter() - start
    ok = hashlib.sha256(buf).hexdigest() == sha.hexdigest()
    print(f"read {rate(n, elapsed)} into numpy, checksum {'OK' if ok else 'MISMATCH'}")
    if not ok:
        return 1

    step("errors are ordinary Python exceptions")
    try:
        store.get("demo/no-such-key")
    except FileNotFoundError as e:
        print(f"missing key -> FileNotFoundError: {e}")
    try:
        store.put("../escape", b"x")
    except ValueError as e:
        print(f"bad key     -> ValueError: {e}")

    step("delete: clean up demo/")
    for info in store.list("demo/"):
        store.delete(info.key)
    print(f"objects left under demo/: {len(store.list('demo/'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
