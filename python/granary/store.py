"""Object stores: :func:`open`, :class:`Store`, :class:`Writer`, :class:`ObjectInfo`.

A store maps keys (``"runs/exp1/step-100/rank0.bin"``) to immutable byte objects, on a local
directory (``file:///data/store`` or a plain path), in memory (``mem://name``, shared within the
process) or, later, S3. Writes are atomic: a reader sees the old object or the new one, never a
mix, and a :class:`Writer`'s object appears only when it commits.

All methods are thread-safe and release the GIL while they do I/O, so other Python threads keep
running. Bytes move once: :meth:`Store.get_into` reads straight into a caller's buffer
(``bytearray``, ``memoryview``, numpy array, torch CPU tensor) and :meth:`Store.put` writes
straight from any bytes-like object.
"""

from __future__ import annotations

import operator
import os
import sys
from types import TracebackType
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Type, Union

from . import _core

__all__ = ["open", "Store", "Writer", "ObjectInfo"]

# Anything exposing the buffer protocol (bytes, bytearray, memoryview, numpy arrays, ...) or a
# contiguous torch CPU tensor.
BytesLike = Any
StrPath = Union[str, "os.PathLike[str]"]


class ObjectInfo(NamedTuple):
    """Metadata of one object."""

    key: str
    #: Size in bytes.
    size: int
    #: Last modification, nanoseconds since the Unix epoch (0 if the store cannot tell).
    mtime_ns: int

    @property
    def mtime(self) -> float:
        """Last modification as seconds since the Unix epoch (like ``os.stat().st_mtime``)."""
        return self.mtime_ns / 1e9


def _torch_bytes(obj: Any) -> Any:
    """A uint8 numpy view sharing a torch tensor's memory, or ``obj`` unchanged if not a tensor.

    Only CPU, contiguous tensors qualify (ValueError otherwise). Viewing as uint8 first makes
    every dtype work, bfloat16 included, which numpy cannot represent.
    """
    torch = sys.modules.get("torch")  # never import torch ourselves: it is slow and optional
    if torch is None or not isinstance(obj, torch.Tensor):
        return obj
    if obj.device.type != "cpu":
        raise ValueError(f"torch tensor is on {obj.device}; granary reads and writes CPU tensors")
    if not obj.is_contiguous():
        raise ValueError("torch tensor is not contiguous; pass tensor.contiguous()")
    return obj.detach().reshape(-1).view(torch.uint8).numpy()


def _offset(value: Any, name: str = "offset") -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _key(key: Any) -> Union[str, bytes]:
    if isinstance(key, (str, bytes)):
        return key
    raise TypeError(f"key must be str, not {type(key).__name__}")


class Writer:
    """Streams one large object into a store; see :meth:`Store.writer`.

    Use it as a context manager: the object is committed when the block ends normally and
    aborted (nothing becomes visible) when it raises::

        with store.writer("data/shard-0") as w:
            for chunk in chunks:
                w.write(chunk)

    Calls from several threads are serialized; one writer per thread is the usual pattern.
    """

    __slots__ = ("_core",)

    def __init__(self, core: _core.Writer) -> None:
        self._core = core

    @property
    def key(self) -> str:
        return self._core.key

    @property
    def state(self) -> str:
        """``"open"``, ``"committed"`` or ``"aborted"``."""
        return self._core.state

    @property
    def bytes_written(self) -> int:
        """Bytes accepted by :meth:`write` so far."""
        return self._core.bytes_written

    def write(self, data: BytesLike) -> int:
        """Appends ``data`` (any bytes-like object); returns its length in bytes.

        Returns once the bytes are copied into a staging buffer; parts are written in the
        background and errors from them surface here or at :meth:`commit`. After an error the
        writer is aborted and every later call raises the same error.
        """
        return self._core.write(_torch_bytes(data))

    def flush(self) -> None:
        """Does nothing: parts are sent as they fill, and only :meth:`commit` publishes. Present
        so a Writer is a drop-in file object (``torch.save(state, store.writer(key))``)."""

    def writable(self) -> bool:
        return True

    def commit(self) -> None:
        """Makes the whole object visible, atomically and durably. Again after success: no-op."""
        self._core.commit()

    def abort(self) -> None:
        """Discards everything written; the previous object under the key stays. Idempotent."""
        self._core.abort()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            self.commit()
            return
        try:
            self.abort()
        except Exception:  # noqa: BLE001 - the exception already propagating is the one to report
            pass

    def __repr__(self) -> str:
        return f"<granary.Writer key={self.key!r} state={self.state} bytes={self.bytes_written}>"


