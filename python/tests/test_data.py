"""granary.data: Writer, Dataset, Batch, Loader and the torch adapters, end to end."""

from __future__ import annotations

import gc
import os
import pickle

import pytest

import granary
import granary.data as gd

N = 600


def payload(i: int) -> bytes:
    return (f"sample-{i}:".encode() + bytes([i % 251]) * (30 + (i * 7919) % 900))


def write(url, n=N, shard_bytes=32 << 10, **kw):
    with gd.Writer(url, shard_bytes=shard_bytes, **kw) as w:
        for i in range(n):
            w.add(f"k{i:05d}", {"bin": payload(i), "cls": i % 10, "txt": f"text {i}"})
    return w.stats


@pytest.fixture
def ds_url(tmp_dir):
    url = os.path.join(tmp_dir, "ds")
    write(url)
    return url


def test_round_trip_fields_and_lookup(ds_url):
    ds = gd.Dataset(ds_url)
    assert len(ds) == N
    assert ds.version == 1
    assert set(ds.fields) == {"bin", "cls", "txt"}
    assert len(ds.shards) > 3
    s = ds[17]
    assert s["__key__"] == "k00017" and s["__index__"] == 17
    assert isinstance(s["bin"], memoryview) and s["bin"].readonly
    assert bytes(s["bin"]) == payload(17)
    assert int(bytes(s["cls"])) == 7
    assert bytes(s["txt"]) == b"text 17"
    assert bytes(ds[-1]["bin"]) == payload(N - 1)
    assert ds.key(5) == "k00005"
    assert ds.index_of("k00123") == 123
    with pytest.raises(KeyError):
        ds.index_of("nope")
    with pytest.raises(IndexError):
        ds[N]
    with pytest.raises(IndexError):
        ds.get_batch([0, N])
    b = gd.Dataset(ds_url, as_bytes=True)[3]
    assert b["bin"] == payload(3)


def test_get_batch_order_repeats_and_views_outlive_batch(ds_url):
    ds = gd.Dataset(ds_url)
    idx = [5, 500, 5, 0, 599, 42]
    b = ds.get_batch(idx)
    assert len(b) == len(idx)
    assert b.indices() == idx
    assert b.keys() == [f"k{i:05d}" for i in idx]
    assert [bytes(v) for v in b.field("bin")] == [payload(i) for i in idx]
    assert b.nbytes > sum(len(payload(i)) for i in idx)
    view = b[1]["bin"]
    del b
    gc.collect()
    ds.get_batch(list(range(100)))  # reuse of freed buffers must not touch the live view
    assert bytes(view) == payload(500)
    import numpy as np
    arr = np.array(idx, dtype=np.int64)
    assert ds.get_batch(arr).indices() == idx


def test_writer_exception_publishes_nothing_and_append_versions(tmp_dir):
    url = os.path.join(tmp_dir, "ds")
    with pytest.raises(RuntimeError):
        with gd.Writer(url) as w:
            w.add("a", {"x": b"1"})
            raise RuntimeError("boom")
    with pytest.raises(FileNotFoundError):
        gd.Dataset(url)
    write(url, n=100)
    with pytest.raises(FileExistsError):
        gd.Writer(url)
    with gd.Writer(url, append=True) as w:
        w.add("new", {"x": b"2", "bin": b"zz"})
    assert w.stats["version"] == 2 and w.stats["total_samples"] == 101
    latest, pinned = gd.Dataset(url), gd.Dataset(url, version=1)
    assert len(latest) == 101 and len(pinned) == 100
    assert latest.index_of("new") == 100 and bytes(latest[100]["x"]) == b"2"
    assert bytes(pinned[99]["bin"]) == payload(99)


def test_bad_values_are_rejected(tmp_dir):
    with gd.Writer(os.path.join(tmp_dir, "ds")) as w:
        with pytest.raises(TypeError):
            w.add("k", {"x": 1.5})
        with pytest.raises(TypeError):
            w.add("k", {"x": True})
        with pytest.raises(ValueError):
            w.add("", {"x": b"1"})
        w.add("k", {"x": bytearray(b"ok"), "y": memoryview(b"abc")[1:]})
    s = gd.Dataset(os.path.join(tmp_dir, "ds"))[0]
    assert bytes(s["x"]) == b"ok" and bytes(s["y"]) == b"bc"


def _shard_path(url, ds):
    return os.path.join(url, ds.shards[0][0])


