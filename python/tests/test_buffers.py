"""Zero-copy reads into caller buffers: bytearray, memoryview, numpy, torch."""

from __future__ import annotations

import os

import numpy as np
import pytest

import granary


@pytest.fixture
def data(store: granary.Store) -> bytes:
    payload = os.urandom((2 << 20) + 123)  # above the direct-I/O threshold, unaligned size
    store.put("obj", payload)
    return payload


def test_get_into_bytearray(store: granary.Store, data: bytes) -> None:
    buf = bytearray(len(data))
    assert store.get_into("obj", buf) == len(data)
    assert buf == data


def test_get_into_with_offset_and_short_read(store: granary.Store, data: bytes) -> None:
    buf = bytearray(1000)
    assert store.get_into("obj", buf, offset=len(data) - 10) == 10
    assert buf[:10] == data[-10:]
    assert buf[10:] == bytes(990)  # untouched
    assert store.get_into("obj", buf, offset=len(data) + 1) == 0


def test_get_into_memoryview_slice_writes_in_place(store: granary.Store, data: bytes) -> None:
    backing = bytearray(b"\xff" * 100)
    assert store.get_into("obj", memoryview(backing)[10:20], offset=5) == 10
    assert backing[10:20] == data[5:15]
    assert backing[:10] == b"\xff" * 10 and backing[20:] == b"\xff" * 80


def test_get_into_numpy(store: granary.Store, data: bytes) -> None:
    arr = np.zeros(len(data) // 4, dtype=np.float32)
    n = store.get_into("obj", arr)
    assert n == arr.nbytes
    assert arr.tobytes() == data[: arr.nbytes]
    mat = np.empty((16, 64), dtype=np.uint8)
    assert store.get_into("obj", mat, offset=7) == 1024
    assert mat.tobytes() == data[7 : 7 + 1024]


def test_get_into_torch_shares_memory(store: granary.Store, data: bytes) -> None:
    torch = pytest.importorskip("torch")
    t = torch.zeros(1024, dtype=torch.float32)
    assert store.get_into("obj", t, offset=3) == 4096
    assert t.numpy().tobytes() == data[3 : 3 + 4096]
    # bfloat16 has no numpy dtype; granary views it as bytes instead.
    b = torch.empty((8, 16), dtype=torch.bfloat16)
    assert store.get_into("obj", b) == 256
    assert b.view(torch.uint8).numpy().tobytes() == data[:256]
    # A contiguous slice of a bigger tensor: only the slice is written.
    big = torch.zeros(100, dtype=torch.uint8)
    assert store.get_into("obj", big[10:20]) == 10
    assert bytes(big[10:20].numpy()) == data[:10]
    assert int(big[:10].sum()) == 0 and int(big[20:].sum()) == 0


def test_get_into_torch_parameter_with_grad(store: granary.Store, data: bytes) -> None:
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(16))
    assert store.get_into("obj", p) == 64
    assert p.detach().numpy().tobytes() == data[:64]


def test_put_from_numpy_and_torch(store: granary.Store) -> None:
    torch = pytest.importorskip("torch")
    arr = np.arange(1000, dtype=np.int32)
    store.put("np", arr)
    assert store.get("np") == arr.tobytes()
    t = torch.arange(100, dtype=torch.bfloat16)
    store.put("t", t)
    back = torch.empty(100, dtype=torch.bfloat16)
    store.get_into("t", back)
    assert torch.equal(back, t)


def test_read_only_buffers_are_rejected(store: granary.Store, data: bytes) -> None:
    with pytest.raises(ValueError, match="read-only"):
        store.get_into("obj", b"immutable bytes")
    ro = np.zeros(10, dtype=np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        store.get_into("obj", ro)
    with pytest.raises(ValueError, match="read-only"):
        store.get_into("obj", memoryview(bytearray(10)).toreadonly())


def test_non_contiguous_buffers_are_rejected(store: granary.Store, data: bytes) -> None:
    arr = np.zeros((10, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match="contiguous"):
        store.get_into("obj", arr[:, 2])
    with pytest.raises(ValueError, match="contiguous"):
        store.get_into("obj", arr.T)
    with pytest.raises(ValueError, match="contiguous"):
        store.get_into("obj", memoryview(bytearray(20))[::2])
    with pytest.raises(ValueError, match="contiguous"):
        store.put("x", arr[:, 2])
    assert arr.sum() == 0


def test_non_contiguous_torch_is_rejected(store: granary.Store, data: bytes) -> None:
    torch = pytest.importorskip("torch")
    t = torch.zeros((8, 8))
    with pytest.raises(ValueError, match="contiguous"):
        store.get_into("obj", t.t())


def test_non_buffers_are_type_errors(store: granary.Store, data: bytes) -> None:
    with pytest.raises(TypeError):
        store.get_into("obj", [0] * 10)
    with pytest.raises(TypeError):
        store.get_into("obj", None)


def test_get_many_into_numpy_and_torch(store: granary.Store, data: bytes) -> None:
    torch = pytest.importorskip("torch")
    a = np.empty(100, dtype=np.uint8)
    t = torch.empty(50, dtype=torch.uint8)
    assert store.get_many([("obj", 0, a), ("obj", 1000, t)]) == [100, 50]
    assert a.tobytes() == data[:100]
    assert bytes(t.numpy()) == data[1000:1050]


def test_buffer_cannot_be_resized_while_in_use(store: granary.Store, data: bytes) -> None:
    # get_into holds the buffer export for the duration of the call; afterwards resizing works.
    buf = bytearray(16)
    store.get_into("obj", buf)
    buf.extend(b"more")
    assert len(buf) == 20