class Store:
    """An object store; create one with :func:`granary.open`.

    Keys are ``/``-separated like relative paths (no leading, trailing or double ``/``, no
    ``.`` or ``..``); invalid keys raise ValueError before any I/O. A missing key raises
    FileNotFoundError. Thread-safe. Usable as a context manager that closes the store.
    """

    __slots__ = ("_core",)

    def __init__(self, core: _core.Store) -> None:
        self._core = core

    @property
    def url(self) -> str:
        """The normalized URL the store was opened with (``"file:///data/x"``, ``"mem://n"``)."""
        return self._core.url

    @property
    def closed(self) -> bool:
        return self._core.closed

    def close(self) -> None:
        """Releases the store. Writers still open keep working; other calls raise ValueError."""
        self._core.close()

    def cache_stats(self) -> Optional[dict]:
        """Hits, misses and bytes by tier of the node-local cache (``ram_hits``,
        ``ram_hit_bytes``, ``disk_hits``, ``disk_hit_bytes``, ``misses``, ``miss_bytes``,
        ``waits``, ``evictions``, ``damaged``, ``stale``, ``ram_bytes``, ``disk_bytes``) since
        the store was opened; None for a store opened without a cache."""
        return self._core.cache_stats()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<granary.Store {self.url}{state}>"

    # -- reads ------------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time of ``key``. FileNotFoundError if absent."""
        return ObjectInfo(*self._core.stat(_key(key)))

    def exists(self, key: str) -> bool:
        """True if an object has ``key``."""
        return self._core.exists(_key(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, bytes)) and self._core.exists(key)

    def get(self, key: str, offset: int = 0, length: Optional[int] = None) -> bytes:
        """Bytes of ``key`` from ``offset``: ``length`` of them, or all to the end if None.

        Fewer bytes come back when the object ends first (none at or past the end).
        FileNotFoundError if absent.
        """
        return self._core.get(
            _key(key), _offset(offset), None if length is None else _offset(length, "length")
        )

    def get_into(self, key: str, buffer: BytesLike, offset: int = 0) -> int:
        """Reads ``key`` from ``offset`` straight into ``buffer``; returns bytes read.

        ``buffer`` is any writable, C-contiguous buffer (``bytearray``, ``memoryview``, numpy
        array) or a contiguous torch CPU tensor; it is filled with up to ``len(buffer)`` bytes
        (fewer only when the object ends first). No intermediate copy is made. ValueError for
        read-only or non-contiguous buffers, FileNotFoundError if the key is absent.
        """
        return self._core.get_into(_key(key), _torch_bytes(buffer), _offset(offset))

    def get_many(self, ops: Iterable[Tuple[str, int, BytesLike]]) -> List[int]:
        """Runs many ranged reads as one batch with many in flight; returns bytes read per op.

        ``ops`` holds ``(key, offset, buffer)`` tuples, each read like :meth:`get_into`. If any
        op fails, the first failed op's exception is raised (naming its key); the buffers of the
        other ops may have been filled.
        """
        batch = [(_key(k), _offset(o), _torch_bytes(b)) for k, o, b in ops]
        return self._core.get_many(batch)

    def list(self, prefix: str = "") -> List[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix), sorted by key."""
        return [ObjectInfo(*t) for t in self._core.list(_key(prefix))]

    def scan(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Like :meth:`list`, but fetches ``page_size`` objects at a time (for huge stores)."""
        page_size = _offset(page_size, "page_size")
        if page_size == 0:
            raise ValueError("page_size must be > 0")
        start_after: Optional[str] = ""
        while start_after is not None:
            objects, start_after = self._core.list_page(_key(prefix), start_after, page_size)
            for t in objects:
                yield ObjectInfo(*t)

    # -- writes -----------------------------------------------------------------------------

    def put(self, key: str, data: BytesLike) -> None:
        """Creates or atomically replaces ``key`` with ``data`` (any bytes-like object).

        Durable when it returns.
        """
        self._core.put(_key(key), _torch_bytes(data))

    def put_if_absent(self, key: str, data: BytesLike) -> None:
        """Creates ``key`` only if no object has it; FileExistsError otherwise.

        Of many concurrent callers exactly one succeeds; durable when it returns.
        """
        self._core.put_if_absent(_key(key), _torch_bytes(data))

    def writer(
        self,
        key: str,
        *,
        part_bytes: int = _core.DEFAULT_PART_BYTES,
        max_parts_in_flight: int = _core.DEFAULT_MAX_PARTS_IN_FLIGHT,
    ) -> Writer:
        """A :class:`Writer` streaming a large object into ``key``.

        Data is written in parts of ``part_bytes``, up to ``max_parts_in_flight`` at once (so
        staging memory is their product). The object becomes visible only at commit.
        """
        return Writer(
            self._core.writer(
                _key(key),
                _offset(part_bytes, "part_bytes"),
                _offset(max_parts_in_flight, "max_parts_in_flight"),
            )
        )

    def delete(self, key: str) -> None:
        """Removes ``key``; FileNotFoundError if absent."""
        self._core.delete(_key(key))


