"""`granary model inspect` and `granary model bench` run as a subprocess on safetensors files
written by the reference library (safetensors.torch.save_file), on a sharded model written by
granary.models.save, and on hand-made files (misaligned or damaged). What inspect reports is
checked against the files' headers parsed here, independently of granary."""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
from typing import Any, Dict

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")
gm = pytest.importorskip("granary.models")


def run(cli: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([cli, *args], capture_output=True, timeout=300)


def run_json(cli: str, *args: str) -> Dict[str, Any]:
    done = run(cli, *args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def header(path: pathlib.Path) -> tuple[int, dict]:
    """(data start, header JSON) of a safetensors file, as the format defines them."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return 8 + n, json.loads(raw[8:8 + n])


def write_raw(path: pathlib.Path, entries: dict, data: bytes) -> None:
    """A safetensors file laid out exactly as `entries` say (the reference writer would reorder)."""
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.fixture
def tensors() -> Dict[str, Any]:
    g = torch.Generator().manual_seed(5)
    return {
        "embed.weight": torch.randn(64, 32, generator=g),
        "layers.0.bias": torch.randn(3, generator=g).to(torch.float16),
        "layers.0.weight": torch.randn(128, 96, generator=g).to(torch.bfloat16),
        "steps": torch.arange(10, dtype=torch.int64),
    }


def test_inspect_single_file_matches_header(granary_cli: str, tmp_dir: pathlib.Path,
                                            tensors: Dict[str, Any]) -> None:
    path = tmp_dir / "model.safetensors"
    st.save_file(tensors, str(path), metadata={"format": "pt", "note": "tiny"})
    data_start, entries = header(path)
    out = run_json(granary_cli, "model", "inspect", str(path))

    assert out["files"] == [{"url": str(path), "size_bytes": path.stat().st_size,
                             "data_start": data_start, "tensors": 4,
                             "metadata": {"format": "pt", "note": "tiny"}}]
    by_name = {t["name"]: t for t in out["tensors"]}
    assert set(by_name) == set(tensors)
    for name, t in tensors.items():
        entry, got = entries[name], by_name[name]
        assert got["dtype"] == entry["dtype"]
        assert got["shape"] == list(t.shape)
        assert got["bytes"] == t.numel() * t.element_size()
        assert got["offset"] == data_start + entry["data_offsets"][0]
        assert got["file"] == 0
        assert got["misaligned"] is False  # the reference writer puts the widest dtypes first
    # Listed in file order.
    assert [t["offset"] for t in out["tensors"]] == sorted(t["offset"] for t in out["tensors"])
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert out["total_tensors"] == 4 and out["total_bytes"] == total
    assert out["by_dtype"]["F32"] == {"tensors": 1, "bytes": 64 * 32 * 4}
    assert out["by_dtype"]["BF16"] == {"tensors": 1, "bytes": 128 * 96 * 2}
    assert out["misaligned_tensors"] == 0 and out["index_metadata"] is None

    text = run(granary_cli, "model", "inspect", str(path))
    assert text.returncode == 0, text.stderr.decode()
    lines = text.stdout.decode().splitlines()
    assert lines[0] == f"model: 1 files, 4 tensors, {total / 1024:.1f} KiB ({total} B)"
    assert "  metadata format = pt" in lines
    row = next(line for line in lines if line.startswith("layers.0.weight "))
    assert row.split()[1:4] == ["BF16", "[128,", "96]"]
    assert str(by_name["layers.0.weight"]["offset"]) in row.split()
    assert "MISALIGNED" not in text.stdout.decode()


def test_inspect_sharded_directory_index_and_urls(granary_cli: str, tmp_dir: pathlib.Path,
                                                  tensors: Dict[str, Any]) -> None:
    model_dir = tmp_dir / "sharded"
    written = gm.save(tensors, str(model_dir), shard_bytes=16 << 10)
    shards = sorted(p for p in written if p.endswith(".safetensors"))
    assert len(shards) >= 2
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = model_dir / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]

    for source in [str(model_dir), str(index), f"file://{model_dir}", f"file://{index}"]:
        out = run_json(granary_cli, "model", "inspect", source)
        assert out["index_metadata"] == {"total_size": total}, source
        assert [pathlib.Path(f["url"].removeprefix("file://")).name for f in out["files"]] == \
            [pathlib.Path(s).name for s in shards], source
        for t in out["tensors"]:
            f = out["files"][t["file"]]
            assert pathlib.Path(f["url"]).name == weight_map[t["name"]], source
            data_start, entries = header(pathlib.Path(f["url"].removeprefix("file://")))
            assert f["data_start"] == data_start
            assert t["offset"] == data_start + entries[t["name"]]["data_offsets"][0]
        assert sum(f["tensors"] for f in out["files"]) == 4
        assert out["total_bytes"] == total

    # Several files as one model: no index.
    out = run_json(granary_cli, "model", "inspect", *shards)
    assert len(out["files"]) == len(shards) and out["index_metadata"] is None
    assert {t["name"] for t in out["tensors"]} == set(tensors)
    text = run(granary_cli, "model", "inspect", str(model_dir)).stdout.decode()
    assert f'index metadata: {{"total_size":{total}}}' in text


def test_inspect_flags_misaligned_tensors(granary_cli: str, tmp_dir: pathlib.Path) -> None:
    # An odd-length U8 tensor first: the F32 after it starts at an offset that is not a multiple
    # of 4 (the format does not pad), which the loader must stage.
    path = tmp_dir / "odd.safetensors"
    write_raw(path, {"odd": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                     "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [3, 19]}},
              bytes(19))
    data_start, _ = header(path)
    assert (data_start + 3) % 4 != 0
    out = run_json(granary_cli, "model", "inspect", str(path))
    flags = {t["name"]: (t["misaligned"], t["alignment"]) for t in out["tensors"]}
    assert flags == {"odd": (False, 1), "w": (True, 4)}
    assert out["misaligned_tensors"] == 1
    lines = run(granary_cli, "model", "inspect", str(path)).stdout.decode().splitlines()
    assert next(line for line in lines if line.startswith("w ")).endswith("MISALIGNED")
    assert not next(line for line in lines if line.startswith("odd ")).endswith("MISALIGNED")


@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_damaged_model_fails_naming_file_and_tensor(granary_cli: str, tmp_dir: pathlib.Path,
                                                    tensors: Dict[str, Any],
                                                    command: str) -> None:
    good = tmp_dir / "good.safetensors"
    st.save_file(tensors, str(good))
    truncated = tmp_dir / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    done = run(granary_cli, "model", command, str(truncated))
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.startswith(f"granary: model {command} {truncated}: DataLoss: ")
    assert err.count("\n") == 1 and str(truncated) in err and '"layers.0.bias"' in err
    assert done.stdout == b""

    bad_shape = tmp_dir / "bad_shape.safetensors"
    write_raw(bad_shape, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8))
    done = run(granary_cli, "model", command, str(bad_shape))
    assert done.returncode == 1
    assert str(bad_shape) in done.stderr.decode() and '"w"' in done.stderr.decode()

    # An index naming a tensor its file lacks.
    model_dir = tmp_dir / "sharded"
    gm.save(tensors, str(model_dir), shard_bytes=16 << 10)
    index = model_dir / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    doc["weight_map"]["ghost"] = next(iter(doc["weight_map"].values()))
    index.write_text(json.dumps(doc))
    done = run(granary_cli, "model", command, str(model_dir))
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "DataLoss" in err and str(index) in err and "ghost" in err


@pytest.mark.parametrize("cold", [False, True])
def test_bench_reports_rounds_stats_and_ceiling(granary_cli: str, tmp_dir: pathlib.Path,
                                                tensors: Dict[str, Any], cold: bool) -> None:
    model_dir = tmp_dir / "sharded"
    gm.save(tensors, str(model_dir), shard_bytes=16 << 10)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    args = ["model", "bench", str(model_dir), "--rounds", "2", "--request-mib=1", "--threads", "2"]
    out = run_json(granary_cli, *args, *(["--cold"] if cold else []))
    assert out["mode"] == ("cold" if cold else "warm")
    assert out["bytes"] == total and out["tensors"] == 4 and out["files"] >= 2
    assert out["request_bytes"] == 1 << 20 and out["io_threads"] == 2
    assert [r["round"] for r in out["rounds"]] == [1, 2]
    for r in out["rounds"]:
        s = r["stats"]
        assert s["bytes"] == total
        # Every tensor byte came from somewhere (direct reads also cover the aligned edges).
        assert s["cached_bytes"] + s["direct_bytes"] + s["store_bytes"] >= total
        assert s["staged_bytes"] == 0  # the reference layout is aligned
        assert 0 < r["first_tensor_seconds"] <= r["seconds"]
        assert r["gbps"] == pytest.approx(total / r["seconds"] / 1e9)
        assert r["resident_bytes"] >= -1
        if not cold:
            assert s["direct_bytes"] == 0  # warm: everything is in the page cache
    if out["ceiling"] is None:  # only where O_DIRECT is unsupported (tmpfs) with --cold
        assert cold and "O_DIRECT" in out["ceiling_skipped"]
    else:
        assert out["ceiling"]["kind"] == ("o_direct" if cold else "buffered_pread")
        for r in out["rounds"]:
            # The ceiling reads the data buffers (O_DIRECT: their 4 KiB-aligned cover, to EOF).
            assert r["ceiling_bytes"] >= total and r["ceiling_seconds"] > 0
        assert out["ratio"] == pytest.approx(out["median_gbps"] / out["ceiling"]["median_gbps"])

    text = run(granary_cli, *args, *(["--cold"] if cold else []))
    assert text.returncode == 0, text.stderr.decode()
    lines = text.stdout.decode().splitlines()
    assert lines[0].startswith(f"model: {out['files']} files, 4 tensors")
    assert any(line.startswith("median: granary ") for line in lines)
    assert [line.split()[0] for line in lines if line[:5].strip().isdigit()] == ["1", "2"]


def test_bench_loads_misaligned_tensors_through_staging(granary_cli: str,
                                                        tmp_dir: pathlib.Path) -> None:
    path = tmp_dir / "odd.safetensors"
    write_raw(path, {"odd": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                     "w": {"dtype": "F32", "shape": [1024], "data_offsets": [3, 4099]}},
              bytes(4099))
    out = run_json(granary_cli, "model", "bench", str(path), "--rounds", "2", "--cold")
    for r in out["rounds"]:
        assert r["stats"]["bytes"] == 4099
        # Staging is counted on the O_DIRECT path, i.e. wherever the eviction worked.
        if r["stats"]["direct_bytes"] > 0:
            assert r["stats"]["staged_bytes"] == 4096


def test_usage_errors(granary_cli: str, tmp_dir: pathlib.Path, tensors: Dict[str, Any]) -> None:
    path = tmp_dir / "model.safetensors"
    st.save_file(tensors, str(path))
    help_ = run(granary_cli, "model", "--help")
    assert help_.returncode == 0 and help_.stdout.startswith(b"usage: granary model")
    assert b"model" in run(granary_cli, "--help").stdout
    for args in (["model"], ["model", "frob", str(path)], ["model", "inspect"],
                 ["model", "inspect", str(path), "--cold"],
                 ["model", "bench", str(path), "--rounds", "0"],
                 ["model", "bench", str(path), "--threads", "x"],
                 ["model", "bench", str(path), "--request-mib"]):
        done = run(granary_cli, *args)
        assert done.returncode == 2, args
    done = run(granary_cli, "model", "inspect", str(tmp_dir / "missing.safetensors"))
    assert done.returncode == 1 and b"NotFound" in done.stderr
