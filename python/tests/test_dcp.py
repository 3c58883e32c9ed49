"""granary.dcp: torch.distributed.checkpoint StorageWriter/StorageReader on granary stores."""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings
from typing import Any, Dict

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner  # noqa: E402

import granary  # noqa: E402
import granary.dcp  # noqa: E402

# dcp.save/load without a process group warn that they assume a single process; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is")


def _failure(info: pytest.ExceptionInfo) -> BaseException:
    """The exception a rank raised inside DCP (DCP wraps every storage error)."""
    assert isinstance(info.value, CheckpointException), info.value
    (exc, _trace), *_ = info.value.failures.values()
    return exc


def _state() -> Dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(8, 12, generator=g)
    return {
        "model": {
            "big": torch.randn(1100, 1024, generator=g),  # 4.3 MiB: two checksum chunks, aligned
            "bf16": torch.randn(33, 7, generator=g).to(torch.bfloat16),
            "fp16": torch.randn(5, generator=g).half(),
            "f64": torch.randn(3, 3, generator=g).double(),
            "i8": torch.randint(-128, 127, (17,), dtype=torch.int8, generator=g),
            "i64": torch.arange(9, dtype=torch.int64) * (1 << 40),
            "mask": torch.rand(10, generator=g) > 0.5,
            "cplx": torch.randn(4, dtype=torch.complex64, generator=g),
            "scalar": torch.tensor(2.5),
            "t_view": wide.t(),  # non-contiguous
            "strided": wide[::2, 1::3],  # non-contiguous, offset into a larger storage
            "empty": torch.empty(0, 16),
        },
        "optim": {"step": 12, "lr": 3e-4, "betas": (0.9, 0.95), "name": "adamw", "none": None},
        "extra": [torch.ones(3), {"k": "v"}],
    }


