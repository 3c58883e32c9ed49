"""granary.Checkpointer: saving and loading training state (issue 3, sections 1 and 4)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import struct
import sys
import warnings
from fractions import Fraction
from typing import Any, Dict, List

import pytest

torch = pytest.importorskip("torch")

import granary  # noqa: E402

MiB = 1 << 20


# ---- helpers -------------------------------------------------------------------------------


def _bytes_of(t: torch.Tensor) -> bytes:
    """The tensor's elements as raw bytes, row-major (bit-exact comparison, NaNs included)."""
    flat = t.detach().cpu().reshape(-1).contiguous()
    return bytes(flat.view(torch.uint8).numpy()) if flat.numel() else b""


def assert_same(got: Any, want: Any, where: str = "state") -> None:
    """`got` equals `want` bit-exactly: same container types, tensors with the same dtype,
    shape and bytes, plain values equal (NaN equals NaN)."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: {type(got).__name__}, want a tensor"
        assert got.dtype == want.dtype, f"{where}: dtype {got.dtype}, want {want.dtype}"
        assert got.shape == want.shape, f"{where}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
        assert got.device.type == "cpu", where
        assert _bytes_of(got) == _bytes_of(want), f"{where}: bytes differ"
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {type(got).__name__}, want a dict"
        assert list(got.keys()) == list(want.keys()), f"{where}: keys {list(got)}, want {list(want)}"
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want), f"{where}: {type(got).__name__}, want {type(want).__name__}"
        assert len(got) == len(want), f"{where}: length {len(got)}, want {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert type(got) is float and math.isnan(got), f"{where}: {got!r}, want nan"
    else:
        assert type(got) is type(want), f"{where}: {type(got).__name__}, want {type(want).__name__}"
        assert got == want, f"{where}: {got!r}, want {want!r}"


def clone_state(state: Any) -> Any:
    """A deep copy whose tensors own fresh memory (what was saved, for later comparison)."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return type(state)((k, clone_state(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(clone_state(v) for v in state)
    return state


def _manifest(root: pathlib.Path, step: int, rank: int = 0) -> Dict[str, Any]:
    """The decoded body of a rank's manifest (envelope per docs/formats/checkpoint.md)."""
    raw = (root / f"step-{step:012d}" / f"rank-{rank:05d}.manifest").read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 12)
    return json.loads(raw[20:20 + n])


def _flip_byte(path: pathlib.Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))
        f.flush()
        os.fsync(f.fileno())


def _flip_tensor_byte(root: pathlib.Path, step: int, name: str) -> pathlib.Path:
    """Flips one byte in the middle of tensor `name`'s bytes; returns the data file's path."""
    entry = next(e for e in _manifest(root, step)["tensors"] if e["name"] == name)
    path = root / entry["key"]
    assert path.name == "rank-00000.data-00000", entry["key"]
    _flip_byte(path, entry["offset"] + entry["length"] // 2)
    return path


def _model_and_optimizer() -> Dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model(torch.randn(8, 16)).square().mean()
    loss.backward()
    opt.step()
    return {"model": model, "opt": opt}


def _train_state(mo: Dict[str, Any]) -> Dict[str, Any]:
    return {"model": mo["model"].state_dict(), "optim": mo["opt"].state_dict(),
            "meta": {"epoch": 3, "lr": 1e-3, "name": "run-1", "done": False}}


def _random_state(total_bytes: int, seed: int = 0, pieces: int = 6) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    each = total_bytes // pieces // 4
    return {f"t{i}": torch.randn(each, generator=g) for i in range(pieces)}


@pytest.fixture
def root(tmp_dir: pathlib.Path) -> pathlib.Path:
    return tmp_dir / "ckpt"


# ---- round trips ---------------------------------------------------------------------------


def test_model_and_optimizer_round_trip_bit_exact(store_url: str) -> None:
    mo = _model_and_optimizer()
    state = _train_state(mo)
    # Adam's state is keyed by int parameter ids, with 0-dim "step" tensors and param_groups.
    assert set(state["optim"]["state"]) == {0, 1, 2, 3, 4, 5}
    want = clone_state(state)
    ckpt = granary.Checkpointer(store_url)
    ckpt.save(7, state).wait()
    got = granary.Checkpointer(store_url).load()
    assert_same(got, want)
    assert got["optim"]["param_groups"][0]["params"] == [0, 1, 2, 3, 4, 5]
    # What a training job does with it: a fresh model and optimizer resume from it.
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=5.0)
    model.load_state_dict(got["model"])
    opt.load_state_dict(got["optim"])
    assert opt.param_groups[0]["lr"] == 1e-3
    assert_same(model.state_dict(), dict(want["model"]))


