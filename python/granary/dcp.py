"""PyTorch distributed checkpointing (``torch.distributed.checkpoint``) on granary stores.

FSDP and DTensor users save through DCP; these two classes plug granary in without changing the
training code::

    import torch.distributed.checkpoint as dcp
    import granary.dcp

    dcp.save(state, storage_writer=granary.dcp.Writer("file:///data/runs/exp1/step-100"))
    dcp.async_save(state, storage_writer=granary.dcp.Writer(url))     # thread or process
    dcp.load(state, storage_reader=granary.dcp.Reader("file:///data/runs/exp1/step-100"))

A URL is ``file:///abs/dir``, a plain path, or ``mem://name/prefix``; ``checkpoint_id=`` given to
``dcp.save``/``dcp.load`` takes its place (as with DCP's own FileSystemWriter). Each rank writes
a few large data objects holding its tensors' raw bytes with a crc32c per 4 MiB chunk; the
coordinator then writes the DCP metadata and publishes the checkpoint by creating ``COMMIT``
(create-only). A checkpoint without ``COMMIT`` does not exist for :class:`Reader`, and a second
save into a committed checkpoint is refused (FileExistsError). Loads read straight into the
destination tensors where layouts allow and verify every byte they read (DataLossError naming
the tensor and object). Resharding is DCP's planner's job and works as with any DCP storage.
The layout and its limits are in docs/formats/dcp.md.

``dcp.async_save`` stages the state through :class:`Stager` (Writer is a DCP AsyncStager backed
by one process-wide Stager), which copies into CPU buffers kept and reused across saves instead
of DCP's fresh copy per save; pass ``async_stager=granary.dcp.Stager()`` (one instance per job)
to give a save its own.

Importing this module imports torch; ``import granary`` alone does not.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import io
import json
import math
import os
import pickle
import re
import threading
import uuid
import zlib
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from . import _core
from ._dcp_stager import Stager
from .errors import DataLossError
from .store import Store
from .store import open as _open_store

__all__ = ["Writer", "Reader", "Stager", "shared_stager"]

StrPath = Union[str, "os.PathLike[str]"]

# -- format constants (docs/formats/dcp.md) ---------------------------------------------------

#: ``format`` field of COMMIT.
FORMAT_NAME = "granary-dcp"
#: ``version`` field of COMMIT; readers reject other versions.
FORMAT_VERSION = 1
#: Created last, with put_if_absent: the checkpoint exists once this object does.
COMMIT_KEY = "COMMIT"
#: Each item's bytes carry one checksum per chunk of this many bytes (the last may be shorter).
CHUNK_BYTES = 4 << 20
#: Tensors of at least this many bytes start at a multiple of LARGE_ALIGN_BYTES in their object
#: (so O_DIRECT reads land on aligned offsets); everything else at a multiple of SMALL_ALIGN_BYTES.
ALIGN_THRESHOLD_BYTES = 64 << 10
LARGE_ALIGN_BYTES = 4096
SMALL_ALIGN_BYTES = 64
#: Default read staging: bytes of temporary buffers in flight when a read cannot go straight into
#: its destination (resharded or dtype-converting loads).
DEFAULT_READ_STAGING_BYTES = 256 << 20
# Reads are issued in batches of about this many bytes; one batch is verified while the next is
# read.
_BATCH_BYTES = 64 << 20

_DATA_SUFFIX = ".distcp"
_METADATA_PREFIX = "metadata."
_SAVE_ID_HEX = 12
_LEFTOVER_RE = re.compile(
    r"(?:__\d+_\d+\.(?P<data>[0-9a-f]{%d})\.distcp|metadata\.(?P<meta>[0-9a-f]{%d}))"
    % (_SAVE_ID_HEX, _SAVE_ID_HEX)
)
# The version DCP's own FileSystemWriter stamps into Metadata.version.
_DCP_METADATA_VERSION = "1.0.0"

# -- checksums ----------------------------------------------------------------------------------

_native_crc32c: Optional[Callable[..., int]] = getattr(_core, "crc32c", None)


def _make_crc32c_table() -> List[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def _crc32c_python(data: Any, crc: int = 0) -> int:
    """CRC-32C in pure Python: megabytes per second, only for reading without the native one."""
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for b in memoryview(data).cast("B"):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c(data: Any, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of a contiguous buffer, continuing from ``crc``.

    Uses ``granary._core.crc32c`` when the installed extension has it, else pure Python.
    """
    if _native_crc32c is not None:
        return _native_crc32c(data, crc)
    return _crc32c_python(data, crc)


