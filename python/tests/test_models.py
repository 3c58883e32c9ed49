"""granary.models against the reference safetensors library: byte-identical saves, identical
loads (cold through O_DIRECT, warm from the page cache, misaligned tensors), sharded models,
conversions, windows, and errors that name the file and the tensor."""

import gc
import json
import os
import struct

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

import granary  # noqa: E402
import granary.models as gm  # noqa: E402


def _bytes(t):
    return t.detach().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same(got, want):
    assert list(got) == list(want) or sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert _bytes(got[k]) == _bytes(want[k]), k


def every_dtype():
    g = torch.Generator().manual_seed(0)
    out = {
        "f32": torch.randn(64, 33, generator=g),
        "f64": torch.randn(7, generator=g, dtype=torch.float64),
        "f16": torch.randn(5, 3, generator=g).half(),
        "bf16": torch.randn(300, generator=g).bfloat16(),
        "i64": torch.arange(-3, 9),
        "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.arange(5, dtype=torch.int16),
        "i8": torch.arange(-7, 6, dtype=torch.int8),
        "u8": torch.arange(11, dtype=torch.uint8),
        "u16": torch.arange(4).to(torch.uint16),
        "u32": torch.arange(4).to(torch.uint32),
        "u64": torch.arange(4).to(torch.uint64),
        "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(3, generator=g, dtype=torch.complex64),
        "e4m3": torch.randn(9, generator=g).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(9, generator=g).to(torch.float8_e5m2),
        "e4m3fnuz": torch.randn(9, generator=g).to(torch.float8_e4m3fnuz),
        "e5m2fnuz": torch.randn(9, generator=g).to(torch.float8_e5m2fnuz),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "big": torch.randn(512, 1024, generator=g),
    }
    if hasattr(torch, "float8_e8m0fnu"):
        out["e8m0"] = torch.ones(4).to(torch.float8_e8m0fnu)
    return out


