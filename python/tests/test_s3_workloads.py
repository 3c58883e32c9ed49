"""The workloads over s3://: packed datasets, model loading and checkpoints on the S3 test server.

Every test takes the ``s3_url`` fixture (a fresh prefix on the server of scripts/ceph-rgw.sh), so
the file skips without a server and fails under GRANARY_REQUIRE_S3=1. Credentials reach granary
through the AWS_* environment conftest.py sets, as they reach a user's DataLoader workers (one
test puts them in the URL's query instead).
Damage is done the way it happens to real objects: get the object, change it, put it back.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

import granary  # noqa: E402
import granary.data as gd  # noqa: E402
import granary.models as gm  # noqa: E402

MiB = 1 << 20
N = 300  # dataset samples; with 16 KiB shards about ten shards


# ---- helpers -------------------------------------------------------------------------------


def payload(i: int) -> bytes:
    return f"sample-{i}:".encode() + bytes([i % 251]) * (30 + (i * 7919) % 900)


def write_dataset(url: str, n: int = N, **kw) -> dict:
    with gd.Writer(url, shard_bytes=16 << 10, **kw) as w:
        for i in range(n):
            w.add(f"k{i:05d}", {"bin": payload(i), "cls": i % 10})
    return w.stats


def flip_byte(url: str, key: str, offset: int) -> None:
    """Flips one byte of the object `key` of the store at `url` (get, change, put back)."""
    with granary.open(url) as s:
        data = bytearray(s.get(key))
        data[offset] ^= 0xFF
        s.put(key, data)


def tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().reshape(-1).contiguous()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def assert_same(got: dict, want: dict) -> None:
    """Same names, and per tensor the same dtype, shape and bytes (bit-exact, NaNs included)."""
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype, k
        assert got[k].shape == w.shape, k
        assert tensor_bytes(got[k]) == tensor_bytes(w), k


def small_model() -> dict:
    """Several dtypes; two tensors over 8 MiB so their reads are split into pieces."""
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(3000, 1000, generator=g).bfloat16(),   # 6 MB
        "layers.0.q": torch.randn(2500, 1000, generator=g),                # 10 MB
        "layers.0.norm": torch.randn(1000, generator=g).half(),
        "layers.1.k": torch.randn(1100, 1000, generator=g, dtype=torch.float64),  # 8.8 MB
        "layers.1.ids": torch.arange(-50, 50, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(13, dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


# ---- datasets ------------------------------------------------------------------------------


def test_dataset_round_trip_lookup_verify_and_append(s3_url: str) -> None:
    with pytest.raises(RuntimeError):
        with gd.Writer(s3_url, shard_bytes=16 << 10) as w:
            w.add("a", {"bin": b"1" * 40_000})  # more than a shard: one is uploaded
            raise RuntimeError("boom")
    with pytest.raises(FileNotFoundError):
        gd.Dataset(s3_url)  # a writer left with an exception publishes nothing
    stats = write_dataset(s3_url)
    assert stats["version"] == 1
    ds = gd.Dataset(s3_url)
    assert len(ds) == N and ds.version == 1 and set(ds.fields) == {"bin", "cls"}
    assert len(ds.shards) >= 5, ds.shards
    s = ds[17]
    assert s["__key__"] == "k00017" and bytes(s["bin"]) == payload(17)
    assert int(bytes(s["cls"])) == 7
    idx = [5, N - 1, 5, 0, 150, 42]
    b = ds.get_batch(idx)
    assert b.indices() == idx and b.keys() == [f"k{i:05d}" for i in idx]
    assert [bytes(v) for v in b.field("bin")] == [payload(i) for i in idx]
    every = ds.get_batch(range(N))
    assert [bytes(v) for v in every.field("bin")] == [payload(i) for i in range(N)]
    assert ds.key(123) == "k00123" and ds.index_of("k00123") == 123
    with pytest.raises(KeyError):
        ds.index_of("nope")
    ds.verify()
    with pytest.raises(FileExistsError):
        gd.Writer(s3_url)
    with gd.Writer(s3_url, append=True) as w:
        w.add("new", {"bin": b"zz", "cls": 1})
    assert w.stats["version"] == 2 and w.stats["total_samples"] == N + 1
    latest, pinned = gd.Dataset(s3_url), gd.Dataset(s3_url, version=1)
    assert len(latest) == N + 1 and len(pinned) == N
    assert latest.index_of("new") == N and bytes(latest[N]["bin"]) == b"zz"
    assert bytes(pinned[N - 1]["bin"]) == payload(N - 1)
    latest.verify()


def test_dataset_loader_epoch_and_resume(s3_url: str) -> None:
    write_dataset(s3_url)
    ds = gd.Dataset(s3_url)
    ld = gd.Loader(ds, batch_size=32, seed=5)
    e0 = []
    for batch in ld:
        for sample in batch:
            assert bytes(sample["bin"]) == payload(sample["__index__"])
            e0.append(sample["__index__"])
    assert sorted(e0) == list(range(N)) and e0 == gd.epoch_order(N, 0, 5)
    ld.set_epoch(2)
    it = iter(ld)
    seen = [i for _ in range(3) for i in next(it).indices()]
    state = ld.state_dict()
    assert state["epoch"] == 2 and state["position"] == 96
    ld2 = gd.Loader(gd.Dataset(s3_url), batch_size=50, seed=5)
    ld2.load_state_dict(state)
    rest = [i for b in ld2 for i in b.indices()]
    assert seen + rest == gd.epoch_order(N, 2, 5)


def test_torch_dataloader_workers_reopen_by_url(s3_url: str) -> None:
    write_dataset(s3_url)
    it = gd.IterableDataset(s3_url, batch_size=25, seed=9)
    dl = torch.utils.data.DataLoader(it, batch_size=None, num_workers=2)
    got = []
    for batch in dl:
        for sample in batch:
            assert bytes(sample["bin"]) == payload(sample["__index__"])
            got.append(sample["__index__"])
    assert got == gd.epoch_order(N, 0, 9)
    # Stop after four batches, resume with another number of workers.
    tl = gd.TorchLoader(s3_url, batch_size=25, num_workers=2, seed=9)
    first = []
    for k, b in enumerate(tl):
        first += [s["__index__"] for s in b]
        if k == 3:
            state = tl.state_dict()
            break
    tl1 = gd.TorchLoader(s3_url, batch_size=25, num_workers=1, seed=9)
    tl1.load_state_dict(state)
    assert first + [s["__index__"] for b in tl1 for s in b] == got


def test_corrupt_shard_byte_on_s3_is_data_loss_naming_the_shard(s3_url: str) -> None:
    write_dataset(s3_url)
    ds = gd.Dataset(s3_url)
    shard, first, count, _ = ds.shards[1]
    flip_byte(s3_url, shard, 200)
    damaged = gd.Dataset(s3_url)
    with pytest.raises(granary.DataLossError, match=shard):
        damaged.get_batch(range(first, first + count))
    with pytest.raises(granary.DataLossError, match=shard):
        damaged.verify()
    skip = gd.Dataset(s3_url, skip_corrupt=True).get_batch(range(first, first + count))
    assert skip.corrupt_count == 1
    # The other shards still read.
    assert bytes(damaged[0]["bin"]) == payload(0)


# ---- models --------------------------------------------------------------------------------


def test_model_save_and_load_directory_and_file_urls(s3_url: str) -> None:
    t = small_model()
    files = gm.save(t, f"{s3_url}/dir", shard_bytes=12 * MiB)
    assert files[-1].endswith("model.safetensors.index.json") and len(files) >= 3
    m = gm.Model(f"{s3_url}/dir")
    assert_same(m.load(), t)
    assert m.last_stats["store_bytes"] == m.total_bytes
    # Ranged GETs of at most request_bytes (default 8 MiB): the large tensors take several.
    assert m.last_stats["requests"] >= -(-m.total_bytes // (8 * MiB))
    assert_same(gm.load(f"{s3_url}/dir/model.safetensors.index.json"), t)
    # A single file written by the reference library, uploaded as it is.
    ref = st.save({k: v for k, v in t.items()})
    with granary.open(s3_url) as s:
        s.put("ref/model.safetensors", ref)
    assert_same(gm.load(f"{s3_url}/ref/model.safetensors"), t)
    assert_same(gm.load(f"{s3_url}/ref"), t)
    # granary's single-file save is byte-identical to the reference's.
    gm.save(t, f"{s3_url}/one.safetensors")
    with granary.open(s3_url) as s:
        assert s.get("one.safetensors") == ref
    info = gm.inspect(f"{s3_url}/one.safetensors")
    assert info["tensors"]["layers.0.q"]["shape"] == [2500, 1000]


def test_model_iter_load_streams_in_layer_order(s3_url: str) -> None:
    t = small_model()
    gm.save(t, f"{s3_url}/m.safetensors")
    m = gm.Model(f"{s3_url}/m.safetensors")
    got = {}
    for name, v in m.iter_load(order="layer", window_bytes=12 * MiB):
        got[name] = v.clone()
    assert list(got)[:1] == ["embed.weight"]
    assert list(got).index("layers.0.q") < list(got).index("layers.1.k")
    assert_same(got, t)
    assert m.last_stats["peak_window_bytes"] <= 12 * MiB + 8192


def test_truncated_safetensors_on_s3_names_the_file(s3_url: str) -> None:
    t = small_model()
    good = st.save(t)
    with granary.open(s3_url) as s:
        # Cut inside the data: the header promises more bytes than the object has.
        s.put("cut.safetensors", good[:len(good) - 1000])
        # Cut inside the header.
        s.put("short.safetensors", good[:20])
    with pytest.raises(granary.DataLossError, match="cut.safetensors"):
        gm.load(f"{s3_url}/cut.safetensors")
    with pytest.raises(granary.DataLossError, match="short.safetensors"):
        gm.load(f"{s3_url}/short.safetensors")
    # Truncated after the model was opened: the read names the file and a tensor.
    with granary.open(s3_url) as s:
        s.put("later.safetensors", good)
        m = gm.Model(f"{s3_url}/later.safetensors")
        s.put("later.safetensors", good[:len(good) - 50])
    with pytest.raises(granary.DataLossError, match="later.safetensors: tensor"):
        m.load()
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        gm.load(f"{s3_url}/missing.safetensors")


def test_model_urls_with_a_query_name_the_object_not_a_directory(
        s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server and secret come from the URL only; messages never show the secret.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    query = (f"?endpoint={os.environ['AWS_ENDPOINT_URL']}"
             f"&access_key_id={os.environ['AWS_ACCESS_KEY_ID']}"
             f"&secret_access_key={secret}")
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    t = {"w": torch.randn(64, 64), "ids": torch.arange(7)}
    assert gm.save(t, f"{s3_url}/m.safetensors{query}") == [f"{s3_url}/m.safetensors{query}"]
    files = gm.save(t, f"{s3_url}/sharded{query}", shard_bytes=1000)
    assert files[-1] == f"{s3_url}/sharded/model.safetensors.index.json{query}"
    with granary.open(s3_url + query) as s:
        assert sorted(o.key for o in s.list("") if not o.key.startswith(".granary/")) == [
            "m.safetensors", "sharded/model-00001-of-00002.safetensors",
            "sharded/model-00002-of-00002.safetensors", "sharded/model.safetensors.index.json"]
    for src in (f"{s3_url}/m.safetensors{query}", f"{s3_url}/sharded{query}", files[-1]):
        assert_same(gm.load(src), t)
    assert gm.inspect(f"{s3_url}/m.safetensors{query}")["files"] == [f"{s3_url}/m.safetensors"]
    with pytest.raises(FileNotFoundError) as missing:
        gm.load(f"{s3_url}/missing.safetensors{query}")
    assert "missing.safetensors" in str(missing.value)
    assert secret not in str(missing.value) and secret not in str(missing.value.filename)
    with pytest.raises(FileNotFoundError) as missing:
        gd.Dataset(f"{s3_url}/no-dataset{query}")
    assert secret not in str(missing.value)


# ---- checkpoints ---------------------------------------------------------------------------


def train_state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(1000, 1000, generator=g),
                      "b": torch.randn(1000, generator=g).bfloat16()},
            "step_ids": torch.arange(seed, seed + 10),
            "meta": {"seed": seed, "name": f"run-{seed}"}}


def clone(state):
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: clone(v) for k, v in state.items()}
    return state


def assert_state(got, want) -> None:
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and tensor_bytes(got) == tensor_bytes(want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            assert_state(got[k], want[k])
    else:
        assert got == want


def test_checkpointer_two_saves_load_latest(s3_url: str) -> None:
    ckpt = granary.Checkpointer(s3_url, keep_last=0)
    first, second = train_state(1), train_state(2)
    want1, want2 = clone(first), clone(second)
    ckpt.save(1, first).wait()
    ckpt.save(2, second).wait()
    fresh = granary.Checkpointer(s3_url)
    assert fresh.steps() == [1, 2] and fresh.latest() == 2
    assert_state(fresh.load(), want2)
    assert fresh.loaded_step == 2
    assert_state(fresh.load(1), want1)


class _FailsToCopy(torch.Tensor):
    """A tensor whose copy into the checkpoint's staging memory fails (a broken custom tensor
    type): with a budget, the tensors before it are already streaming to S3 when it fails."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "copy_":
            raise RuntimeError("tensor conversion failed")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_interrupted_save_keeps_the_previous_checkpoint(s3_url: str) -> None:
    ckpt = granary.Checkpointer(s3_url, keep_last=0, budget_bytes=16 * MiB)
    want = clone(train_state(1))
    ckpt.save(1, train_state(1)).wait()
    g = torch.Generator().manual_seed(3)
    broken = {"a": torch.randn(6 * MiB, generator=g), "b": torch.randn(6 * MiB, generator=g),
              "bad": torch.randn(200, 100)[:, ::2].as_subclass(_FailsToCopy)}  # strided: copy_
    with pytest.raises(RuntimeError, match="conversion failed"):
        ckpt.save(2, broken)
    # A tensor without bytes (meta) fails the same way, without a budget.
    with pytest.raises(NotImplementedError):
        meta = torch.empty(3, device="meta")
        granary.Checkpointer(s3_url).save(3, {"a": torch.ones(3), "m": meta})
    with granary.open(s3_url) as s:
        assert not [o.key for o in s.list("") if o.key.startswith(("step-000000000002",
                                                                    "step-000000000003"))]
    fresh = granary.Checkpointer(s3_url)
    assert fresh.steps() == [1] and fresh.latest() == 1
    assert_state(fresh.load(), want)
    fresh.save(2, train_state(2)).wait()  # the abandoned step can be saved afterwards
    assert fresh.steps() == [1, 2]
