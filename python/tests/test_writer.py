"""granary.Writer: streaming uploads, commit on success, abort on error."""

from __future__ import annotations

import hashlib
import os

import pytest

import granary


def test_context_manager_commits(store: granary.Store) -> None:
    chunks = [os.urandom(100_000) for _ in range(30)]
    with store.writer("w/obj", part_bytes=1 << 20, max_parts_in_flight=2) as w:
        assert w.state == "open"
        for chunk in chunks:
            assert w.write(chunk) == len(chunk)
        assert not store.exists("w/obj")  # invisible until commit
    assert w.state == "committed"
    assert w.bytes_written == 3_000_000
    assert store.get("w/obj") == b"".join(chunks)


def test_context_manager_aborts_on_exception(store: granary.Store) -> None:
    store.put("w/keep", b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer("w/keep") as w:
            w.write(b"half written")
            raise RuntimeError("boom")
    assert w.state == "aborted"
    assert store.get("w/keep") == b"previous"
    with pytest.raises(RuntimeError):
        with store.writer("w/new") as w:
            w.write(b"x")
            raise RuntimeError("boom")
    assert not store.exists("w/new")
    assert [o.key for o in store.list()] == ["w/keep"]


def test_explicit_commit_then_exit_is_fine(store: granary.Store) -> None:
    with store.writer("w/a") as w:
        w.write(b"abc")
        w.commit()
        w.commit()  # idempotent
    assert store.get("w/a") == b"abc"


def test_write_after_commit_or_abort_fails(store: granary.Store) -> None:
    w = store.writer("w/b")
    w.write(b"1")
    w.commit()
    with pytest.raises(ValueError, match="committed"):
        w.write(b"2")
    w2 = store.writer("w/c")
    w2.abort()
    w2.abort()  # idempotent
    with pytest.raises(ValueError, match="aborted"):
        w2.commit()
    assert not store.exists("w/c")


def test_dropped_writer_leaves_nothing(store: granary.Store) -> None:
    w = store.writer("w/dropped")
    w.write(b"data")
    del w
    assert not store.exists("w/dropped")


def test_large_streamed_object_checksum(store: granary.Store) -> None:
    h = hashlib.sha256()
    chunk = os.urandom(1 << 20)
    with store.writer("w/big", part_bytes=4 << 20) as w:
        for i in range(20):
            piece = chunk[i:] + chunk[:i]
            h.update(piece)
            w.write(memoryview(piece))
    assert store.stat("w/big").size == 20 << 20
    assert hashlib.sha256(store.get("w/big")).hexdigest() == h.hexdigest()


def test_bad_writer_options_are_value_errors(store: granary.Store) -> None:
    with pytest.raises(ValueError):
        store.writer("w/x", part_bytes=0)
    with pytest.raises(ValueError):
        store.writer("w/x", max_parts_in_flight=0)
    with pytest.raises(ValueError):
        store.writer("../x")


def test_store_closed_while_writer_open(store_url: str) -> None:
    s = granary.open(store_url)
    w = s.writer("w/late")
    s.close()
    w.write(b"still works")
    w.commit()
    assert granary.open(store_url).get("w/late") == b"still works"


def test_writer_is_a_file_object_for_torch_save(store: granary.Store) -> None:
    torch = pytest.importorskip("torch")
    import io

    state = {"w": torch.arange(1000, dtype=torch.float32), "step": 7}
    with store.writer("ckpt.pt") as w:
        w.flush()  # a no-op, as file objects have
        torch.save(state, w)
    got = torch.load(io.BytesIO(store.get("ckpt.pt")))
    assert torch.equal(got["w"], state["w"]) and got["step"] == 7