def write_unpadded(path, tensors, metadata=None):
    """A valid safetensors file with tensors in the given order and no padding, so everything
    after an odd-length tensor is misaligned (the reference writer sorts by alignment instead)."""
    header, offset, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = metadata
    names = {v: k for k, v in gm._SAFETENSORS.items()}
    for name, t in tensors.items():
        b = _bytes(t)
        header[name] = {"dtype": gm._SAFETENSORS[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    del names
    js = json.dumps(header, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js + b"".join(blobs))


def misaligned_model():
    g = torch.Generator().manual_seed(1)
    return {
        "embed": torch.randn(1000, 257, generator=g).bfloat16(),
        "odd": torch.arange(4097, dtype=torch.int32).to(torch.uint8),
        "l0.norm": torch.randn(257, generator=g).bfloat16(),
        "l0.q": torch.randn(700, 1000, generator=g),  # 2.8 MB, misaligned F32
        "l0.k": torch.randn(3, 5, generator=g, dtype=torch.float64),
        "zero": torch.zeros(0),
        "tail": torch.arange(13, dtype=torch.int64),
    }


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def test_save_is_byte_identical_to_safetensors(tmp_path):
    t = every_dtype()
    for meta in (None, {"format": "pt"}, {"format": "pt", "note": "ünïcode", "a": "b"}):
        st.save_file(t, tmp_path / "ref.safetensors", metadata=meta)
        gm.save(t, tmp_path / "g.safetensors", metadata=meta)
        ref = (tmp_path / "ref.safetensors").read_bytes()
        got = (tmp_path / "g.safetensors").read_bytes()
        if meta is None or len(meta) == 1:
            assert ref == got
        else:
            # The reference keeps metadata in a Rust HashMap: its key order changes from run to
            # run. granary sorts the keys; everything else is identical.
            n = struct.unpack("<Q", ref[:8])[0]
            assert got[:8] == ref[:8] and got[8 + n:] == ref[8 + n:]
            assert json.loads(got[8:8 + n]) == json.loads(ref[8:8 + n])
        assert_same(st.load_file(tmp_path / "g.safetensors"), t)


def test_load_matches_safetensors_cold_warm_and_buffered(tmp_path):
    t = every_dtype()
    path = tmp_path / "m.safetensors"
    st.save_file(t, path)
    ref = {k: v.clone() for k, v in st.load_file(path).items()}  # no mmap left behind
    m = gm.Model(path)
    for how in ("cold", "warm", "buffered"):
        evict(path) if how != "warm" else warm(path)
        got = m.load(direct_io=how != "buffered")
        assert_same(got, ref)
        stats = m.last_stats
        assert stats["bytes"] == m.total_bytes
        if how == "cold":
            assert stats["direct_bytes"] > 0
        if how == "warm":
            assert stats["cached_bytes"] == m.total_bytes


def test_map_resident_shares_the_page_cache_copy_on_write(tmp_path):
    t = every_dtype()
    path = tmp_path / "m.safetensors"
    st.save_file(t, path)  # the reference layout: every tensor aligned
    warm(path)
    m = gm.Model(path)
    got = m.load(map_resident=True)
    assert_same(got, t)
    assert m.last_stats["mapped_bytes"] == m.total_bytes
    got["big"].fill_(7.0)  # copy on write: the file keeps its bytes
    assert_same(gm.load(path), t)
    evict(path)
    got = m.load(map_resident=True)
    assert_same(got, t)
    assert m.last_stats["mapped_bytes"] == 0


def test_misaligned_tensors_load_aligned_and_exact(tmp_path):
    t = misaligned_model()
    path = tmp_path / "m.safetensors"
    write_unpadded(path, t, {"format": "pt"})
    ref = st.load_file(path)  # the reference library reads our hand-written layout too
    assert_same(ref, t)
    del ref  # its mmap would keep the pages cached
    gc.collect()
    for cold in (True, False):
        evict(path) if cold else warm(path)
        m = gm.Model(path)
        got = m.load(request_bytes=64 << 10)
        assert_same(got, t)
        for name, v in got.items():
            if v.numel():
                assert v.data_ptr() % v.element_size() == 0, name
        if cold:
            assert m.last_stats["staged_bytes"] > 0


def test_complex64_after_a_4_byte_tensor_is_8_byte_aligned(tmp_path):
    t = {"u": torch.arange(1).to(torch.uint32), "c": torch.randn(5, dtype=torch.complex64)}
    path = tmp_path / "m.safetensors"
    write_unpadded(path, t)  # "c" starts at offset 4 of the data: aligned for F32, not complex
    for cold in (True, False):
        evict(path) if cold else warm(path)
        got = gm.load(path)
        assert got["c"].data_ptr() % 8 == 0
        assert_same(got, t)


def test_closing_a_stream_while_another_thread_waits_in_next(tmp_path):
    import threading
    t = {f"w{i}": torch.randn(256, 1024) for i in range(16)}  # 16 MiB
    path = tmp_path / "m.safetensors"
    st.save_file(t, path)
    for _ in range(3):
        evict(path)
        m = gm.Model(path)
        s = m._model.read(list(range(16)), io_threads=1, request_bytes=4096)
        got = []
        th = threading.Thread(target=lambda: got.append(next(s)))
        th.start()
        s.close()  # waits for the pending next() instead of freeing the stream under it
        th.join(timeout=60)
        assert not th.is_alive()
        with pytest.raises(StopIteration):
            next(s)


def test_tensors_are_writable_and_outlive_everything(tmp_path):
    t = misaligned_model()
    path = tmp_path / "m.safetensors"
    write_unpadded(path, t)
    got = gm.load(path)
    q = got["l0.q"]
    del got
    gc.collect()
    assert torch.equal(q, t["l0.q"])
    q.mul_(2)  # plain CPU tensor memory
    assert torch.equal(q, t["l0.q"] * 2)


def test_names_dtype_and_layer_order(tmp_path):
    g = torch.Generator().manual_seed(2)
    t = {"lm_head.weight": torch.randn(8, 4, generator=g),
         "model.norm.weight": torch.randn(4, generator=g),
         "model.layers.10.w": torch.randn(4, generator=g),
         "model.layers.2.w": torch.randn(4, generator=g),
         "model.embed_tokens.weight": torch.randn(8, 4, generator=g),
         "model.layers.2.ids": torch.arange(4)}
    path = tmp_path / "m.safetensors"
    st.save_file(t, path)
    got = gm.load(path, names=["model.layers.2.w", "model.layers.2.ids"], dtype=torch.float16)
    assert sorted(got) == ["model.layers.2.ids", "model.layers.2.w"]
    assert got["model.layers.2.w"].dtype == torch.float16
    assert got["model.layers.2.ids"].dtype == torch.int64  # integers keep their dtype
    assert torch.equal(got["model.layers.2.w"], t["model.layers.2.w"].half())
    order = [n for n, _ in gm.iter_load(path, order="layer")]
    assert order == ["model.embed_tokens.weight", "model.layers.2.ids", "model.layers.2.w",
                     "model.layers.10.w", "lm_head.weight", "model.norm.weight"]
    with pytest.raises(KeyError, match="nope"):
        gm.load(path, names=["nope"])
    with pytest.raises(ValueError):
        gm.load(path, device="cpu", names=None, window_bytes=None) and gm.iter_load(
            path, order="random").__next__()


def test_iter_load_holds_at_most_its_window(tmp_path):
    t = {f"w{i:02d}": torch.full((256, 1024), float(i)) for i in range(32)}  # 1 MiB each
    path = tmp_path / "m.safetensors"
    st.save_file(t, path)
    m = gm.Model(path)
    seen = 0
    for name, v in m.iter_load(window_bytes=4 << 20):
        assert torch.equal(v, t[name])
        seen += 1
    assert seen == 32
    assert m.last_stats["peak_window_bytes"] <= (4 << 20) + 8192
    # Converting loads stream through the default window too.
    got = m.load(dtype=torch.bfloat16)
    assert m.last_stats["peak_window_bytes"] <= gm.DEFAULT_WINDOW_BYTES + 8192
    assert got["w05"].dtype == torch.bfloat16


def test_sharded_save_and_load_like_hugging_face(tmp_path):
    t = every_dtype()
    files = gm.save(t, tmp_path / "sharded", shard_bytes=600_000)
    index_path = tmp_path / "sharded" / "model.safetensors.index.json"
    assert files[-1].endswith("model.safetensors.index.json")
    index = json.loads(index_path.read_text())
    assert set(index["weight_map"]) == set(t)
    assert index["metadata"]["total_size"] == sum(len(_bytes(v)) for v in t.values())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    merged = {}
    for s in shards:  # each shard is a file the reference library reads
        merged.update(st.load_file(tmp_path / "sharded" / s))
    assert_same(merged, t)
    for src in (tmp_path / "sharded", index_path,
                [tmp_path / "sharded" / s for s in shards], f"file://{tmp_path}/sharded"):
        assert_same(gm.load(src), t)
    info = gm.inspect(tmp_path / "sharded")
    assert info["index_metadata"]["total_size"] == index["metadata"]["total_size"]
    assert info["tensors"]["big"]["shape"] == [512, 1024]
    assert info["tensors"]["big"]["dtype"] == "F32"
    # Unsharded directory save.
    gm.save(t, tmp_path / "single")
    assert_same(gm.load(tmp_path / "single"), t)


def test_mem_store_round_trip():
    t = misaligned_model()
    gm.save(t, "mem://models-test-store")
    m = gm.Model("mem://models-test-store")
    assert_same(m.load(), t)
    assert m.last_stats["store_bytes"] == m.total_bytes


def test_damaged_files_name_file_and_tensor(tmp_path):
    t = misaligned_model()
    path = tmp_path / "m.safetensors"
    write_unpadded(path, t)
    good = path.read_bytes()
    with pytest.raises(FileNotFoundError):
        gm.load(tmp_path / "missing.safetensors")
    # A header length beyond the file.
    path.write_bytes(struct.pack("<Q", 1 << 40) + good[8:])
    with pytest.raises(granary.DataLossError, match="m.safetensors"):
        gm.load(path)
    # A shape that disagrees with its byte range names the tensor.
    n = struct.unpack("<Q", good[:8])[0]
    header = good[8:8 + n].replace(b'"shape":[700,1000]', b'"shape":[700,1001]')
    path.write_bytes(good[:8] + header + good[8 + n:])
    with pytest.raises(granary.DataLossError, match="l0.q"):
        gm.inspect(path)
    # Truncated after opening: tensors before the cut are fine, the error names a tensor.
    path.write_bytes(good)
    m = gm.Model(path)
    os.truncate(path, len(good) - 50)
    evict(path)
    with pytest.raises(granary.DataLossError, match="m.safetensors: tensor"):
        m.load()
    # An index that escapes its directory.
    d = tmp_path / "d"
    d.mkdir()
    path.write_bytes(good)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"embed": "../m.safetensors"}}))
    with pytest.raises(granary.DataLossError, match="index"):
        gm.load(d)


def test_save_refuses_what_safetensors_refuses(tmp_path):
    base = torch.randn(10)
    with pytest.raises(ValueError, match="share memory"):
        gm.save({"a": base, "b": base[2:5]}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="metadata"):
        gm.save({"a": base}, tmp_path / "x.safetensors", metadata={"k": 3})
    with pytest.raises(ValueError, match="shard_bytes"):
        gm.save({"a": base}, tmp_path / "x.safetensors", shard_bytes=10)
    assert not (tmp_path / "x.safetensors").exists()
    # Non-contiguous tensors are saved as their contiguous values.
    m = torch.randn(4, 6)
    gm.save({"t": m.t()}, tmp_path / "t.safetensors")
    assert torch.equal(gm.load(tmp_path / "t.safetensors")["t"], m.t())