def _template(state: Dict[str, Any]) -> Dict[str, Any]:
    """A state dict of the same structure with zeroed tensors and placeholder values."""
    if isinstance(state, dict):
        return {k: _template(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_template(v) for v in state]
    if isinstance(state, torch.Tensor):
        return torch.zeros(state.shape, dtype=state.dtype)
    return None


def _assert_same(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), path
        assert got.dtype == want.dtype and got.shape == want.shape, path
        assert torch.equal(got, want), path
    else:
        assert got == want, path


def _ckpt_url(store_url: str) -> str:
    # mem://name/step-1 exercises the prefix form; file://dir/step-1 a nested directory.
    return store_url + "/step-1"


def test_roundtrip_nested_state(store_url: str) -> None:
    url = _ckpt_url(store_url)
    state = _state()
    dcp.save(state, storage_writer=granary.dcp.Writer(url))
    loaded = _template(state)
    dcp.load(loaded, storage_reader=granary.dcp.Reader(url))
    _assert_same(loaded, state)


def test_layout_is_few_objects_and_a_commit(store_url: str) -> None:
    url = _ckpt_url(store_url)
    dcp.save(_state(), storage_writer=granary.dcp.Writer(url, thread_count=3))
    with granary.open(store_url) as store:
        names = sorted(o.key.split("/", 1)[1] for o in store.list("step-1/"))
    assert names[0] == "COMMIT"
    data = [n for n in names if n.endswith(".distcp")]
    assert len(data) == 3 and all(n.startswith("__0_") for n in data), names
    assert len(names) == 5  # COMMIT, 3 data objects, 1 metadata object
    loaded = _template(_state())
    dcp.load(loaded, storage_reader=granary.dcp.Reader(url))
    _assert_same(loaded, _state())


def test_checkpoint_id_supplies_the_url(tmp_dir: pathlib.Path) -> None:
    state = _state()
    writer = granary.dcp.Writer()
    dcp.save(state, checkpoint_id=tmp_dir / "ck", storage_writer=writer)
    assert writer.checkpoint_id == str(tmp_dir / "ck")
    loaded = _template(state)
    dcp.load(loaded, checkpoint_id=f"file://{tmp_dir}/ck", storage_reader=granary.dcp.Reader())
    _assert_same(loaded, state)
    assert granary.dcp.Writer.validate_checkpoint_id("mem://x/y")
    assert granary.dcp.Reader.validate_checkpoint_id(tmp_dir)
    assert not granary.dcp.Writer.validate_checkpoint_id("hf://org/model")


def test_without_url_is_a_clear_error() -> None:
    with pytest.raises(CheckpointException) as info:
        dcp.save({"a": torch.ones(2)}, storage_writer=granary.dcp.Writer())
    assert "checkpoint_id" in str(_failure(info))


def test_async_save_roundtrip(tmp_dir: pathlib.Path) -> None:
    state = _state()
    want = _template(state)
    for k, v in state["model"].items():
        want["model"][k] = v.clone()
    want["optim"], want["extra"] = dict(state["optim"]), [state["extra"][0].clone(), {"k": "v"}]
    fut = dcp.async_save(state, storage_writer=granary.dcp.Writer(tmp_dir / "ck"))
    fut = getattr(fut, "upload_completion", fut)
    # async_save staged a copy before returning: training may now change the tensors.
    state["model"]["big"].add_(1)
    state["model"]["bf16"].zero_()
    fut.result(timeout=300)
    loaded = _template(want)
    dcp.load(loaded, storage_reader=granary.dcp.Reader(tmp_dir / "ck"))
    _assert_same(loaded, want)


def _upload(fut: Any) -> Any:
    """The future that completes when an async_save is committed."""
    return getattr(fut, "upload_completion", fut)


def _staged_ptrs(state: Any, path: str = "", out: Any = None) -> Dict[str, int]:
    """Data pointers of the tensors in a (staged) state, by path (".model.big")."""
    out = {} if out is None else out
    if isinstance(state, dict):
        for k, v in state.items():
            _staged_ptrs(v, f"{path}.{k}", out)
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            _staged_ptrs(v, f"{path}[{i}]", out)
    elif isinstance(state, torch.Tensor):
        out[path] = state.data_ptr()
    return out


class _RecordingStager(granary.dcp.Stager):
    """Remembers where each save's staged tensors lived (pointers only: holding the staged
    tensors would keep their buffers busy)."""

    def __init__(self) -> None:
        super().__init__()
        self.ptrs: list = []

    def stage(self, state_dict: Any) -> Any:
        staged = super().stage(state_dict)
        self.ptrs.append(_staged_ptrs(staged))
        return staged


class _GatedWriter(granary.dcp.Writer):
    """Writes nothing until the test opens the gate (to act while a save is in flight)."""

    def __init__(self, url: Any) -> None:
        super().__init__(url)
        self.gate = threading.Event()

    def write_data(self, plan: Any, planner: Any) -> Any:
        assert self.gate.wait(120)
        return super().write_data(plan, planner)


def _copy_state(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _copy_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_copy_state(v) for v in state]
    if isinstance(state, torch.Tensor):
        return state.clone()
    return state


def _load(url: Any, like: Any) -> Any:
    loaded = _template(like)
    dcp.load(loaded, storage_reader=granary.dcp.Reader(url))
    return loaded


def test_writer_is_the_default_async_stager() -> None:
    # dcp.async_save stages through the storage writer when that is an AsyncStager.
    from torch.distributed.checkpoint.staging import AsyncStager

    assert isinstance(granary.dcp.Writer(), AsyncStager)
    assert isinstance(granary.dcp.Stager(), AsyncStager)
    assert granary.dcp.shared_stager() is granary.dcp.shared_stager()


def test_async_save_with_stager_roundtrip(store_url: str) -> None:
    state = _state()
    want = _copy_state(state)
    stager = granary.dcp.Stager()
    writer = _GatedWriter(_ckpt_url(store_url))
    fut = dcp.async_save(state, storage_writer=writer, async_stager=stager)
    # Nothing is written yet; the source changes must not reach the checkpoint.
    state["model"]["big"].add_(1)
    state["model"]["t_view"].zero_()
    state["optim"]["step"] = 13
    state["extra"][1]["k"] = "changed"
    writer.gate.set()
    _upload(fut).result(timeout=300)
    _assert_same(_load(_ckpt_url(store_url), want), want)
    assert stager.staged_bytes >= state["model"]["big"].numel() * 4


def test_second_async_save_reuses_staging_buffers(tmp_dir: pathlib.Path) -> None:
    stager = _RecordingStager()
    first = _state()
    second = _copy_state(first)
    for t in second["model"].values():
        if t.dtype == torch.bool:
            t.logical_not_()
        elif t.numel():
            t.add_(3)
    second["optim"]["step"] = 99
    for i, state in enumerate([first, second]):
        fut = dcp.async_save(
            state, storage_writer=granary.dcp.Writer(tmp_dir / f"ck{i}"), async_stager=stager
        )
        _upload(fut).result(timeout=300)
    ptrs0, ptrs1 = stager.ptrs
    assert ptrs0 == ptrs1  # the same buffers, not a fresh copy
    sources = _staged_ptrs(second)
    assert all(ptrs1[p] != sources[p] for p in ptrs1 if ptrs1[p])  # and not the source itself
    assert len(stager._sets) == 1
    _assert_same(_load(tmp_dir / "ck0", first), first)
    _assert_same(_load(tmp_dir / "ck1", second), second)  # the second state, not stale bytes


def test_async_save_while_another_persists_does_not_touch_its_buffers(
    tmp_dir: pathlib.Path,
) -> None:
    stager = _RecordingStager()
    state = {"w": torch.arange(4096.0).reshape(64, 64), "step": 1}
    want0 = _copy_state(state)
    slow = _GatedWriter(tmp_dir / "ck0")
    fut0 = dcp.async_save(state, storage_writer=slow, async_stager=stager)
    state["w"].mul_(-1)
    state["step"] = 2
    want1 = _copy_state(state)
    fut1 = dcp.async_save(
        state, storage_writer=granary.dcp.Writer(tmp_dir / "ck1"), async_stager=stager
    )
    _upload(fut1).result(timeout=300)
    assert stager.ptrs[0][".w"] != stager.ptrs[1][".w"]  # the first save's buffers were busy
    slow.gate.set()
    _upload(fut0).result(timeout=300)
    _assert_same(_load(tmp_dir / "ck0", want0), want0)
    _assert_same(_load(tmp_dir / "ck1", want1), want1)


def test_async_save_after_shapes_change(tmp_dir: pathlib.Path) -> None:
    stager = _RecordingStager()
    states = [
        {"keep": torch.ones(5, 7), "grow": torch.zeros(4, 4), "gone": torch.ones(2), "n": 1},
        {
            "keep": torch.full((5, 7), 2.0),
            "grow": torch.arange(16.0).reshape(2, 8),  # same bytes, other shape
            "cast": torch.arange(6, dtype=torch.int16),
            "empty": torch.empty(0, 3),
            "n": 2,
        },
        {"keep": torch.full((5, 7), 3.0), "grow": torch.ones(64), "cast": torch.ones(6), "n": 3},
    ]
    for i, state in enumerate(states):
        fut = dcp.async_save(
            state, storage_writer=granary.dcp.Writer(tmp_dir / f"ck{i}"), async_stager=stager
        )
        _upload(fut).result(timeout=300)
    for i, state in enumerate(states):
        _assert_same(_load(tmp_dir / f"ck{i}", state), state)
    assert stager.ptrs[0][".keep"] == stager.ptrs[1][".keep"] == stager.ptrs[2][".keep"]
    assert stager.staged_bytes == sum(
        t.numel() * t.element_size() for t in states[2].values() if isinstance(t, torch.Tensor)
    )  # buffers of tensors that left the state were dropped


def test_async_save_in_a_background_process(tmp_dir: pathlib.Path) -> None:
    # AsyncCheckpointerType.PROCESS pickles the Writer into a checkpoint process and needs a
    # process group; run it in a child so the test process stays without one.
    script = tmp_dir / "async_process.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, warnings
            warnings.simplefilter("ignore")
            import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
            import granary.dcp

            if __name__ == "__main__":
                dist.init_process_group(
                    "gloo", init_method="file://{tmp_dir / 'pg-init'}", rank=0, world_size=1
                )
                url = {str(tmp_dir / "ck")!r}
                state = {{"w": torch.arange(1000.0).reshape(10, 100), "step": 7}}
                fut = dcp.async_save(
                    state,
                    storage_writer=granary.dcp.Writer(url),
                    async_checkpointer_type=AsyncCheckpointerType.PROCESS,
                )
                getattr(fut, "upload_completion", fut).result(timeout=300)
                out = {{"w": torch.zeros(10, 100), "step": 0}}
                dcp.load(out, storage_reader=granary.dcp.Reader(url))
                assert torch.equal(out["w"], state["w"]) and out["step"] == 7, out
                dist.destroy_process_group()
                print("ok")
                sys.stdout.flush()
                import os
                os._exit(0)  # do not wait on DCP's background checkpoint process
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    assert (tmp_dir / "ck" / "COMMIT").exists()


def test_missing_commit_is_a_clear_error(store_url: str) -> None:
    url = _ckpt_url(store_url)
    dcp.save(_state(), storage_writer=granary.dcp.Writer(url))
    with granary.open(store_url) as store:
        store.delete("step-1/COMMIT")
    with pytest.raises(FileNotFoundError) as info:
        granary.dcp.Reader(url).read_metadata()
    assert url in str(info.value) and "COMMIT" in str(info.value)
    # Through dcp.load the same message reaches the user, wrapped by DCP.
    with pytest.raises(CheckpointException, match="COMMIT is missing"):
        dcp.load(_template(_state()), storage_reader=granary.dcp.Reader(url))


def test_nonexistent_checkpoint_is_file_not_found(tmp_dir: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="no committed granary DCP checkpoint"):
        granary.dcp.Reader(tmp_dir / "never-saved").read_metadata()
    assert not (tmp_dir / "never-saved").exists()  # the reader created nothing


def test_filesystem_checkpoint_is_pointed_to_its_reader(tmp_dir: pathlib.Path) -> None:
    dcp.save({"a": torch.ones(3)}, storage_writer=dcp.FileSystemWriter(tmp_dir / "fs"))
    with pytest.raises(FileNotFoundError, match="FileSystemReader"):
        granary.dcp.Reader(tmp_dir / "fs").read_metadata()


def test_second_save_into_a_committed_checkpoint_is_refused(store_url: str) -> None:
    url = _ckpt_url(store_url)
    state = _state()
    dcp.save(state, storage_writer=granary.dcp.Writer(url))
    other = _state()
    other["model"]["big"].zero_()
    with pytest.raises(CheckpointException) as info:
        dcp.save(other, storage_writer=granary.dcp.Writer(url))
    err = _failure(info)
    assert isinstance(err, FileExistsError) and url in str(err)
    loaded = _template(state)
    dcp.load(loaded, storage_reader=granary.dcp.Reader(url))
    _assert_same(loaded, state)  # the first checkpoint is untouched


class _FailingPlanner(DefaultSavePlanner):
    """Fails the save after the first few items were written (a crash mid-save)."""

    def __init__(self) -> None:
        super().__init__()
        self.resolved = 0

    def resolve_data(self, write_item: Any) -> Any:
        self.resolved += 1
        if self.resolved > 3:
            raise RuntimeError("disk on fire")
        return super().resolve_data(write_item)


def test_failed_save_is_invisible_and_retry_cleans_up(store_url: str) -> None:
    url = _ckpt_url(store_url)
    state = _state()
    with pytest.raises(CheckpointException, match="disk on fire"):
        dcp.save(state, storage_writer=granary.dcp.Writer(url), planner=_FailingPlanner())
    with pytest.raises(FileNotFoundError, match="COMMIT is missing"):
        granary.dcp.Reader(url).read_metadata()
    # A failed finish (data written, no COMMIT) leaves objects of its own save id behind.
    writer = granary.dcp.Writer(url)
    writer.finish = lambda metadata, results: None  # type: ignore[method-assign]
    dcp.save(state, storage_writer=writer)
    with granary.open(store_url) as store:
        assert len(store.list("step-1/__0_")) == 1 and not store.exists("step-1/COMMIT")
        dcp.save(state, storage_writer=granary.dcp.Writer(url))
        names = [o.key for o in store.list("step-1/")]
    assert len(names) == 3, names  # COMMIT, one data object, one metadata object
    loaded = _template(state)
    dcp.load(loaded, storage_reader=granary.dcp.Reader(url))
    _assert_same(loaded, state)


def _storage_entry(url: str, fqn: str) -> Dict[str, Any]:
    metadata = granary.dcp.Reader(url).read_metadata()
    (entry,) = [v for k, v in metadata.storage_data.items() if k.fqn == fqn]
    return entry


def _flip_byte(store_url: str, key: str, offset: int) -> None:
    with granary.open(store_url) as store:
        data = bytearray(store.get(key))
        data[offset] ^= 0x10
        store.put(key, data)


@pytest.mark.parametrize("fqn", ["model.bf16", "model.big", "optim.step"])
def test_flipped_byte_is_data_loss_naming_the_tensor(store_url: str, fqn: str) -> None:
    url = _ckpt_url(store_url)
    dcp.save(_state(), storage_writer=granary.dcp.Writer(url))
    entry = _storage_entry(url, fqn)
    # Flip a byte in the last chunk (for model.big: the second 4 MiB checksum chunk).
    _flip_byte(store_url, "step-1/" + entry["key"], entry["offset"] + entry["length"] - 3)
    with pytest.raises(CheckpointException) as info:
        dcp.load(_template(_state()), storage_reader=granary.dcp.Reader(url))
    err = _failure(info)
    assert isinstance(err, granary.DataLossError), err
    assert err.status_code == "DataLoss"
    assert repr(fqn) in str(err) and entry["key"] in str(err)


def test_flipped_byte_in_metadata_is_data_loss(store_url: str) -> None:
    url = _ckpt_url(store_url)
    dcp.save(_state(), storage_writer=granary.dcp.Writer(url))
    with granary.open(store_url) as store:
        (meta,) = [o for o in store.list("step-1/metadata.")]
    _flip_byte(store_url, meta.key, meta.size // 2)
    with pytest.raises(granary.DataLossError, match="metadata"):
        granary.dcp.Reader(url).read_metadata()


def test_truncated_data_object_is_data_loss(tmp_dir: pathlib.Path) -> None:
    url = str(tmp_dir / "ck")
    dcp.save(_state(), storage_writer=granary.dcp.Writer(url))
    (data,) = (tmp_dir / "ck").glob("*.distcp")
    with open(data, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CheckpointException) as info:
        dcp.load(_template(_state()), storage_reader=granary.dcp.Reader(url))
    assert isinstance(_failure(info), granary.DataLossError)
    assert "truncated" in str(_failure(info))


def test_load_with_different_shape_is_an_error_from_dcp(tmp_dir: pathlib.Path) -> None:
    dcp.save(_state(), storage_writer=granary.dcp.Writer(tmp_dir / "ck"))
    loaded = _template(_state())
    loaded["model"]["bf16"] = torch.zeros(34, 7, dtype=torch.bfloat16)
    with pytest.raises(CheckpointException) as info:
        dcp.load(loaded, storage_reader=granary.dcp.Reader(tmp_dir / "ck"))
    err = _failure(info)
    assert isinstance(err, (ValueError, RuntimeError)) and "model.bf16" in str(err)


def test_contiguous_destinations_are_read_without_staging(
    tmp_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state()
    dcp.save(state, storage_writer=granary.dcp.Writer(tmp_dir / "ck"))
    reads = []
    check = granary.dcp.Reader._check

    def spy(loc: Any, batch: Any, counts: Any) -> None:
        reads.extend(batch)
        check(loc, batch, counts)

    monkeypatch.setattr(granary.dcp.Reader, "_check", staticmethod(spy))
    loaded = _template(state)
    dcp.load(loaded, storage_reader=granary.dcp.Reader(tmp_dir / "ck"))
    _assert_same(loaded, state)
    tensor_reads = [r for r in reads if r.item.dtype is not None]
    assert len(tensor_reads) == 12  # every non-empty tensor, all straight into its destination
    assert all(r.staged_bytes == 0 for r in tensor_reads)


def test_reads_into_strided_and_converting_destinations(tmp_dir: pathlib.Path) -> None:
    state = _state()
    dcp.save(state, storage_writer=granary.dcp.Writer(tmp_dir / "ck"))
    loaded = _template(state)
    # A transposed destination and a destination of another dtype go through staging buffers,
    # in batches smaller than one tensor.
    backing = torch.zeros(1024, 1100)
    loaded["model"]["big"] = backing.t()
    loaded["model"]["f64"] = torch.zeros(3, 3, dtype=torch.float32)
    dcp.load(loaded, storage_reader=granary.dcp.Reader(tmp_dir / "ck", read_staging_bytes=1 << 20))
    assert torch.equal(backing.t(), state["model"]["big"])
    assert torch.equal(loaded["model"]["f64"], state["model"]["f64"].float())
    del loaded["model"]["big"], loaded["model"]["f64"]
    want = _state()
    del want["model"]["big"], want["model"]["f64"]
    _assert_same(loaded, want)


def test_same_result_as_filesystem_writer_and_reader(tmp_dir: pathlib.Path) -> None:
    state = _state()
    ours = dcp.save(state, storage_writer=granary.dcp.Writer(tmp_dir / "granary"))
    theirs = dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp_dir / "fs"))
    assert ours.state_dict_metadata == theirs.state_dict_metadata
    assert ours.planner_data == theirs.planner_data
    from_ours, from_theirs = _template(state), _template(state)
    dcp.load(from_ours, storage_reader=granary.dcp.Reader(tmp_dir / "granary"))
    dcp.load(from_theirs, storage_reader=dcp.FileSystemReader(tmp_dir / "fs"))
    _assert_same(from_ours, from_theirs)
    _assert_same(from_ours, state)


def test_writer_and_reader_pickle(tmp_dir: pathlib.Path) -> None:
    writer = granary.dcp.Writer(tmp_dir / "ck", thread_count=2)
    dcp.save({"a": torch.ones(4)}, storage_writer=writer)  # opens its store
    copy = pickle.loads(pickle.dumps(writer))
    assert copy.checkpoint_id == str(tmp_dir / "ck")
    reader = pickle.loads(pickle.dumps(granary.dcp.Reader(tmp_dir / "ck")))
    out = {"a": torch.zeros(4)}
    dcp.load(out, storage_reader=reader)
    assert torch.equal(out["a"], torch.ones(4))


def test_crc32c_matches_the_standard_check_value() -> None:
    assert granary.dcp._crc32c(b"123456789") == 0xE3069283
    assert granary.dcp._crc32c_python(b"123456789") == 0xE3069283
    assert granary.dcp._crc32c_python(b"6789", granary.dcp._crc32c_python(b"12345")) == 0xE3069283


def test_checkpoint_records_its_checksum_algorithm(
    tmp_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_dir / "ck")
    state = {"w": torch.arange(5000, dtype=torch.float32), "step": 3}
    # Save as a build with the native crc32c does (simulated by the Python one) ...
    monkeypatch.setattr(granary.dcp, "_native_crc32c", granary.dcp._crc32c_python)
    dcp.save(state, storage_writer=granary.dcp.Writer(url))
    commit = (tmp_dir / "ck" / "COMMIT").read_text()
    assert '"checksum": "crc32c"' in commit
    assert _storage_entry(url, "w")["checksum"] == "crc32c"
    # ... and load it with a build without it: the reader checks with the recorded algorithm.
    monkeypatch.setattr(granary.dcp, "_native_crc32c", None)
    out = {"w": torch.zeros(5000), "step": 0}
    dcp.load(out, storage_reader=granary.dcp.Reader(url))
    assert torch.equal(out["w"], state["w"]) and out["step"] == 3
    entry = _storage_entry(url, "w")
    _flip_byte(f"file://{tmp_dir}", "ck/" + entry["key"], entry["offset"] + 7)
    with pytest.raises(CheckpointException, match="checksum mismatch in 'w'"):
        dcp.load(out, storage_reader=granary.dcp.Reader(url))


def test_import_granary_does_not_import_torch() -> None:
    code = "import sys, granary; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- two processes (gloo on 127.0.0.1) ----------------------------------------------------------


_ROWS, _COLS = 10, 6


def _zeros(dtype: Any = torch.float32) -> torch.Tensor:
    return torch.zeros(_ROWS, _COLS, dtype=dtype)


def _full(name: str) -> torch.Tensor:
    base = torch.arange(_ROWS * _COLS, dtype=torch.float32).reshape(_ROWS, _COLS)
    return base + (1000 if name == "w2" else 0)


def _dist_worker(rank: int, world_size: int, init_file: str, url: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    # A file rendezvous: no port to race for (a free port picked by the parent can be taken by
    # the time the workers bind it).
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world_size,))
        state = {
            "w": distribute_tensor(_full("w"), mesh, [Shard(0)]),
            "w2": distribute_tensor(_full("w2").to(torch.bfloat16), mesh, [Shard(1)]),
            f"rank{rank}": torch.full((3,), float(rank)),  # plain per-rank tensors
            "step": 5,
        }
        dcp.save(state, storage_writer=granary.dcp.Writer(url))
        # Every rank wrote its own data object; the coordinator committed once.
        with granary.open(url) as store:
            names = [o.key for o in store.list()]
        assert sum(n.endswith(".distcp") for n in names) == world_size, names

        # Same sharding back.
        same = {
            "w": distribute_tensor(_zeros(), mesh, [Shard(0)]),
            "w2": distribute_tensor(_zeros(torch.bfloat16), mesh, [Shard(1)]),
            f"rank{rank}": torch.zeros(3),
            "step": 0,
        }
        dcp.load(same, storage_reader=granary.dcp.Reader(url))
        assert torch.equal(same["w"].full_tensor(), _full("w"))
        assert torch.equal(same["w2"].full_tensor(), _full("w2").to(torch.bfloat16))
        assert torch.equal(same[f"rank{rank}"], torch.full((3,), float(rank)))
        assert same["step"] == 5

        # Resharded: rows become columns and columns rows (partial reads of stored chunks).
        swapped = {
            "w": distribute_tensor(_zeros(), mesh, [Shard(1)]),
            "w2": distribute_tensor(_zeros(torch.bfloat16), mesh, [Shard(0)]),
        }
        dcp.load(swapped, storage_reader=granary.dcp.Reader(url))
        assert torch.equal(swapped["w"].full_tensor(), _full("w"))
        assert torch.equal(swapped["w2"].full_tensor(), _full("w2").to(torch.bfloat16))

        # async_save stages DTensors through granary's stager (the Writer is the AsyncStager).
        fut = dcp.async_save(state, storage_writer=granary.dcp.Writer(url + "-async"))
        getattr(fut, "upload_completion", fut).result(timeout=300)
        again = {
            "w": distribute_tensor(_zeros(), mesh, [Shard(0)]),
            "w2": distribute_tensor(_zeros(torch.bfloat16), mesh, [Shard(1)]),
        }
        dcp.load(again, storage_reader=granary.dcp.Reader(url + "-async"))
        assert torch.equal(again["w"].full_tensor(), _full("w"))
        assert torch.equal(again["w2"].full_tensor(), _full("w2").to(torch.bfloat16))
    finally:
        dist.destroy_process_group()
    # Leave without finalizing the interpreter. DTensor's redistribution and sharding caches
    # keep the DeviceMesh, and through it the gloo backend, alive after destroy_process_group,
    # so gloo's worker threads outlive this function. Such a thread drops its reference to a
    # finished collective (here full_tensor's all-gather) just after the waiter wakes up, and
    # that needs the GIL (the work holds tensors with Python objects). If the main thread has
    # begun Py_Finalize by then, take_gil ends the thread with pthread_exit, whose unwinding
    # through the work's noexcept destructor calls std::terminate (SIGABRT). Torch gives no
    # way to join those threads, so the worker exits directly once everything is done (errors
    # still propagate: mp.spawn reports an exception raised above from its error file).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_ranks_save_dtensor_and_reshard(tmp_dir: pathlib.Path) -> None:
    import torch.multiprocessing as mp

    url = f"file://{tmp_dir}/ck"
    mp.spawn(_dist_worker, args=(2, str(tmp_dir / "pg-init"), url), nprocs=2, join=True)

    # Resharded to one process: full tensors from two ranks' shards.
    one = {
        "w": torch.zeros(_ROWS, _COLS),
        "w2": torch.zeros(_ROWS, _COLS, dtype=torch.bfloat16),
        "rank0": torch.zeros(3),
        "rank1": torch.zeros(3),
        "step": 0,
    }
    dcp.load(one, storage_reader=granary.dcp.Reader(url))
    assert torch.equal(one["w"], _full("w"))
    assert torch.equal(one["w2"], _full("w2").to(torch.bfloat16))
    assert torch.equal(one["rank1"], torch.ones(3)) and one["step"] == 5