def open(  # noqa: A001 - granary.open(url) mirrors the builtin on purpose
    url: StrPath,
    *,
    direct_io_min_bytes: Optional[int] = None,
    create_if_missing: bool = True,
    cache_dir: Optional[StrPath] = None,
    cache_bytes: Optional[Union[int, str]] = None,
    ram_cache_bytes: Optional[Union[int, str]] = None,
) -> Store:
    """Opens the store ``url`` names.

    * ``file:///abs/dir`` or a plain path (``str`` or ``pathlib.Path``): a local directory,
      created if missing unless ``create_if_missing=False``.
    * ``mem://name``: an in-memory store; the same name gives the same store within the process.
    * ``s3://bucket/prefix?endpoint=http://host:port``: a bucket of AWS S3 or any S3-compatible
      server; endpoint, region and credentials from the URL, the AWS_* environment variables or
      ~/.aws profiles (docs/s3.md). ``create_bucket=true`` in the query creates the bucket.

    ``direct_io_min_bytes``: local transfers at least this large bypass the page cache
    (O_DIRECT); default 1 MiB. ValueError for malformed or unknown URLs.

    ``cache_dir``, ``cache_bytes`` (default 64 GiB), ``ram_cache_bytes``: the node-local read
    cache of an s3:// store (docs/s3.md): pages kept on local disk under ``cache_dir`` and in
    RAM. Sizes are ints or strings like ``"200G"``. The same options work as URL query
    parameters (``?cache_dir=/nvme/c&cache_bytes=200G``), so every API that takes a URL accepts
    them, and as the environment variables GRANARY_CACHE_DIR, GRANARY_CACHE_BYTES,
    GRANARY_RAM_CACHE_BYTES. ``Store.cache_stats()`` reports hits and misses by tier.
    """
    url = os.fsdecode(os.fspath(url))
    if direct_io_min_bytes is not None:
        direct_io_min_bytes = _offset(direct_io_min_bytes, "direct_io_min_bytes")
    return Store(
        _core.open(
            url,
            direct_io_min_bytes,
            bool(create_if_missing),
            None if cache_dir is None else os.fsdecode(os.fspath(cache_dir)),
            _size(cache_bytes, "cache_bytes"),
            _size(ram_cache_bytes, "ram_cache_bytes"),
        )
    )


def _size(value: Optional[Union[int, str]], name: str) -> Optional[int]:
    """A byte count from an int or a string like "200G" (binary units); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        number = text.rstrip("bBiIkKmMgGtT")
        unit = text[len(number):].lower().rstrip("b").rstrip("i")
        if unit not in units:
            raise ValueError(f"{name}: {value!r} is not a byte size (e.g. 200G, 512M)")
        try:
            return int(float(number) * units[unit])
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a byte size (e.g. 200G, 512M)") from None
    return _offset(value, name)