# Algorithms by the name recorded in the checkpoint. Writers use crc32c when it is native and
# fall back to zlib's CRC-32 (fast everywhere) otherwise; readers check with whichever was used.
_CHECKSUMS: Dict[str, Callable[..., int]] = {"crc32c": _crc32c, "crc32": zlib.crc32}


def _write_checksum() -> str:
    return "crc32c" if _native_crc32c is not None else "crc32"


def _checksum_fn(name: str, where: str) -> Callable[..., int]:
    fn = _CHECKSUMS.get(name)
    if fn is None:
        raise _data_loss(f"{where}: unknown checksum algorithm {name!r}")
    return fn


def _data_loss(message: str) -> DataLossError:
    e = DataLossError(message)
    e.status_code = "DataLoss"
    return e


# -- locations ----------------------------------------------------------------------------------


def _url_str(url: StrPath) -> str:
    return os.fsdecode(os.fspath(url))


def _is_granary_url(checkpoint_id: Any) -> bool:
    try:
        url = _url_str(checkpoint_id)
    except TypeError:
        return False
    if not url:
        return False
    scheme, sep, _ = url.partition("://")
    return not sep or scheme in ("file", "mem", "s3")


class _Location:
    """The store and key prefix a checkpoint URL names.

    ``mem://name/some/prefix`` is the mem store ``name`` with keys under ``some/prefix/`` (mem
    stores have flat names); every other URL opens a store rooted at the checkpoint itself.
    """

    def __init__(self, url: str, *, create: bool) -> None:
        self.url = url
        self.prefix = ""
        if url.startswith("mem://"):
            name, _, prefix = url[len("mem://") :].partition("/")
            prefix = prefix.strip("/")
            self.prefix = prefix + "/" if prefix else ""
            self.store: Store = _open_store("mem://" + name)
        else:
            self.store = _open_store(url, create_if_missing=create)

    def key(self, name: str) -> str:
        return self.prefix + name


# -- per-item storage data ----------------------------------------------------------------------


