"""Asynchronous, crash-safe, verified checkpoints of training state: :class:`Checkpointer`.

::

    ckpt = granary.Checkpointer("file:///data/runs/exp1", keep_last=3)
    handle = ckpt.save(step, {"model": model.state_dict(), "optim": opt.state_dict(), "meta": {...}})
    ...                                  # training continues while the save persists
    handle.wait()                        # durable and committed (raises if the save failed)
    state = ckpt.load(into={"model": model.state_dict(), "optim": opt.state_dict()})

``save`` returns once every tensor is copied into host staging memory (pre-faulted and reused
across saves); native threads then checksum, write (large aligned O_DIRECT writes) and publish the
step. A step is visible only once it is committed, so a save killed at any moment leaves the
previous step as the newest. The state is a tree of dicts, lists and tuples whose leaves are
tensors (any dtype, contiguous or not, CPU or CUDA) or plain values (numbers, strings, None,
small picklable objects), which are stored in the manifest.

The format is specified in docs/formats/checkpoint.md.
"""

from __future__ import annotations

import base64
import json
import math
import pickle
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import _core
from .errors import DataLossError

__all__ = ["Checkpointer", "SaveHandle"]

# Plain values bigger than this when pickled belong in tensors, not in the manifest.
_MAX_PICKLED_BYTES = 1 << 20
_TREE_VERSION = 1


class SaveHandle:
    """The outcome of one :meth:`Checkpointer.save`. Thread-safe."""

    def __init__(self, core: Any) -> None:
        self._core = core

    @property
    def step(self) -> int:
        return self._core.step

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the save is durable and committed; raises its error if it failed.

        With ``timeout`` (seconds) returns False if the save is still persisting then, True once
        it is done. A skipped save (``if_busy="skip"``) returns True at once.
        """
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while not self._core.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(left, 0.005))
        self._core.wait()
        return True

    def done(self) -> bool:
        """True once the save committed, failed or was skipped."""
        return self._core.done()

    def skipped(self) -> bool:
        """True if the save was skipped because the previous one was still persisting."""
        return self._core.skipped()

    def exception(self) -> Optional[BaseException]:
        """The save's error once it is done (None while persisting, after success or a skip)."""
        return self._core.exception()

    def stats(self) -> Dict[str, Any]:
        """Step, tensors, tensors_reused, bytes_total, bytes_written, stall_s, persist_s, skipped."""
        return self._core.stats()

    def __repr__(self) -> str:
        state = "skipped" if self.skipped() else ("done" if self.done() else "persisting")
        return f"<granary.SaveHandle step={self.step} {state}>"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"checkpoint holds dtype {name!r}, which this torch does not know")
    return dtype


def _pickled(obj: Any, where: str) -> Dict[str, str]:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > _MAX_PICKLED_BYTES:
        raise ValueError(f"{where}: a {type(obj).__name__} of {len(data)} pickled bytes is too large "
                         f"for the manifest (limit {_MAX_PICKLED_BYTES}); store it as a tensor")
    return {"p": base64.b64encode(data).decode("ascii")}


def _unpickled(node: Dict[str, str]) -> Any:
    return pickle.loads(base64.b64decode(node["p"]))