def test_corrupt_record_is_dataloss_or_skipped(ds_url):
    ds = gd.Dataset(ds_url)
    path = _shard_path(ds_url, ds)
    with open(path, "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    n0 = ds.shards[0][2]
    with pytest.raises(granary.DataLossError) as e:
        gd.Dataset(ds_url, direct_io=False).get_batch(list(range(n0)))
    assert ds.shards[0][0] in str(e.value)
    skip = gd.Dataset(ds_url, skip_corrupt=True)
    b = skip.get_batch(list(range(n0)))
    assert b.corrupt_count == 1
    bad = [i for i in range(n0) if b[i] is None]
    assert len(bad) == 1
    assert skip.stats()["corrupt_skipped"] == 1
    with pytest.raises(granary.DataLossError):
        ds.verify()


def test_missing_shard_fails_at_open(ds_url):
    ds = gd.Dataset(ds_url)
    os.remove(_shard_path(ds_url, ds))
    with pytest.raises(FileNotFoundError) as e:
        gd.Dataset(ds_url)
    assert os.path.basename(ds.shards[0][0]) in str(e.value)


def test_loader_epochs_exactly_once_and_resume(ds_url):
    ds = gd.Dataset(ds_url)
    ld = gd.Loader(ds, batch_size=64, seed=5)
    assert len(ld) == (N + 63) // 64
    e0 = [i for b in ld for i in b.indices()]
    assert sorted(e0) == list(range(N)) and e0 != list(range(N))
    assert e0 == gd.epoch_order(N, 0, 5)
    assert ld.epoch == 1
    e1 = [i for b in ld for i in b.indices()]
    assert sorted(e1) == list(range(N)) and e1 != e0
    # Resume mid-epoch 2 from a state dict, in a new loader with another batch size.
    ld.set_epoch(2)
    it = iter(ld)
    seen = [i for _ in range(3) for i in next(it).indices()]
    state = ld.state_dict()
    assert state["position"] == 192 and state["epoch"] == 2
    assert all(isinstance(v, int) for v in state.values()) and len(state) <= 8
    ld2 = gd.Loader(gd.Dataset(ds_url), batch_size=100, seed=5)
    ld2.load_state_dict(pickle.loads(pickle.dumps(state)))
    rest = [i for b in ld2 for i in b.indices()]
    assert seen + rest == gd.epoch_order(N, 2, 5)
    with pytest.raises(ValueError):
        gd.Loader(ds, batch_size=8, seed=6).load_state_dict(state)


def test_loader_ranks_transform_collate_and_cache(ds_url):
    ds = gd.Dataset(ds_url)
    seen = []
    for r in range(3):
        ld = gd.Loader(ds, batch_size=50, rank=r, world_size=3, remainder="uneven",
                       transform=lambda s: s["__index__"], collate=sorted)
        for b in ld:
            assert b == sorted(b)
            seen += b
    assert sorted(seen) == list(range(N))
    ld = gd.Loader(ds, batch_size=32, cache_bytes=ds.nbytes // 2 + 100_000, seed=1)
    for _ in range(3):
        for b in ld:
            for s in b:
                assert bytes(s["bin"]) == payload(s["__index__"])
    st = ld.stats()
    assert st["cache_hits"] > 0 and 0 < st["cache_hit_rate"] <= 1
    loc = gd.Loader(ds, batch_size=32, locality=2, seed=1)
    assert sorted(i for b in loc for i in b.indices()) == list(range(N))


def test_dataset_pickles_by_url(ds_url):
    ds = gd.Dataset(ds_url, as_bytes=True)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert len(ds2) == N and ds2[3]["bin"] == payload(3)


def test_torch_dataloader_workers_match_loader_and_resume(ds_url):
    torch = pytest.importorskip("torch")
    expected = gd.epoch_order(N, 0, 9)
    it = gd.IterableDataset(ds_url, batch_size=40, seed=9)
    dl = torch.utils.data.DataLoader(it, batch_size=None, num_workers=2)
    got = [s["__index__"] for b in dl for s in b]
    assert got == expected
    assert bytes(gd.Dataset(ds_url)[expected[0]]["bin"]) == payload(expected[0])
    tl = gd.TorchLoader(ds_url, batch_size=40, num_workers=2, seed=9)
    first = []
    for k, b in enumerate(tl):
        first += [s["__index__"] for s in b]
        if k == 4:
            state = tl.state_dict()
            break
    assert state["position"] == 200
    tl3 = gd.TorchLoader(ds_url, batch_size=40, num_workers=3, seed=9)
    tl3.load_state_dict(state)
    rest = [s["__index__"] for b in tl3 for s in b]
    assert first + rest == expected
    assert tl3.state_dict()["epoch"] == 1 and tl3.state_dict()["position"] == 0


def test_iterable_dataset_pickles_for_spawned_workers(ds_url):
    torch = pytest.importorskip("torch")
    it = gd.IterableDataset(gd.Dataset(ds_url), batch_size=100, seed=2)
    dl = torch.utils.data.DataLoader(it, batch_size=None, num_workers=1,
                                     multiprocessing_context="spawn")
    got = [s["__index__"] for b in dl for s in b]
    assert got == gd.epoch_order(N, 0, 2)
    assert len(it) == (N + 99) // 100


def test_loader_surfaces_corruption_or_skips_and_counts(ds_url):
    ds = gd.Dataset(ds_url)
    with open(_shard_path(ds_url, ds), "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(granary.DataLossError) as e:
        for _ in gd.Loader(gd.Dataset(ds_url), batch_size=64, seed=3):
            pass
    assert ds.shards[0][0] in str(e.value)
    ld = gd.Loader(gd.Dataset(ds_url, skip_corrupt=True), batch_size=64, seed=3)
    samples = [s for b in ld for s in b]
    assert len(samples) == N and sum(s is None for s in samples) == 1
    assert ld.stats()["corrupt_skipped"] == 1


def test_iterable_dataset_length_follows_the_remainder_rule(ds_url):
    pytest.importorskip("torch")
    for remainder, drop_last in (("uneven", False), ("pad", False), (None, True)):
        for r in range(7):
            it = gd.IterableDataset(ds_url, batch_size=16, rank=r, world_size=7,
                                    remainder=remainder, drop_last=drop_last)
            ld = gd.Loader(gd.Dataset(ds_url), batch_size=16, rank=r, world_size=7,
                           remainder=remainder, drop_last=drop_last)
            assert len(it) == len(ld) == sum(1 for _ in ld)