class _Item(NamedTuple):
    """Where one WriteItem's bytes live; stored in Metadata.storage_data as a plain dict."""

    key: str  # object name relative to the checkpoint URL
    offset: int  # first byte within the object
    length: int  # bytes
    checksum: str  # algorithm of `crcs`
    crcs: Tuple[int, ...]  # one per CHUNK_BYTES of the item
    dtype: Optional[str]  # torch dtype name ("bfloat16") for tensors, None for bytes items
    shape: Optional[Tuple[int, ...]]  # the stored chunk's sizes, row-major contiguous

    @staticmethod
    def from_storage_data(index: MetadataIndex, data: Any) -> "_Item":
        try:
            return _Item(
                key=str(data["key"]),
                offset=int(data["offset"]),
                length=int(data["length"]),
                checksum=str(data["checksum"]),
                crcs=tuple(int(c) for c in data["crcs"]),
                dtype=None if data["dtype"] is None else str(data["dtype"]),
                shape=None if data["shape"] is None else tuple(int(s) for s in data["shape"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise _data_loss(
                f"storage data of {index.fqn!r} is not granary.dcp's ({e!r}); was the checkpoint "
                "written by granary.dcp.Writer?"
            ) from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str, fqn: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise _data_loss(f"tensor {fqn!r}: unknown dtype {name!r} in checkpoint metadata")
    return dtype


def _byte_view(t: torch.Tensor) -> Any:
    """A uint8 numpy array sharing a contiguous CPU tensor's memory (any dtype)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def _contiguous_cpu(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    # Lazy conjugate/negative views and strided layouts must become plain bytes.
    return t.resolve_conj().resolve_neg().contiguous()


def _row_major_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return tuple(strides)


def _new_save_id() -> str:
    return uuid.uuid4().hex[:_SAVE_ID_HEX]


# -- writer -------------------------------------------------------------------------------------

_shared_stager: Optional[Stager] = None
_shared_stager_mu = threading.Lock()


def shared_stager() -> Stager:
    """The process-wide :class:`Stager` that :class:`Writer` stages through by default.

    Created on first use. It holds one copy of the last async-saved state (per save in flight
    at once) for the rest of the process; ``shared_stager().close()`` releases it.
    """
    global _shared_stager
    with _shared_stager_mu:
        if _shared_stager is None:
            _shared_stager = Stager()
        return _shared_stager


class Writer(StorageWriter, AsyncStager):
    """A DCP StorageWriter that saves into a granary store.

    ``url``: where the checkpoint goes (``file:///dir``, a path, ``mem://name/prefix``); may be
    None when ``dcp.save(checkpoint_id=url)`` supplies it, and a ``checkpoint_id`` given to
    ``dcp.save`` replaces it. ``thread_count``: data objects per rank, each written by its own
    thread (default 1; granary already writes each object's parts in parallel in the background).
    ``part_bytes``/``max_parts_in_flight``: passed to :meth:`granary.Store.writer`.
    ``stager``: the :class:`Stager` that ``dcp.async_save`` stages through when it is given no
    ``async_stager`` (Writer is a DCP AsyncStager); default: :func:`shared_stager`, so a new
    Writer per save still reuses the staging buffers of the previous save.

    Never overwrites: saving into a URL that holds a committed checkpoint raises FileExistsError
    (inside DCP's CheckpointException). Picklable (for ``async_save`` with a process executor):
    only the URL and options travel; a ``mem://`` store does not cross processes.
    One save at a time per instance.
    """

    # Writer.stage returns a finished copy: nothing for DCP to synchronize.
    _synchronize_after_execute: bool = False

    def __init__(
        self,
        url: Optional[StrPath] = None,
        *,
        thread_count: int = 1,
        part_bytes: int = _core.DEFAULT_PART_BYTES,
        max_parts_in_flight: int = _core.DEFAULT_MAX_PARTS_IN_FLIGHT,
        stager: Optional[Stager] = None,
    ) -> None:
        super().__init__()
        if thread_count < 1:
            raise ValueError(f"thread_count must be >= 1, got {thread_count}")
        self._url = None if url is None else _url_str(url)
        self._thread_count = int(thread_count)
        self._part_bytes = int(part_bytes)
        self._max_parts_in_flight = int(max_parts_in_flight)
        self._location: Optional[_Location] = None
        self._save_id = _new_save_id()
        self._is_coordinator = True
        self._stager = stager

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_location"] = None  # an open store does not pickle; reopened from the URL
        state["_stager"] = None  # staging happens before pickling; buffers stay home
        return state

    # -- AsyncStager (dcp.async_save uses these when given no async_stager) --

    def stage(self, state_dict: Any) -> Any:
        """Copies ``state_dict`` into the stager's reusable CPU buffers (see :class:`Stager`)."""
        return (self._stager or shared_stager()).stage(state_dict)

    def synchronize_staging(self) -> None:
        """No-op: :meth:`stage` returns a finished copy."""

    def close(self) -> None:
        """No-op: the stager's buffers outlive the Writer, for the next save to reuse."""

    @property
    def checkpoint_id(self) -> Optional[str]:
        """The checkpoint URL (DCP logs it)."""
        return self._url

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: StrPath) -> bool:
        """True for ``file://``, ``mem://``, ``s3://`` URLs and plain paths."""
        return _is_granary_url(checkpoint_id)

    def reset(self, checkpoint_id: Optional[StrPath] = None) -> None:
        if checkpoint_id:
            self._url = _url_str(checkpoint_id)
            self._location = None
        self._save_id = _new_save_id()

    def storage_meta(self) -> Optional[StorageMeta]:
        return StorageMeta(checkpoint_id=self._url, save_id=self._save_id)

    def _open(self) -> _Location:
        if self._location is None:
            if self._url is None:
                raise ValueError(
                    "granary.dcp.Writer has no checkpoint URL: pass Writer(url) or "
                    "dcp.save(..., checkpoint_id=url)"
                )
            self._location = _Location(self._url, create=True)
        return self._location

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("use_collectives", True) is False:
            raise NotImplementedError(
                "granary.dcp.Writer needs use_collectives=True: a checkpoint is committed once, "
                "by the coordinator, after every rank's data is durable"
            )
        self._is_coordinator = is_coordinator
        self._open()

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        loc = self._open()
        if loc.store.exists(loc.key(COMMIT_KEY)):
            raise FileExistsError(
                errno.EEXIST,
                f"a committed checkpoint already exists at {loc.url}; granary.dcp never "
                "overwrites one (save under a new checkpoint_id, or delete the old one first)",
                loc.url,
            )
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        # The coordinator's save id names every rank's objects, so a failed or concurrent save
        # into the same URL never touches the objects a committed checkpoint refers to.
        return [
            dataclasses.replace(plan, storage_data={"prefix": f"__{i}_", "save_id": self._save_id})
            for i, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[List[WriteResult]]:
        data = plan.storage_data
        if not isinstance(data, dict) or "prefix" not in data:
            raise RuntimeError("granary.dcp.Writer.write_data: plan lacks its global storage plan")
        buckets = _split_items(plan.items, self._thread_count)
        prefix, save_id = data["prefix"], data["save_id"]
        names = [f"{prefix}{i}.{save_id}{_DATA_SUFFIX}" for i in range(len(buckets))]
        results: List[List[WriteResult]] = [[] for _ in buckets]
        if len(buckets) <= 1:
            for i, bucket in enumerate(buckets):
                results[i] = self._write_object(names[i], bucket, planner)
        else:
            errors: List[BaseException] = []

            def run(i: int) -> None:
                try:
                    results[i] = self._write_object(names[i], buckets[i], planner)
                except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(buckets))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        fut: Future[List[WriteResult]] = Future()
        fut.set_result([r for rs in results for r in rs])
        return fut

    def _write_object(
        self, name: str, items: List[WriteItem], planner: SavePlanner
    ) -> List[WriteResult]:
        loc = self._open()
        checksum = _write_checksum()
        crc_fn = _CHECKSUMS[checksum]
        zeros = bytes(LARGE_ALIGN_BYTES)
        results = []
        pos = 0
        writer = loc.store.writer(
            loc.key(name),
            part_bytes=self._part_bytes,
            max_parts_in_flight=self._max_parts_in_flight,
        )
        with writer as w:
            for item in items:
                data = planner.resolve_data(item)
                if item.type == WriteItemType.BYTE_IO:
                    if not isinstance(data, io.BytesIO):
                        raise TypeError(
                            f"{item.index.fqn!r}: BYTE_IO item resolved to {type(data).__name__}"
                        )
                    view: Any = data.getbuffer()
                    dtype_name, shape = None, None
                else:
                    tensor = _contiguous_cpu(data)
                    view = _byte_view(tensor)
                    dtype_name, shape = _dtype_name(tensor.dtype), tuple(tensor.shape)
                n = view.nbytes
                if n:
                    align = LARGE_ALIGN_BYTES if n >= ALIGN_THRESHOLD_BYTES else SMALL_ALIGN_BYTES
                    pad = -pos % align
                    if pad:
                        w.write(zeros[:pad])
                        pos += pad
                crcs = []
                # Checksum and hand over each chunk while it is still in cache.
                for start in range(0, n, CHUNK_BYTES):
                    chunk = view[start : start + CHUNK_BYTES]
                    crcs.append(crc_fn(chunk))
                    w.write(chunk)
                results.append(
                    WriteResult(
                        index=item.index,
                        size_in_bytes=n,
                        storage_data={
                            "key": name,
                            "offset": pos,
                            "length": n,
                            "checksum": checksum,
                            "crcs": crcs,
                            "dtype": dtype_name,
                            "shape": shape,
                        },
                    )
                )
                pos += n
                del view, data
        return results

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        loc = self._open()
        save_id = self._save_id
        storage: Dict[MetadataIndex, Any] = {}
        objects = set()
        for rank_results in results:
            for wr in rank_results:
                storage[wr.index] = wr.storage_data
                objects.add(wr.storage_data["key"])
        metadata.storage_data = storage
        metadata.storage_meta = self.storage_meta()
        metadata.version = _DCP_METADATA_VERSION
        body = pickle.dumps(metadata, protocol=pickle.HIGHEST_PROTOCOL)
        checksum = _write_checksum()
        meta_name = f"{_METADATA_PREFIX}{save_id}"
        loc.store.put(loc.key(meta_name), body)
        commit = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "save_id": save_id,
            "world_size": len(results),
            "chunk_bytes": CHUNK_BYTES,
            "metadata": {
                "key": meta_name,
                "bytes": len(body),
                "checksum": checksum,
                "crc": _CHECKSUMS[checksum](body),
            },
            "data_objects": sorted(objects),
            "torch_version": torch.__version__,
        }
        # Everything it names is durable (writers committed, put returned): publish.
        loc.store.put_if_absent(
            loc.key(COMMIT_KEY), json.dumps(commit, indent=1, sort_keys=True).encode() + b"\n"
        )
        self._remove_leftovers(loc, save_id)
        self._save_id = _new_save_id()  # the next save through this instance

    @staticmethod
    def _remove_leftovers(loc: _Location, save_id: str) -> None:
        """Deletes data and metadata objects of earlier failed saves into this checkpoint."""
        try:
            for prefix in ("__", _METADATA_PREFIX):
                for info in loc.store.list(loc.key(prefix)):
                    m = _LEFTOVER_RE.fullmatch(info.key[len(loc.prefix) :])
                    if m and (m.group("data") or m.group("meta")) != save_id:
                        loc.store.delete(info.key)
        except OSError:
            pass  # best effort: the checkpoint is committed; leftovers only cost space


def _item_bytes(item: WriteItem) -> int:
    return item.tensor_storage_size() or 0


def _split_items(items: List[WriteItem], buckets: int) -> List[List[WriteItem]]:
    """Spreads items over at most ``buckets`` lists of similar byte size (empty ones dropped)."""
    if buckets <= 1 or len(items) <= 1:
        return [list(items)] if items else []
    out: List[List[WriteItem]] = [[] for _ in range(buckets)]
    sizes = [0] * buckets
    for item in sorted(items, key=_item_bytes, reverse=True):
        i = sizes.index(min(sizes))
        out[i].append(item)
        sizes[i] += max(_item_bytes(item), 1)
    return [b for b in out if b]


# -- reader -------------------------------------------------------------------------------------


class _Read(NamedTuple):
    key: str  # store key
    offset: int
    buffer: Any  # numpy uint8 array, bytearray or uint8 tensor to read into
    item: _Item
    fqn: str
    first_chunk: int  # index of the crc covering buffer[0]
    done: Callable[[], None]  # called after the bytes are verified
    staged_bytes: int  # bytes of temporary memory this read holds until `done`


class Reader(StorageReader):
    """A DCP StorageReader that loads a checkpoint written by :class:`Writer`.

    ``url`` as for :class:`Writer` (``dcp.load(checkpoint_id=url)`` may supply or replace it).
    Only committed checkpoints load: ``read_metadata`` raises FileNotFoundError naming the URL
    when COMMIT is missing. Reads go straight into destination tensors when they are contiguous
    CPU tensors of the stored dtype receiving a whole stored chunk; other reads (resharding,
    dtype conversion, devices) pass through temporary buffers of at most ``read_staging_bytes``
    at a time (plus one stored chunk larger than that). Every byte read is checked against its
    chunk checksum; a mismatch raises DataLossError naming the tensor and the object.
    """

    def __init__(
        self,
        url: Optional[StrPath] = None,
        *,
        read_staging_bytes: int = DEFAULT_READ_STAGING_BYTES,
    ) -> None:
        super().__init__()
        self._url = None if url is None else _url_str(url)
        self._read_staging_bytes = int(read_staging_bytes)
        self._location: Optional[_Location] = None
        self._items: Dict[MetadataIndex, _Item] = {}
        self._load_id = uuid.uuid4().hex

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_location"] = None
        return state

    @property
    def checkpoint_id(self) -> Optional[str]:
        return self._url

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: StrPath) -> bool:
        return _is_granary_url(checkpoint_id)

    def reset(self, checkpoint_id: Optional[StrPath] = None) -> None:
        if checkpoint_id:
            self._url = _url_str(checkpoint_id)
            self._location = None
        self._items = {}
        self._load_id = uuid.uuid4().hex

    def _not_committed(self, detail: str) -> FileNotFoundError:
        e = FileNotFoundError(
            errno.ENOENT,
            f"no committed granary DCP checkpoint at {self._url}: {detail} (a save that did not "
            "finish leaves no COMMIT and is never loaded)",
            self._url,
        )
        e.status_code = "NotFound"  # type: ignore[attr-defined]
        return e

    def _open(self) -> _Location:
        if self._location is None:
            if self._url is None:
                raise ValueError(
                    "granary.dcp.Reader has no checkpoint URL: pass Reader(url) or "
                    "dcp.load(..., checkpoint_id=url)"
                )
            try:
                self._location = _Location(self._url, create=False)
            except FileNotFoundError:
                raise self._not_committed("the location does not exist") from None
        return self._location

    # No **kwargs: DCP then never asks for per-rank metadata, which granary.dcp does not write.
    def read_metadata(self) -> Metadata:
        loc = self._open()
        commit_key = loc.key(COMMIT_KEY)
        try:
            raw = loc.store.get(commit_key)
        except FileNotFoundError:
            detail = "COMMIT is missing"
            if loc.store.exists(loc.key(".metadata")):
                detail += " (it holds a FileSystemWriter checkpoint; read it with FileSystemReader)"
            raise self._not_committed(detail) from None
        where = f"{commit_key!r} of {loc.url}"
        try:
            commit = json.loads(raw)
            if commit.get("format") != FORMAT_NAME:
                raise ValueError(f"format {commit.get('format')!r}")
            version = commit["version"]
            meta = commit["metadata"]
            meta_key, meta_bytes = loc.key(str(meta["key"])), int(meta["bytes"])
            meta_checksum, meta_crc = str(meta["checksum"]), int(meta["crc"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _data_loss(f"{where} is not a valid granary DCP commit record: {e}") from None
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: granary DCP format version {version} is not supported")
        body = loc.store.get(meta_key)
        if len(body) != meta_bytes:
            raise _data_loss(
                f"metadata object {meta_key!r} of {loc.url} has {len(body)} bytes, "
                f"COMMIT says {meta_bytes}"
            )
        if _checksum_fn(meta_checksum, where)(body) != meta_crc:
            raise _data_loss(f"metadata object {meta_key!r} of {loc.url}: checksum mismatch")
        metadata = pickle.loads(body)
        if not isinstance(metadata, Metadata):
            raise _data_loss(f"metadata object {meta_key!r} of {loc.url} holds no DCP Metadata")
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self._load_id
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self._open()
        storage = metadata.storage_data
        if not isinstance(storage, dict):
            raise ValueError(
                f"checkpoint metadata at {self._url} has no granary storage data; was it "
                "written by granary.dcp.Writer?"
            )
        self._items = {
            index: _Item.from_storage_data(index, data) for index, data in storage.items()
        }

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: List[LoadPlan]) -> List[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        loc = self._open()
        # Two-stage pipeline: a helper thread reads batch k+1 (get_many releases the GIL) while
        # this thread verifies and copies batch k, so checksums cost no extra wall time.
        with concurrent.futures.ThreadPoolExecutor(1, "granary-dcp-read") as pool:
            pending: Optional[Tuple[List[_Read], concurrent.futures.Future]] = None
            for batch in self._batches(loc, plan, planner):
                ops = [(r.key, r.offset, r.buffer) for r in batch]
                reading = pool.submit(loc.store.get_many, ops)
                if pending is not None:
                    self._check(loc, pending[0], pending[1].result())
                pending = (batch, reading)
            if pending is not None:
                self._check(loc, pending[0], pending[1].result())
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _batches(
        self, loc: _Location, plan: LoadPlan, planner: LoadPlanner
    ) -> Iterator[List[_Read]]:
        """The plan's reads in batches of about _BATCH_BYTES, each holding at most half the
        staging budget (two batches are alive at once), except for one oversized read."""
        batch: List[_Read] = []
        batch_bytes = staged_bytes = 0
        for req in plan.items:
            try:
                item = self._items[req.storage_index]
            except KeyError:
                raise ValueError(
                    f"{req.storage_index.fqn!r} (offset {req.storage_index.offset}) is not in "
                    f"the checkpoint at {loc.url}"
                ) from None
            read = self._plan_read(loc, req, item, planner)
            if read is None:
                continue
            if batch and (
                batch_bytes + len(read.buffer) > _BATCH_BYTES
                or staged_bytes + read.staged_bytes > self._read_staging_bytes // 2
            ):
                yield batch
                batch, batch_bytes, staged_bytes = [], 0, 0
            batch.append(read)
            batch_bytes += len(read.buffer)
            staged_bytes += read.staged_bytes
        if batch:
            yield batch

    def _plan_read(
        self, loc: _Location, req: ReadItem, item: _Item, planner: LoadPlanner
    ) -> Optional[_Read]:
        fqn = req.storage_index.fqn
        key = loc.key(item.key)
        if req.type == LoadItemType.BYTE_IO:
            buf = bytearray(item.length)

            def load_bytes() -> None:
                planner.load_bytes(req, io.BytesIO(buf))

            return _Read(key, item.offset, buf, item, fqn, 0, load_bytes, len(buf))

        if item.dtype is None or item.shape is None:
            raise _data_loss(f"tensor {fqn!r} has bytes-item storage data in {loc.url}")
        dtype = _dtype_from_name(item.dtype, fqn)
        shape = item.shape
        esize = dtype.itemsize
        if item.length != math.prod(shape) * esize:
            raise _data_loss(
                f"tensor {fqn!r} in object {key!r}: {item.length} bytes recorded for "
                f"{item.dtype}{list(shape)}"
            )
        offsets, lengths = tuple(req.storage_offsets), tuple(req.lengths)
        target = planner.resolve_tensor(req).detach()
        if tuple(target.shape) != lengths:
            raise ValueError(
                f"tensor {fqn!r}: destination has shape {list(target.shape)}, the read "
                f"covers {list(lengths)}"
            )
        if math.prod(lengths) == 0:
            planner.commit_tensor(req, target)
            return None

        if (
            all(o == 0 for o in offsets)
            and lengths == shape
            and target.device.type == "cpu"
            and target.dtype == dtype
            and target.is_contiguous()
        ):
            # The whole stored chunk into memory of the same layout: read straight into it.
            def commit() -> None:
                planner.commit_tensor(req, target)

            return _Read(key, item.offset, _byte_view(target), item, fqn, 0, commit, 0)

        # Read the smallest chunk-aligned byte range holding the box, view it, copy it over.
        strides = _row_major_strides(shape)
        first = sum(o * s for o, s in zip(offsets, strides))
        last = sum((o + n - 1) * s for o, n, s in zip(offsets, lengths, strides))
        lo = first * esize // CHUNK_BYTES * CHUNK_BYTES
        hi = min(item.length, -(-(last + 1) * esize // CHUNK_BYTES) * CHUNK_BYTES)
        staging = torch.empty(hi - lo, dtype=torch.uint8)

        def copy() -> None:
            src = torch.as_strided(
                staging.view(dtype), lengths, strides, (first * esize - lo) // esize
            )
            target.copy_(src)
            planner.commit_tensor(req, target)

        return _Read(
            key, item.offset + lo, staging.numpy(), item, fqn, lo // CHUNK_BYTES, copy, hi - lo
        )

    @staticmethod
    def _check(loc: _Location, batch: List[_Read], counts: List[int]) -> None:
        """Verifies a batch that has been read, then hands each item over (copy or commit)."""
        for r, count in zip(batch, counts):
            expected = len(r.buffer)
            if count != expected:
                raise _data_loss(
                    f"object {r.key!r} of {loc.url} is truncated: {r.fqn!r} needs {expected} "
                    f"bytes at offset {r.offset}, got {count}"
                )
            crc_fn = _checksum_fn(r.item.checksum, f"{r.fqn!r} in {r.key!r}")
            view = memoryview(r.buffer).cast("B")
            for j, start in enumerate(range(0, expected, CHUNK_BYTES)):
                chunk = r.first_chunk + j
                if chunk >= len(r.item.crcs) or crc_fn(view[start : start + CHUNK_BYTES]) != (
                    r.item.crcs[chunk]
                ):
                    raise _data_loss(
                        f"checksum mismatch in {r.fqn!r} (chunk {chunk} of "
                        f"{len(r.item.crcs)}) in object {r.key!r} of {loc.url}"
                    )
            r.done()