class _Flattener:
    """Turns a state tree into JSON (the manifest's ``tree``) plus a list of named tensors."""

    def __init__(self) -> None:
        self.tensors: List[Tuple[str, torch.Tensor]] = []
        self._names: set = set()

    def _name(self, path: List[str]) -> str:
        base = "/".join(path) or "tensor"
        if not _utf8(base):  # a key with lone surrogates: names must be valid UTF-8
            base = base.encode("utf-8", "backslashreplace").decode("utf-8")
        name, n = base, 1
        while name in self._names:
            name, n = f"{base}#{n}", n + 1
        self._names.add(name)
        return name

    def key(self, k: Any, where: str) -> Dict[str, Any]:
        if type(k) is str and _utf8(k):
            return {"s": k}
        if isinstance(k, int) and not isinstance(k, bool) and -(1 << 63) <= k < (1 << 63):
            return {"i": k}
        return _pickled(k, where)

    def node(self, obj: Any, path: List[str]) -> Dict[str, Any]:
        where = "state[" + "][".join(repr(p) for p in path) + "]" if path else "state"
        if isinstance(obj, torch.Tensor):
            if obj.layout != torch.strided:
                raise ValueError(f"{where}: {obj.layout} tensors are not supported; save a dense tensor")
            if obj.is_quantized:
                raise ValueError(f"{where}: quantized tensors are not supported (their scale and zero "
                                 f"point would be lost); save int_repr() and the parameters")
            self.tensors.append((self._name(path), obj))
            return {"T": len(self.tensors) - 1}
        if isinstance(obj, Mapping):
            return {"d": [[self.key(k, where), self.node(v, path + [str(k)])] for k, v in obj.items()]}
        if type(obj) is list:
            return {"l": [self.node(v, path + [str(i)]) for i, v in enumerate(obj)]}
        if type(obj) is tuple:
            return {"t": [self.node(v, path + [str(i)]) for i, v in enumerate(obj)]}
        if obj is None or isinstance(obj, bool) or (type(obj) is str and _utf8(obj)):
            return {"v": obj}
        if type(obj) is int and -(1 << 63) <= obj < (1 << 63):
            return {"v": obj}
        if type(obj) is float and math.isfinite(obj):
            return {"v": obj}
        return _pickled(obj, where)


def _copy_flat_range(dest: torch.Tensor, t: torch.Tensor, begin: int, end: int) -> None:
    """Copies elements [begin, end) of `t` in row-major order into the 1-d `dest`, without
    materializing more of `t` than that range (t may be strided or on a device)."""
    if begin == end:
        return
    if t.dim() <= 1:
        dest.copy_(t.reshape(-1)[begin:end])
        return
    inner = t[0].numel()
    r0, r1 = begin // inner, end // inner
    if r0 == r1:
        _copy_flat_range(dest, t[r0], begin - r0 * inner, end - r0 * inner)
        return
    pos = 0
    if begin % inner:
        pos = inner - begin % inner
        _copy_flat_range(dest[:pos], t[r0], begin % inner, inner)
        r0 += 1
    if r1 > r0:
        rows = t[r0:r1]
        dest[pos:pos + rows.numel()].view(rows.shape).copy_(rows)
        pos += rows.numel()
    if end % inner:
        _copy_flat_range(dest[pos:], t[r1], 0, end % inner)


def _utf8(s: str) -> bool:
    """True if `s` is valid Unicode (no lone surrogates), so the manifest's JSON can hold it."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dtensor_shard(t: torch.Tensor) -> Optional[Tuple[torch.Tensor, List[int], List[int]]]:
    """For a DTensor: its local shard, the global shape and the shard's offset in it."""
    module = sys.modules.get("torch.distributed.tensor")  # loaded by whoever made a DTensor
    dtensor_type = getattr(module, "DTensor", None)
    if dtensor_type is None or not isinstance(t, dtensor_type):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), list(t.shape), list(offset)


def _walk_into(into: Any, key: Any) -> Any:
    """The child of `into` under `key` (dict key or sequence index), or None."""
    try:
        if isinstance(into, Mapping):
            return into.get(key)
        if isinstance(into, (list, tuple)) and isinstance(key, int) and 0 <= key < len(into):
            return into[key]
    except TypeError:
        pass
    return None


