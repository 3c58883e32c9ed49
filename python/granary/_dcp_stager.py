"""granary.dcp.Stager: ``dcp.async_save`` staging into CPU buffers kept across saves.

DCP's own stagers copy the whole state into freshly allocated memory on every save; the first
touch of that memory (page faults, zeroing) costs several times the copy itself, the training
loop waits for all of it, and freeing it afterwards competes with training. A Stager allocates
its buffers on the first save and copies into the same, already faulted-in buffers afterwards.
See docs/formats/dcp.md, "Async saves".
"""

from __future__ import annotations

import copy
import ctypes
import gc
import io
import sys
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.distributed.checkpoint.staging import AsyncStager

try:  # DTensor needs torch.distributed; a build without it just has none to stage.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]

__all__ = ["Stager"]

# Tensors of plain types whose bytes a buffer can hold (subclasses other than Parameter and
# DTensor, sparse and quantized tensors are deep-copied each save instead).
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
# Immutable leaves: staged by reference.
_ATOMS = (int, float, complex, str, bytes, type(None), torch.dtype, torch.device)
# Buffers of at least two huge pages ask the kernel for transparent huge pages before their first
# touch (with THP in "madvise" mode, 2 MiB faults make the first save's copy about 1.5x faster).
_HUGE_PAGE_BYTES = 2 << 20
_MADV_HUGEPAGE = 14
# How long stage() waits for a busy buffer set to be released before it allocates another.
_BUSY_WAIT_S = 0.05

_Path = Tuple[Any, ...]


def _advise_huge_pages(t: torch.Tensor) -> None:
    """Best effort: MADV_HUGEPAGE over the 2 MiB-aligned interior of a fresh buffer."""
    nbytes = t.numel() * t.element_size()
    if nbytes < 2 * _HUGE_PAGE_BYTES or not sys.platform.startswith("linux"):
        return
    start = -(-t.data_ptr() // _HUGE_PAGE_BYTES) * _HUGE_PAGE_BYTES
    end = (t.data_ptr() + nbytes) // _HUGE_PAGE_BYTES * _HUGE_PAGE_BYTES
    if end <= start:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE)
    except (OSError, AttributeError):
        pass  # only an optimization: without it the first touch takes 4 KiB faults


class _BufferSet:
    """One staged copy of a state: a CPU buffer per tensor path, reused while shapes hold."""

    def __init__(self) -> None:
        self.buffers: Dict[_Path, torch.Tensor] = {}
        self.leases = 0  # staged tensors handed out and still alive (guarded by Stager._mu)
        self.filling = False  # a stage() is copying into it (guarded by Stager._mu)

    def free(self) -> bool:
        return self.leases == 0 and not self.filling

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


