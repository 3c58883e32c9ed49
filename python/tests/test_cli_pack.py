"""`granary pack` run as a subprocess on WebDataset tars (written by Python's tarfile and by
webdataset.TarWriter) and JSONL on stdin; the datasets are read back with granary.data and
compared byte for byte with what webdataset itself reads from the same tars."""

from __future__ import annotations

import io
import json
import os
import pathlib
import random
import subprocess
import tarfile
from typing import Dict, List, Optional, Tuple

import pytest

gd = pytest.importorskip("granary.data")

Samples = List[Tuple[str, Dict[str, bytes]]]


def run(cli: str, *args: str, stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run([cli, *args], input=stdin, capture_output=True, timeout=300)


def read_back(url: str) -> Samples:
    ds = gd.Dataset(url, as_bytes=True)
    out = []
    for sample in ds.get_batch(list(range(len(ds)))):
        key = sample.pop("__key__")
        sample.pop("__index__", None)
        out.append((key, {name: bytes(value) for name, value in sample.items()}))
    return out


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_pack_tarfile_shards_by_pattern(granary_cli: str, tmp_dir: pathlib.Path) -> None:
    rng = random.Random(1)
    expected: Samples = []
    for shard in range(3):
        with tarfile.open(tmp_dir / f"shards-{shard:06d}.tar", "w") as tar:
            dir_info = tarfile.TarInfo("./part")
            dir_info.type = tarfile.DIRTYPE
            tar.addfile(dir_info)  # directories are not samples
            for i in range(5):
                key = f"part/{shard}_{i:04d}"
                fields = {"jpg": rng.randbytes(rng.randrange(1, 30_000)),
                          "seg.png": rng.randbytes(100), "cls": str(i % 3).encode()}
                for name, data in fields.items():
                    add_member(tar, f"./{key}.{name}", data)
                expected.append((key, fields))
    dst = str(tmp_dir / "ds")
    done = run(granary_cli, "pack", str(tmp_dir / "shards-{000000..000002}.tar"), dst)
    assert done.returncode == 0, done.stderr.decode()
    assert "packed 15 samples" in done.stdout.decode()
    assert read_back(dst) == expected


def test_pack_matches_webdataset_reader(granary_cli: str, tmp_dir: pathlib.Path) -> None:
    wds = pytest.importorskip("webdataset")
    rng = random.Random(2)
    shards = []
    for shard in range(2):
        path = str(tmp_dir / f"wds-{shard}.tar")
        shards.append(path)
        with wds.TarWriter(path) as sink:
            for i in range(20):
                sink.write({"__key__": f"s{shard}/{i:05d}", "jpg": rng.randbytes(5000),
                            "txt": f"caption {i} \u00e9".encode(), "json": b'{"a": 1}'})
    # What webdataset itself reads from the tars, in order, fields as raw bytes.
    reference: Samples = []
    for sample in wds.WebDataset(shards, shardshuffle=False):
        fields = {k: v for k, v in sample.items() if not k.startswith("__")}
        reference.append((sample["__key__"], fields))
    assert len(reference) == 40

    dst = str(tmp_dir / "ds")
    done = run(granary_cli, "pack", str(tmp_dir), dst, "--workers", "2", "--shard-size", "32K")
    assert done.returncode == 0, done.stderr.decode()
    got = read_back(dst)
    assert got == reference
    assert len(gd.Dataset(dst).shards) > 1


def test_pack_jsonl_from_stdin_and_worker_counts_agree(granary_cli: str,
                                                       tmp_dir: pathlib.Path) -> None:
    lines = [json.dumps({"text": f"line {i}", "n": i, "tags": ["a", i]}) for i in range(500)]
    lines[7] = json.dumps({"key": "seven", "text": "\u00fcber"})
    payload = ("\n".join(lines) + "\n").encode()
    results = []
    for workers in ("1", "4"):
        dst = str(tmp_dir / f"ds{workers}")
        done = run(granary_cli, "pack", "-", dst, "--workers", workers, stdin=payload)
        assert done.returncode == 0, done.stderr.decode()
        results.append(read_back(dst))
    assert results[0] == results[1]
    assert results[0][0] == ("000000000000", {"text": b"line 0", "n": b"0", "tags": b'["a",0]'})
    assert results[0][7] == ("seven", {"text": "\u00fcber".encode()})
    assert len(results[0]) == 500


def test_pack_progress_and_quiet(granary_cli: str, tmp_dir: pathlib.Path) -> None:
    src = tmp_dir / "src"
    src.mkdir()
    for i in range(50):
        (src / f"{i:03d}.bin").write_bytes(os.urandom(100))
    done = run(granary_cli, "pack", str(src), str(tmp_dir / "a"), "--quiet")
    assert done.returncode == 0 and done.stdout == b"" and done.stderr == b""
    done = run(granary_cli, "pack", str(src), str(tmp_dir / "b"), "--progress")
    assert done.returncode == 0, done.stderr.decode()
    assert "published version 1" in done.stdout.decode()
    assert b" samples " in done.stderr  # the progress line
    assert [key for key, _ in read_back(str(tmp_dir / "b"))] == [f"{i:03d}" for i in range(50)]