_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64,
           torch.complex128, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
           torch.bool]
_DTYPES += [getattr(torch, n) for n in ("uint16", "uint32", "uint64", "complex32", "float8_e4m3fn",
                                        "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
                                        "float8_e8m0fnu") if hasattr(torch, n)]


def _tensor_of(dtype: torch.dtype, shape: tuple, seed: int) -> torch.Tensor:
    """Random bits of `dtype` (any bit pattern, NaNs included for floats)."""
    g = torch.Generator().manual_seed(seed)
    element = torch.empty((), dtype=dtype).element_size()
    n = math.prod(shape)
    raw = torch.randint(0, 256, (n * element,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        return (raw & 1).view(torch.bool).reshape(shape)
    return raw.view(dtype).reshape(shape)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_every_dtype_round_trips(root: pathlib.Path) -> None:
    state = {str(d).removeprefix("torch."): _tensor_of(d, (3, 37), i) for i, d in enumerate(_DTYPES)}
    state["big_bf16"] = _tensor_of(torch.bfloat16, (1500, 1500), 99)  # > 4 MiB: several chunks
    want = clone_state(state)
    ckpt = granary.Checkpointer(root)
    ckpt.save(1, state).wait()
    got = ckpt.load()
    assert_same(got, want)
    described = {t["name"]: t["dtype"] for t in ckpt.describe()["tensors"]}
    assert described["bfloat16"] == "bfloat16" and described["float8_e4m3fn"] == "float8_e4m3fn"


def test_non_contiguous_views_zero_size_and_scalars(root: pathlib.Path) -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(64, 48, generator=g)
    big = torch.randn(1200, 1100, generator=g)  # 5 MiB
    c = torch.randn(6, 5, dtype=torch.complex64, generator=g)
    state = {
        "base": base,
        "transposed": base.t(),
        "stepped": base[3::5, ::7],
        "row": base[10],                     # contiguous view at an offset into base's storage
        "column": base[:, 2],
        "expanded": torch.arange(4.0).expand(3, 4),
        "big_transposed": big.t(),
        "big_stepped": big[::3, 1::2],
        "conj": c.conj(),                    # lazily conjugated view
        "neg": c.conj().imag,                # a view with the neg bit set
        "channels_last": torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last),
        "zero_size": torch.empty(0, 16),
        "zero_size_strided": torch.empty(16, 0).t(),
        "zero_size_int": torch.zeros(5, 0, 3, dtype=torch.int32),
        "scalar": torch.tensor(2.5),
        "scalar_int": torch.tensor(-7, dtype=torch.int64),
        "scalar_bool": torch.tensor(True),
        "scalar_view": base[4, 5],
    }
    want = {k: v.detach().clone().resolve_conj().resolve_neg() for k, v in state.items()}
    ckpt = granary.Checkpointer(root)
    ckpt.save(1, state).wait()
    got = ckpt.load()
    assert_same(got, want)
    # Views of one storage come back as independent tensors holding the views' values.
    got["row"].fill_(0)
    assert _bytes_of(got["base"][10]) == _bytes_of(want["row"])


def test_plain_values_round_trip(root: pathlib.Path) -> None:
    state = {
        "none": None, "true": True, "false": False,
        "ints": [0, -1, 2**62, -(2**63), 2**63 - 1, 2**63, 2**64 + 5, -(2**70), 10**40],
        "floats": [0.0, -0.0, 1.5, 1e-320, float("inf"), float("-inf"), float("nan")],
        "strings": ["", "hello", "ünïcödé ✓", "with\nnewline and \"quotes\"", "a/b[c]#1"],
        "tuple": (1, "two", 3.0, None),
        "list": [1, "two", 3.0, None],
        "nested": {"t": ((1, 2), [3, (4,)]), "l": [[], (), {}]},
        "object": Fraction(3, 7),
        "int_keys": {0: "zero", 1: "one", -5: "minus five", 2**80: "huge"},
        "mixed_keys": {"1": "str one", 1: "int one", (2, 3): "tuple", None: "none"},
        "bool_keys": {True: "yes", False: "no"},
        "bytes": b"\x00\xff raw",
        "tensor_in_tuple": (torch.arange(3), 4),
    }
    want = clone_state(state)
    ckpt = granary.Checkpointer(root)
    ckpt.save(1, state).wait()
    got = ckpt.load()
    assert_same(got, want)
    assert math.copysign(1.0, got["floats"][1]) == -1.0
    assert list(got["mixed_keys"]) == ["1", 1, (2, 3), None]
    assert [type(k) for k in got["bool_keys"]] == [bool, bool]


def test_strings_that_are_not_valid_unicode_round_trip(root: pathlib.Path) -> None:
    # os.fsdecode of a non-UTF-8 file name gives lone surrogates, which JSON cannot carry.
    odd = os.fsdecode(b"data-\xff\xfe.bin")
    state = {"path": odd, "paths": [odd, "ok"], "by_path": {odd: 1, "\ud800": torch.ones(2)}}
    want = clone_state(state)
    ckpt = granary.Checkpointer(root)
    ckpt.save(1, state).wait()
    assert_same(ckpt.load(), want)


def test_unsupported_tensors_are_rejected_at_save(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root)
    with pytest.raises(ValueError, match=r"\['sp'\].*sparse"):
        ckpt.save(1, {"sp": torch.eye(3).to_sparse()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.randn(10), 0.1, 3, torch.qint8)
    with pytest.raises(ValueError, match=r"\['q'\].*quantized"):
        ckpt.save(1, {"q": q})
    with pytest.raises(NotImplementedError):  # fails while staging: the save is abandoned
        ckpt.save(1, {"a": torch.ones(3), "m": torch.empty(3, device="meta")})
    assert ckpt.steps() == []
    ckpt.save(1, {"a": torch.ones(3)}).wait()
    assert ckpt.steps() == [1]


def test_large_plain_value_is_rejected_at_save(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root)
    with pytest.raises(ValueError, match=r"meta.*too large"):
        ckpt.save(1, {"meta": {"blob": b"x" * (2 * MiB)}})
    assert ckpt.steps() == []
    ckpt.save(1, {"meta": {"blob": b"x" * 1000}}).wait()  # the Checkpointer is still usable
    assert ckpt.steps() == [1]


def test_changing_or_freeing_tensors_after_save_does_not_change_it(root: pathlib.Path) -> None:
    for budget, step in ((None, 1), (16 * MiB, 2)):
        ckpt = granary.Checkpointer(root, budget_bytes=budget, incremental=False, keep_last=0)
        state = _random_state(48 * MiB, seed=step)
        base = torch.randn(2000, 1000)
        state["strided"] = base[::2]           # staged by torch's copy into staging memory
        state["small"] = torch.arange(100)
        want = clone_state(state)
        handle = ckpt.save(step, state)
        # Training continues at once: tensors change in place, are freed and memory reused.
        for t in state.values():
            t.fill_(-1)
        base.fill_(-1)
        state.clear()
        del base
        junk = [torch.full((12 * MiB // 4,), 7.0) for _ in range(4)]
        handle.wait()
        del junk
        assert_same(granary.Checkpointer(root).load(step), want)


# ---- load(into=...) ------------------------------------------------------------------------


def test_load_into_fills_existing_tensors_in_place(root: pathlib.Path) -> None:
    mo = _model_and_optimizer()
    state = _train_state(mo)
    state["strided_dest"] = torch.randn(10, 12)
    want = clone_state(state)
    ckpt = granary.Checkpointer(root)
    ckpt.save(1, state).wait()

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 16)).sum().backward()
    opt.step()  # creates the optimizer state tensors to load into
    wide = torch.zeros(12, 10)
    into = {"model": model.state_dict(), "optim": opt.state_dict(), "strided_dest": wide.t()}
    ptrs = {k: v.data_ptr() for k, v in into["model"].items()}
    exp_avg = into["optim"]["state"][0]["exp_avg"]
    exp_avg_ptr = exp_avg.data_ptr()
    weight_param = next(model.parameters())

    got = granary.Checkpointer(root).load(into=into)
    assert_same({k: got[k] for k in ("model", "optim")}, {k: want[k] for k in ("model", "optim")})
    for k, v in got["model"].items():
        assert v is into["model"][k], k
        assert v.data_ptr() == ptrs[k], k
    assert got["optim"]["state"][0]["exp_avg"] is exp_avg and exp_avg.data_ptr() == exp_avg_ptr
    assert _bytes_of(exp_avg) == _bytes_of(want["optim"]["state"][0]["exp_avg"])
    # The model's parameters themselves hold the checkpoint's values.
    assert _bytes_of(weight_param) == _bytes_of(want["model"]["0.weight"])
    # A non-contiguous destination is filled in place too.
    assert got["strided_dest"] is into["strided_dest"]
    assert _bytes_of(wide.t()) == _bytes_of(want["strided_dest"])
    assert got["meta"] == want["meta"]


@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_load_into_mismatch_raises_value_error_and_changes_nothing(root: pathlib.Path,
                                                                   change: str) -> None:
    state = {"a": torch.arange(10, dtype=torch.float32), "b": {"w": torch.ones(4, 4)},
             "c": torch.arange(6, dtype=torch.int64)}
    ckpt = granary.Checkpointer(root)
    ckpt.save(1, state).wait()
    bad = torch.zeros(4, 5) if change == "shape" else torch.zeros(4, 4, dtype=torch.float64)
    into = {"a": torch.zeros(10), "b": {"w": bad}, "c": torch.zeros(6, dtype=torch.int64)}
    with pytest.raises(ValueError, match=r"b/w") as info:
        ckpt.load(into=into)
    assert ("[4, 5]" in str(info.value)) if change == "shape" else ("float64" in str(info.value))
    assert not into["a"].any() and not into["b"]["w"].any() and not into["c"].any()


def test_load_into_missing_tensor_strict_and_not(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root)
    ckpt.save(1, {"a": torch.arange(4.0)}).wait()
    into = {"a": torch.zeros(4), "extra": torch.zeros(3)}
    with pytest.raises(KeyError, match="extra"):
        ckpt.load(into=into)
    assert not into["a"].any()
    got = ckpt.load(into=into, strict=False)
    assert got["a"] is into["a"] and into["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert "extra" not in got and not into["extra"].any()


# ---- handles, listing, if_busy, retention, incremental, budget ----------------------------


def test_handle_and_checkpointer_wait(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root)
    state = _random_state(32 * MiB)
    handle = ckpt.save(5, state)
    assert handle.step == 5
    assert handle.wait(timeout=60) is True
    assert handle.done() and not handle.skipped() and handle.exception() is None
    stats = handle.stats()
    assert stats["step"] == 5 and stats["tensors"] == 6 and stats["tensors_reused"] == 0
    assert stats["bytes_total"] == stats["bytes_written"] == 32 * MiB // 24 * 24
    assert stats["skipped"] is False and stats["stall_s"] >= 0 and stats["persist_s"] >= 0
    h2 = ckpt.save(6, _random_state(32 * MiB, seed=1))
    ckpt.wait()
    assert h2.done() and h2.exception() is None
    assert ckpt.steps() == [5, 6] and ckpt.latest() == 6
    assert "step=6 done" in repr(h2)


def test_failed_save_is_reported_on_its_handle(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root, rank=0, world_size=2, commit_timeout_s=1)
    handle = ckpt.save(1, {"a": torch.ones(3)})
    assert handle.wait(timeout=0.01) is False or handle.done()
    with pytest.raises(granary.GranaryError, match="rank 1"):
        handle.wait()
    assert isinstance(handle.exception(), granary.GranaryError)
    assert "step 1" in str(handle.exception())
    with pytest.raises(granary.GranaryError):
        ckpt.wait()
    assert ckpt.steps() == [] and ckpt.latest() is None


def test_latest_and_steps_list_only_committed_steps(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root, keep_last=0)
    assert ckpt.steps() == [] and ckpt.latest() is None
    ckpt.save(10, {"a": torch.ones(3)}).wait()
    ckpt.save(20, {"a": torch.ones(3) * 2}).wait()
    # Leftovers of a crashed save of step 30 (data and manifest, no COMMIT) are invisible.
    import shutil
    shutil.copytree(root / "step-000000000020", root / "step-000000000030")
    (root / "step-000000000030" / "COMMIT").unlink()
    # A COMMIT that does not decode does not commit.
    shutil.copytree(root / "step-000000000020", root / "step-000000000040")
    (root / "step-000000000040" / "COMMIT").write_bytes(b"GRNCKCMT garbage")
    fresh = granary.Checkpointer(root, keep_last=0)
    assert fresh.steps() == [10, 20] and fresh.latest() == 20
    assert fresh.load()["a"].tolist() == [2.0, 2.0, 2.0] and fresh.loaded_step == 20
    with pytest.raises(FileNotFoundError):
        fresh.load(step=30)
    # The crashed step can be saved over.
    fresh.save(30, {"a": torch.ones(3) * 3}).wait()
    assert fresh.steps() == [10, 20, 30]
    assert granary.Checkpointer(root).load()["a"].tolist() == [3.0, 3.0, 3.0]


def test_if_busy_skip(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root, if_busy="skip", keep_last=0)
    first = ckpt.save(1, _random_state(300 * MiB, pieces=10))
    busy = not first.done()
    second = ckpt.save(2, {"x": torch.ones(3)})
    if busy:
        # The previous save was persisting at save() time: this one is skipped.
        assert second.skipped() and second.done()
        assert second.wait() is True and second.exception() is None
        assert second.stats()["skipped"] is True
        assert "skipped" in repr(second)
    first.wait()
    second.wait()
    ckpt.wait()
    assert ckpt.steps() == ([1] if second.skipped() else [1, 2])
    # Once idle, the next save is not skipped.
    third = ckpt.save(3, {"x": torch.ones(3)})
    assert not third.skipped()
    third.wait()
    assert ckpt.latest() == 3
    if not busy:
        pytest.skip("the 300 MiB save finished before the next save() (skip not exercised)")


def test_if_busy_wait_blocks_until_previous_is_durable(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root, keep_last=0)
    first = ckpt.save(1, _random_state(64 * MiB))
    ckpt.save(2, {"x": torch.ones(3)})
    assert first.done() and first.exception() is None  # save(2) waited for it
    ckpt.wait()
    assert ckpt.steps() == [1, 2]


def _step_dirs(root: pathlib.Path) -> List[str]:
    return sorted(p.name for p in root.glob("step-*"))


def test_keep_last_and_keep_every_retention(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root, keep_last=2, keep_every=4, incremental=False)
    for step in range(1, 10):
        ckpt.save(step, {"a": torch.full((1000,), float(step))}).wait()
    assert ckpt.steps() == [4, 8, 9]
    assert _step_dirs(root) == [f"step-{s:012d}" for s in (4, 8, 9)]
    for s in (4, 8, 9):
        assert ckpt.load(s)["a"][0].item() == s
    ckpt = granary.Checkpointer(root, keep_last=1)
    ckpt.save(10, {"a": torch.full((1000,), 10.0)}).wait()
    assert ckpt.steps() == [10]


def test_incremental_unchanged_state_writes_nothing(root: pathlib.Path) -> None:
    state = _random_state(24 * MiB)
    state["small"] = torch.arange(10)
    state["meta"] = {"step": 1}
    want = clone_state(state)
    ckpt = granary.Checkpointer(root, keep_last=1)
    h1 = ckpt.save(1, state)
    h1.wait()
    assert h1.stats()["bytes_written"] == h1.stats()["bytes_total"] > 0
    h2 = ckpt.save(2, state)
    h2.wait()
    assert h2.stats()["bytes_written"] == 0
    assert h2.stats()["tensors_reused"] == 7
    assert ckpt.steps() == [2]  # step 1 removed by keep_last=1, its bytes still referenced
    # One changed tensor: only it is written.
    state["t3"][5] += 1
    h3 = ckpt.save(3, state)
    h3.wait()
    assert h3.stats()["bytes_written"] == state["t3"].numel() * 4
    assert ckpt.steps() == [3]
    fresh = granary.Checkpointer(root)
    want["t3"][5] += 1
    assert_same(fresh.load(), want)
    fresh.verify()
    # Non-incremental writes everything again.
    full = granary.Checkpointer(root, incremental=False)
    full.load()
    h4 = full.save(4, state)
    h4.wait()
    assert h4.stats()["bytes_written"] == h4.stats()["bytes_total"]


def test_incremental_after_load_in_a_new_process(root: pathlib.Path) -> None:
    state = _random_state(8 * MiB)
    granary.Checkpointer(root).save(1, state).wait()
    resumed = granary.Checkpointer(root)
    loaded = resumed.load()
    h = resumed.save(2, loaded)
    h.wait()
    assert h.stats()["bytes_written"] == 0
    assert_same(granary.Checkpointer(root).load(2), state)


def test_budget_streams_a_state_larger_than_the_budget(root: pathlib.Path) -> None:
    state = _random_state(80 * MiB, pieces=4)
    g = torch.Generator().manual_seed(5)
    wide = torch.randn(2 * 2560, 2048, generator=g)  # 40 MiB, staged non-contiguously
    state["strided_big"] = wide[::2]
    state["transposed_big"] = torch.randn(1024, 2048, generator=g).t()  # 8 MiB
    state["small"] = torch.arange(1000)
    want = clone_state(state)
    ckpt = granary.Checkpointer(root, budget_bytes=16 * MiB, keep_last=0)
    h = ckpt.save(1, state)
    h.wait()
    assert h.stats()["bytes_total"] == sum(t.numel() * t.element_size() for t in want.values())
    assert_same(granary.Checkpointer(root).load(), want)
    ckpt.verify(1)
    h = ckpt.save(2, state)  # the ring is reused
    h.wait()
    assert_same(granary.Checkpointer(root).load(2), want)


def test_incremental_with_a_budget_skips_unchanged_large_tensors(root: pathlib.Path) -> None:
    state = {"big": torch.randn(4 * MiB), "small": torch.randn(1000)}  # 16 MiB and 4 KB
    ckpt = granary.Checkpointer(root, budget_bytes=16 * MiB)
    ckpt.save(1, state).wait()
    h = ckpt.save(2, state)
    h.wait()
    assert h.stats()["tensors_reused"] == 2 and h.stats()["bytes_written"] == 0
    state["big"][123] += 1  # a changed large tensor is written again
    h = ckpt.save(3, state)
    h.wait()
    assert h.stats()["tensors_reused"] == 1 and h.stats()["bytes_written"] == 16 * MiB
    loaded = granary.Checkpointer(root).load(3)
    assert torch.equal(loaded["big"], state["big"]) and torch.equal(loaded["small"], state["small"])


def test_budget_stages_large_strided_tensors_in_pieces(root: pathlib.Path) -> None:
    # Pieces are 4 MiB; these tensors' rows do not line up with piece boundaries.
    g = torch.Generator().manual_seed(9)
    a = torch.randn(7, 1001, 997, generator=g)             # 27 MiB
    state = {
        "3d_permuted": a.permute(2, 0, 1),
        "3d_stepped": a[:, ::2, 1::3],
        "rows_of_odd_length": torch.randn(3001, 1003, generator=g).t(),
        "cplx": torch.randn(1500, 1300, dtype=torch.complex64, generator=g).t(),
        "int16_expanded": torch.arange(3000, dtype=torch.int16).expand(1500, 3000),
        "bool": (torch.randn(2900, 2900, generator=g) > 0).t(),
    }
    want = clone_state(state)
    ckpt = granary.Checkpointer(root, budget_bytes=16 * MiB)
    ckpt.save(1, state).wait()
    assert_same(granary.Checkpointer(root).load(), want)


_PEAK_SCRIPT = """
import resource, sys, torch, granary
MiB = 1 << 20
base = torch.randn(64 * MiB // 4, 2)            # 512 MiB
state = {"strided": base[:, 0]}                 # 256 MiB, not contiguous
base.add_(1)                                    # touch every page before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ckpt = granary.Checkpointer(sys.argv[1], budget_bytes=16 * MiB)
ckpt.save(1, state).wait()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print((after - before) // MiB)
"""


def test_budget_bounds_peak_memory_for_a_large_strided_tensor(root: pathlib.Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(root)], check=True,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="2"))
    extra_mib = int(out.stdout.split()[-1])
    # Budget (16 MiB) plus a constant; a contiguous copy of the tensor would add 256 MiB.
    assert extra_mib < 96, out.stdout


def test_budget_below_16_mib_is_rejected(root: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="16 MiB"):
        granary.Checkpointer(root, budget_bytes=1 * MiB)


# ---- verification and damage ---------------------------------------------------------------


def _two_steps(root: pathlib.Path) -> Dict[int, Dict[str, torch.Tensor]]:
    ckpt = granary.Checkpointer(root, keep_last=0, incremental=False)
    states = {}
    for step in (1, 2):
        state = {"model": {"w": torch.randn(600, 600), "b": torch.randn(600)}, "n": step}
        states[step] = clone_state(state)
        ckpt.save(step, state).wait()
    return states


def test_verify_passes_on_a_good_step(root: pathlib.Path) -> None:
    _two_steps(root)
    ckpt = granary.Checkpointer(root)
    ckpt.verify()
    ckpt.verify(1)
    with pytest.raises(FileNotFoundError):
        ckpt.verify(3)


@pytest.mark.parametrize("tensor", ["model/w", "model/b"])
def test_flipped_data_byte_is_data_loss_naming_tensor_and_file(root: pathlib.Path,
                                                              tensor: str) -> None:
    states = _two_steps(root)
    path = _flip_tensor_byte(root, 2, tensor)
    ckpt = granary.Checkpointer(root)
    for call in (lambda: ckpt.load(), lambda: ckpt.verify(2),
                 lambda: ckpt.load(into=clone_state(states[2]))):
        with pytest.raises(granary.DataLossError) as info:
            call()
        msg = str(info.value)
        assert tensor in msg and "step-000000000002/rank-00000.data-00000" in msg, msg
        assert info.value.status_code == "DataLoss"
    assert path.exists()
    # The older step is intact.
    ckpt.verify(1)
    assert_same(ckpt.load(1), states[1])


def test_fallback_loads_the_previous_step_with_a_warning(root: pathlib.Path) -> None:
    states = _two_steps(root)
    _flip_tensor_byte(root, 2, "model/w")
    ckpt = granary.Checkpointer(root)
    with pytest.warns(RuntimeWarning, match=r"step 2.*model/w"):
        got = ckpt.load(fallback=True)
    assert ckpt.loaded_step == 1
    assert_same(got, states[1])
    # into: the good step's values end up in the destination.
    into = clone_state(states[2])
    with pytest.warns(RuntimeWarning):
        got = ckpt.load(into=into, fallback=True)
    assert ckpt.loaded_step == 1
    assert_same(got, states[1])
    assert got["model"]["w"] is into["model"]["w"]
    assert_same(into["model"], states[1]["model"])
    # Every step damaged: DataLoss naming both.
    _flip_tensor_byte(root, 1, "model/b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(granary.DataLossError, match=r"step 2.*step 1"):
            ckpt.load(fallback=True)


def test_flipped_manifest_byte_is_data_loss_naming_it(root: pathlib.Path) -> None:
    states = _two_steps(root)
    manifest = root / "step-000000000002" / "rank-00000.manifest"
    _flip_byte(manifest, manifest.stat().st_size // 2)
    ckpt = granary.Checkpointer(root)
    for call in (lambda: ckpt.load(), lambda: ckpt.verify(2), lambda: ckpt.describe(2)):
        with pytest.raises(granary.DataLossError, match="step-000000000002/rank-00000.manifest"):
            call()
    with pytest.warns(RuntimeWarning, match="manifest"):
        got = ckpt.load(fallback=True)
    assert ckpt.loaded_step == 1
    assert_same(got, states[1])


def test_saving_a_committed_step_is_file_exists(root: pathlib.Path) -> None:
    ckpt = granary.Checkpointer(root)
    ckpt.save(3, {"a": torch.ones(2)}).wait()
    with pytest.raises(FileExistsError, match="step 3"):
        ckpt.save(3, {"a": torch.zeros(2)})
    with pytest.raises(FileExistsError):
        granary.Checkpointer(root).save(3, {"a": torch.zeros(2)})
    assert ckpt.load(3)["a"].tolist() == [1.0, 1.0]
    ckpt.save(4, {"a": torch.zeros(2)}).wait()  # still usable
    assert ckpt.steps() == [3, 4]


def test_load_of_an_empty_directory_is_file_not_found(root: pathlib.Path) -> None:
    root.mkdir()
    ckpt = granary.Checkpointer(root)
    with pytest.raises(FileNotFoundError):
        ckpt.load()
    with pytest.raises(FileNotFoundError):
        ckpt.load(fallback=True)
    with pytest.raises(FileNotFoundError):
        ckpt.load(step=1)
    with pytest.raises(FileNotFoundError):
        ckpt.verify()
    assert ckpt.loaded_step is None


# ---- two ranks through torch.distributed ---------------------------------------------------


def _rank_state(rank: int, step: int) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return {"model": {"w": torch.randn(512 + rank, 256, generator=g),
                      "b": torch.randn(7, generator=g)},
            "meta": {"rank": rank, "step": step}}


def _two_rank_worker(rank: int, world_size: int, rendezvous: str, url: str) -> None:
    import torch.distributed as dist

    # A file rendezvous: a free TCP port picked in advance can be taken by another test meanwhile.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world_size)
    try:
        ckpt = granary.Checkpointer(url, keep_last=0)
        assert (ckpt.rank, ckpt.world_size) == (rank, world_size)
        root = pathlib.Path(url.removeprefix("file://"))
        # Step 1: rank 0 saves first; nothing is committed until rank 1's part is durable.
        if rank == 0:
            h = ckpt.save(1, _rank_state(0, 1), save_id="one")
            assert h.wait(timeout=1.5) is False and not h.done()
            assert ckpt.latest() is None and not (root / "step-000000000001" / "COMMIT").exists()
        dist.barrier()
        if rank == 1:
            h = ckpt.save(1, _rank_state(1, 1), save_id="one")
        h.wait()  # rank 1 returns only once the step is committed
        assert ckpt.steps() == [1]
        # Step 2 through the collective save id.
        ckpt.save(2, _rank_state(rank, 2)).wait()
        assert ckpt.steps() == [1, 2]
        dist.barrier()
        # Each rank loads its own part.
        fresh = granary.Checkpointer(url)
        for step in (1, 2):
            assert_same(fresh.load(step), _rank_state(rank, step))
        into = _rank_state(rank, 0)
        fresh.load(into=into)
        assert_same(into, _rank_state(rank, 2) | {"meta": into["meta"]})
        fresh.verify(2)  # every rank's bytes
        assert fresh.describe(2)["world_size"] == 2
        dist.barrier()
        # DTensors: each rank stores its shard with the global shape and its offset in it, and
        # loads back into the local shard of a DTensor in place.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world_size,))
        full = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6)
        ckpt.save(3, {"w": distribute_tensor(full, mesh, [Shard(1)])}).wait()
        (entry,) = granary.Checkpointer(url).describe(3)["tensors"]
        assert entry["shape"] == [8, 3] and entry["global_shape"] == [8, 6]
        assert entry["global_offset"] == [0, 3 * rank]
        into = {"w": distribute_tensor(torch.zeros(8, 6), mesh, [Shard(1)])}
        local = into["w"].to_local()
        state = granary.Checkpointer(url).load(3, into=into)
        assert state["w"] is into["w"] and torch.equal(local, full[:, 3 * rank:3 * rank + 3])
        wrong = {"w": distribute_tensor(torch.zeros(6, 8), mesh, [Shard(0)])}  # other layout
        with pytest.raises(ValueError, match="'w'"):
            granary.Checkpointer(url).load(3, into=wrong)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # DTensor's caches keep the gloo process group (and its threads) alive past
    # destroy_process_group; a gloo thread releasing a finished collective during interpreter
    # shutdown aborts the process (see the same exit in test_dcp.py). Exit once all is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_ranks_commit_only_when_both_parts_are_durable(tmp_dir: pathlib.Path) -> None:
    import torch.multiprocessing as mp

    url = f"file://{tmp_dir / 'ckpt'}"
    mp.spawn(_two_rank_worker, args=(2, str(tmp_dir / "rendezvous"), url), nprocs=2, join=True)
    root = tmp_dir / "ckpt"
    assert _step_dirs(root) == ["step-000000000001", "step-000000000002", "step-000000000003"]
    names = sorted(p.name for p in (root / "step-000000000002").iterdir())
    assert names == ["COMMIT", "rank-00000.data-00000", "rank-00000.manifest",
                     "rank-00001.data-00000", "rank-00001.manifest"]
    # A single process cannot load a 2-rank step as if it were its own.
    with pytest.raises(granary.GranaryError, match="2 ranks"):
        granary.Checkpointer(url).load()