class Stager(AsyncStager):
    """A DCP AsyncStager that copies the state into CPU buffers reused across saves.

    Use one instance for the whole job::

        stager = granary.dcp.Stager()
        fut = dcp.async_save(state, storage_writer=granary.dcp.Writer(url), async_stager=stager)

    (``granary.dcp.Writer`` is itself an AsyncStager backed by a process-wide Stager, so
    ``dcp.async_save(state, storage_writer=granary.dcp.Writer(url))`` already stages this way.)

    The first save allocates one CPU buffer per tensor; later saves copy into the same buffers
    (``copy_``, which releases the GIL and uses torch's intra-op threads). A tensor whose shape
    or dtype changed gets a new buffer; buffers of tensors no longer in the state are dropped.
    Buffers are contiguous: non-contiguous and device tensors are staged as contiguous CPU
    tensors. DTensors are staged as DTensors over a CPU copy of their local shard; other tensor
    subclasses (ShardedTensor, sparse, quantized) and non-tensor values are deep-copied each
    save; containers (dict, list, tuple and their subclasses) are rebuilt around the copies.

    A buffer set is never overwritten while a save still uses it: each staged tensor holds a
    lease, released when DCP drops the staged state after persisting (or failing). A save that
    starts while the previous one is still persisting waits up to 50 ms for it, then stages
    into a second buffer set, which is kept too: memory held is one copy of the state per save
    in flight at once (one when each save waits for the previous, as ``if_busy="wait"`` does).
    :meth:`close` releases the buffers (a later save allocates them again).

    Thread-safe; ``stage`` calls are serialized.
    """

    # stage() has finished copying when it returns: DCP need not call synchronize_staging.
    _synchronize_after_execute: bool = False

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._freed = threading.Condition(self._mu)  # notified when a buffer set becomes free
        self._stage_mu = threading.Lock()  # one stage() at a time
        self._sets: List[_BufferSet] = []  # guarded by _mu

    @property
    def staged_bytes(self) -> int:
        """Bytes of staging buffers currently held (all buffer sets)."""
        with self._mu:
            return sum(s.nbytes() for s in self._sets)

    def stage(self, state_dict: Any) -> Any:
        """Returns a copy of ``state_dict`` whose tensors live in this stager's CPU buffers.

        Training may change the source tensors as soon as this returns. Raises whatever the
        copy raises (the buffer set is then left for the next save to overwrite).
        """
        with self._stage_mu:
            bufs = self._acquire()
            leases: List[torch.Tensor] = []
            try:
                staged = _Copier(bufs, leases).value(state_dict, ())
            except BaseException:
                with self._mu:
                    bufs.filling = False
                raise
            with self._mu:
                bufs.leases = len(leases)
                bufs.filling = False
            for alias in leases:
                weakref.finalize(alias, self._release, bufs)
            return staged

    def synchronize_staging(self) -> None:
        """No-op: :meth:`stage` returns only after the copy is complete."""

    def close(self) -> None:
        """Drops the buffers of every buffer set not in use by a save (those in use are
        dropped when their save ends)."""
        with self._mu:
            self._sets = [s for s in self._sets if not s.free()]
            for s in self._sets:
                s.buffers = {}  # the staged tensors keep the memory alive until the save ends

    def _release(self, bufs: _BufferSet) -> None:
        with self._mu:
            bufs.leases -= 1
            if bufs.free():
                self._freed.notify_all()

    def _acquire(self) -> _BufferSet:
        """A free buffer set (marked filling), waiting briefly for a busy one before making a
        new one: a save's staged state is dropped by DCP's worker thread a moment *after* its
        future completes, so a save started right after ``result()`` would otherwise find the
        previous set still leased."""
        deadline = time.monotonic() + _BUSY_WAIT_S
        collected = False
        while True:
            with self._mu:
                while True:
                    for s in self._sets:
                        if s.free():
                            s.filling = True
                            return s
                    remaining = deadline - time.monotonic()
                    if not self._sets or remaining <= 0:
                        break
                    self._freed.wait(remaining)
                if not self._sets or collected:
                    s = _BufferSet()
                    s.filling = True
                    self._sets.append(s)
                    return s
            # A finished save's staged state may only be waiting for the cycle collector; a
            # collection is much cheaper than faulting in a second copy of the state.
            gc.collect()
            collected = True

class _Copier:
    """One stage(): walks the state, copying tensors into ``bufs`` (reused or new)."""

    def __init__(self, bufs: _BufferSet, leases: List[torch.Tensor]) -> None:
        self._bufs = bufs
        self._leases = leases
        self._seen: set = set()

    def value(self, x: Any, path: _Path) -> Any:
        out = self._value(x, path)
        if not path:  # the whole state is staged: forget buffers of tensors that are gone
            for p in [p for p in self._bufs.buffers if p not in self._seen]:
                del self._bufs.buffers[p]
        return out

    def _value(self, x: Any, path: _Path) -> Any:
        if isinstance(x, _ATOMS):
            return x
        if DTensor is not None and isinstance(x, DTensor):
            local = self._tensor(x._local_tensor, path)
            return DTensor(local, x._spec, requires_grad=False)
        if isinstance(x, torch.Tensor):
            if (
                type(x) in _PLAIN_TENSOR_TYPES
                and x.layout == torch.strided
                and not x.is_quantized
                and x.device.type != "meta"
            ):
                return self._tensor(x, path)
            return copy.deepcopy(x.detach() if type(x) in _PLAIN_TENSOR_TYPES else x)
        if isinstance(x, dict):
            if type(x) is dict:
                return {k: self._value(v, path + (k,)) for k, v in x.items()}
            out = copy.copy(x)  # keeps the mapping's type and attributes (defaultdict, ...)
            for k, v in x.items():
                out[k] = self._value(v, path + (k,))
            return out
        if isinstance(x, list):
            items = [self._value(v, path + (i,)) for i, v in enumerate(x)]
            if type(x) is list:
                return items
            out = copy.copy(x)
            out[:] = items
            return out
        if isinstance(x, tuple):
            items = [self._value(v, path + (i,)) for i, v in enumerate(x)]
            return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
        if isinstance(x, io.BytesIO):
            return io.BytesIO(x.getvalue())
        return copy.deepcopy(x)

    def _tensor(self, src: torch.Tensor, path: _Path) -> torch.Tensor:
        self._seen.add(path)
        buf = self._bufs.buffers.get(path)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            buf = torch.empty(src.shape, dtype=src.dtype, device="cpu")
            _advise_huge_pages(buf)
            self._bufs.buffers[path] = buf
        with torch.no_grad():
            # Conjugate/negative views are resolved by copy_; the GIL is released inside.
            buf.copy_(src.detach())
        # A fresh tensor object over the buffer: its lifetime tells when the save is done.
        alias = buf.detach()
        self._leases.append(alias)
        return alias