def _tensors_of(obj: Any, path: str, out: Dict[int, str]) -> None:
    """Every tensor in `obj` by id, with its path, for strict checks of `into`."""
    if isinstance(obj, torch.Tensor):
        out[id(obj)] = path
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _tensors_of(v, f"{path}[{k!r}]", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors_of(v, f"{path}[{i}]", out)


class Checkpointer:
    """Saves and loads checkpoints under one root URL (``file:///dir``, a path, ``mem://name``).

    Args:
        url: the checkpoint root.
        keep_last: committed steps to keep (newest first); 0 keeps all.
        keep_every: also keep steps divisible by this.
        budget_bytes: cap on staging memory. None: staging grows to one copy of the state, so
            ``save`` returns after one memory copy. A state larger than the budget streams
            through it (``save`` then blocks until only a budget's worth is left to write).
        incremental: skip tensors whose bytes equal the previous save's (or last full load's).
        if_busy: ``"wait"`` blocks ``save`` until the previous save is durable; ``"skip"``
            returns a handle whose ``skipped()`` is True instead.
        rank, world_size: this process's rank; default from ``torch.distributed`` when it is
            initialized, else 0 of 1. Every rank writes its own files; rank 0 commits once all
            ranks' parts are durable.
        commit_timeout_s: how long ranks wait for each other at commit.
        persist_nice: nice value of the native persister thread (0-19, default 19), so the
            training loop's threads win the CPU while a save persists (the save takes longer to
            become durable when the cores are busy); 0 persists at normal priority.
    """

    def __init__(self, url: str, keep_last: int = 3, keep_every: Optional[int] = None,
                 budget_bytes: Optional[int] = None, incremental: bool = True,
                 if_busy: str = "wait", *, rank: Optional[int] = None,
                 world_size: Optional[int] = None, commit_timeout_s: int = 1800,
                 data_file_bytes: int = 1 << 30, collect_garbage: bool = True,
                 persist_nice: int = 19) -> None:
        self._dist = None
        if rank is None and world_size is None:
            dist = getattr(torch, "distributed", None)
            if dist is not None and dist.is_available() and dist.is_initialized():
                self._dist = dist
                rank, world_size = dist.get_rank(), dist.get_world_size()
        rank = 0 if rank is None else rank
        world_size = 1 if world_size is None else world_size
        self._core = _core.Checkpointer(
            str(url), keep_last=keep_last, keep_every=keep_every or 0, budget_bytes=budget_bytes or 0,
            incremental=incremental, if_busy=if_busy, rank=rank, world_size=world_size,
            commit_timeout_s=commit_timeout_s, data_file_bytes=data_file_bytes,
            collect_garbage=collect_garbage, persist_nice=persist_nice)
        self.rank, self.world_size = rank, world_size
        #: The step the last :meth:`load` returned.
        self.loaded_step: Optional[int] = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._core.url

    # ---- saving ---------------------------------------------------------------------------

    def save(self, step: int, state: Any, *, save_id: Optional[str] = None) -> SaveHandle:
        """Snapshots `state` and persists it as `step` in the background; returns a handle.

        Returns once every tensor is copied; changing or freeing them afterwards does not change
        what is saved. With several ranks every rank must call ``save`` for the same step (with
        torch.distributed this is a collective: rank 0 picks the save id).
        """
        flat = _Flattener()
        tree = flat.node(state, [])
        metadata = json.dumps({"granary_tree": {"version": _TREE_VERSION, "tree": tree}},
                              allow_nan=False, separators=(",", ":"))
        if save_id is None:
            save_id = self._agree_save_id(step)
        specs = []
        tensors = []
        for name, t in flat.tensors:
            t = t.detach()
            global_shape = global_offset = None
            shard = _dtensor_shard(t)
            if shard is not None:  # this rank's shard, with where it sits in the global tensor
                t, global_shape, global_offset = shard
            if t.is_conj():
                t = t.resolve_conj()
            if t.is_neg():
                t = t.resolve_neg()
            tensors.append(t)
            specs.append((name, _dtype_name(t.dtype), list(t.shape), global_shape, global_offset))
        with self._lock:
            session = self._core.begin_save(step, specs, metadata, save_id)
            try:
                if not session.skipped:
                    self._stage(session, tensors)
                return SaveHandle(session.finish())
            except BaseException:
                session.abandon()
                raise

    def _agree_save_id(self, step: int) -> str:
        if self._dist is None or self.world_size == 1:
            return f"{step}-{uuid.uuid4().hex}" if self.world_size == 1 else str(step)
        ids = [uuid.uuid4().hex if self.rank == 0 else None]
        self._dist.broadcast_object_list(ids, src=0)
        return f"{step}-{ids[0]}"

    @staticmethod
    def _stage(session: Any, tensors: List[torch.Tensor]) -> None:
        batch: List[Tuple[int, int, int]] = []
        max_piece = session.max_piece_bytes
        for i, t in enumerate(tensors):
            nbytes = t.numel() * t.element_size()
            if t.device.type == "cpu" and t.is_contiguous():
                batch.append((i, t.data_ptr(), nbytes))  # copied natively, GIL released
                continue
            if batch:
                session.copy_in_many(batch)
                batch = []
            if nbytes == 0:
                session.reserve(i, 0)
            elif nbytes <= max_piece:
                # Strided or device tensors: torch copies straight into the staging memory.
                view = session.reserve(i, 0)
                dest = torch.frombuffer(view, dtype=torch.uint8).view(t.dtype).view(t.shape)
                dest.copy_(t)
                del dest, view
                session.commit_piece()
            else:
                # Larger than a piece (a budget is set): stage piece by piece rather than through
                # a contiguous copy of the whole tensor, which would exceed the budget.
                element = t.element_size()
                offset = 0
                while offset < nbytes:
                    view = session.reserve(i, offset)
                    n = view.nbytes  # a multiple of the element size (whole 4 MiB chunks)
                    dest = torch.frombuffer(view, dtype=torch.uint8).view(t.dtype)
                    _copy_flat_range(dest, t, offset // element, (offset + n) // element)
                    del dest, view
                    session.commit_piece()
                    offset += n
        if batch:
            session.copy_in_many(batch)

    def wait(self) -> None:
        """Blocks until every save is durable; raises the last save's error if it failed."""
        self._core.wait_all()

    # ---- listing ---------------------------------------------------------------------------

    def steps(self) -> List[int]:
        """Committed steps, ascending."""
        return self._core.steps()

    def latest(self) -> Optional[int]:
        """The newest committed step, or None."""
        return self._core.latest()

    # ---- loading ---------------------------------------------------------------------------

    def load(self, step: Optional[int] = None, into: Any = None, fallback: bool = False,
             strict: bool = True) -> Any:
        """Loads a committed step (default: the newest) and returns its state tree.

        With ``into`` (a state tree like the one saved, e.g. ``{"model": model.state_dict()}``)
        tensors are read in place into ``into``'s tensors (no intermediate copy for contiguous
        CPU tensors) and the returned tree holds those same tensor objects; a shape or dtype
        mismatch is a ValueError naming the tensor, and with ``strict`` a tensor of ``into`` that
        the checkpoint lacks is a KeyError. Without ``into`` new CPU tensors are returned.
        Every byte is checked against its crc32c; damage raises :class:`granary.DataLossError`
        naming the tensor and file. With ``fallback=True`` a damaged step is skipped (with a
        warning) for the newest older step that loads; :attr:`loaded_step` says which loaded.
        """
        if step is None:
            candidates = list(reversed(self.steps()))
            if not candidates:
                raise FileNotFoundError(f"no committed checkpoint in {self.url}")
        else:
            candidates = [step] + ([s for s in reversed(self.steps()) if s < step] if fallback else [])
        if not fallback:
            candidates = candidates[:1]
        errors = []
        for s in candidates:
            try:
                state = self._load_step(s, into, strict)
            except DataLossError as e:
                if not fallback:
                    raise
                errors.append(f"step {s}: {e}")
                warnings.warn(f"granary: checkpoint step {s} is damaged ({e}); trying an older step",
                              RuntimeWarning, stacklevel=2)
                continue
            self.loaded_step = s
            return state
        raise DataLossError(f"no step of {self.url} loads: " + "; ".join(errors))

    def _load_step(self, step: int, into: Any, strict: bool) -> Any:
        _, metadata_json, stored = self._core.describe(step)
        try:
            tree = json.loads(metadata_json)["granary_tree"]
        except (KeyError, ValueError):
            raise DataLossError(f"step {step} of {self.url}: manifest has no granary state tree") from None
        if tree.get("version") != _TREE_VERSION:
            raise ValueError(f"step {step} of {self.url}: state tree version {tree.get('version')} "
                             f"is not supported")
        targets: List[Tuple[str, int, int]] = []
        post: List[Tuple[torch.Tensor, torch.Tensor]] = []
        used: set = set()
        keep_alive: List[torch.Tensor] = []

        def tensor(index: int, into_t: Any) -> torch.Tensor:
            name, dtype_name, shape, global_shape, global_offset, length = stored[index]
            stored_global = (list(global_shape), list(global_offset)) if global_shape else None
            dtype = _dtype_of(dtype_name)
            if isinstance(into_t, torch.Tensor):
                used.add(id(into_t))
                shard = _dtensor_shard(into_t.detach())
                result = into_t
                if shard is not None:  # a DTensor: fill this rank's local shard in place
                    into_t = shard[0]
                if into_t.dtype != dtype or list(into_t.shape) != list(shape):
                    raise ValueError(f"tensor {name!r}: checkpoint step {step} holds {dtype_name} "
                                     f"{list(shape)}, the destination is "
                                     f"{_dtype_name(into_t.dtype)} {list(into_t.shape)}")
                if shard is not None and stored_global and (shard[1], shard[2]) != stored_global:
                    raise ValueError(f"tensor {name!r}: checkpoint step {step} holds the shard at "
                                     f"{stored_global[1]} of {stored_global[0]}, the destination "
                                     f"DTensor's is at {shard[2]} of {shard[1]} (reshard through "
                                     f"granary.dcp)")
                dest = into_t.detach()
                if dest.device.type == "cpu" and dest.is_contiguous():
                    targets.append((name, dest.data_ptr(), length))
                    keep_alive.append(dest)
                    return result
                tmp = torch.empty(shape, dtype=dtype)
                targets.append((name, tmp.data_ptr(), length))
                post.append((dest, tmp))
                return result
            t = torch.empty(shape, dtype=dtype)
            targets.append((name, t.data_ptr(), length))
            return t

        def decode(node: Dict[str, Any], into_node: Any) -> Any:
            if "T" in node:
                return tensor(node["T"], into_node)
            if "d" in node:
                out = {}
                for k_node, v_node in node["d"]:
                    k = k_node["s"] if "s" in k_node else k_node["i"] if "i" in k_node else _unpickled(k_node)
                    out[k] = decode(v_node, _walk_into(into_node, k))
                return out
            if "l" in node:
                return [decode(v, _walk_into(into_node, i)) for i, v in enumerate(node["l"])]
            if "t" in node:
                return tuple(decode(v, _walk_into(into_node, i)) for i, v in enumerate(node["t"]))
            if "v" in node:
                return node["v"]
            if "p" in node:
                return _unpickled(node)
            raise DataLossError(f"step {step} of {self.url}: unknown state tree node {sorted(node)}")

        state = decode(tree["tree"], into)
        if strict and into is not None:
            missing = {tid: path for tid, path in self._into_tensors(into).items() if tid not in used}
            if missing:
                raise KeyError(f"checkpoint step {step} of {self.url} has no tensor for "
                               + ", ".join(sorted(missing.values())[:5])
                               + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        self._core.load(step, targets)
        for dest, tmp in post:
            dest.copy_(tmp)
        return state

    @staticmethod
    def _into_tensors(into: Any) -> Dict[int, str]:
        out: Dict[int, str] = {}
        _tensors_of(into, "into", out)
        return out

    def describe(self, step: Optional[int] = None) -> Dict[str, Any]:
        """This rank's tensors of a committed step: name, dtype, shape and bytes of each."""
        step = self._step_or_latest(step)
        world_size, _, stored = self._core.describe(step)
        return {"step": step, "world_size": world_size,
                "tensors": [{"name": n, "dtype": d, "shape": list(s), "bytes": length,
                             **({"global_shape": list(gs), "global_offset": list(go)} if gs else {})}
                            for n, d, s, gs, go, length in stored]}

    def verify(self, step: Optional[int] = None) -> None:
        """Re-reads every tensor of every rank of a step (default: newest) and checks every
        checksum; raises :class:`granary.DataLossError` naming the damaged tensor and file."""
        self._core.verify(self._step_or_latest(step))

    def collect_garbage(self) -> None:
        """Applies keep_last/keep_every now and removes leftovers of crashed saves."""
        self._core.collect_garbage()

    def _step_or_latest(self, step: Optional[int]) -> int:
        if step is not None:
            return step
        latest = self.latest()
        if latest is None:
            raise FileNotFoundError(f"no committed checkpoint in {self.url}")
        return latest

    def close(self) -> None:
        """Waits for the save in flight (its error stays on its handle)."""
        try:
            self._core.wait_all()
        except Exception:  # noqa: BLE001 - reported through the save's handle
            pass

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<granary.Checkpointer {self.url!r} rank {self.rank}/{self.world_size}>"
