"""Training datasets of many small samples: packing, true global shuffle, device-speed loading.

::

    import granary.data as gd

    with gd.Writer("/data/imgs") as w:                 # packs samples into 512 MiB shards
        w.add("0001", {"jpg": jpg_bytes, "cls": 3})

    ds = gd.Dataset("/data/imgs")                      # opens O(shards) metadata, mmaps the index
    sample = ds[17]                                    # {"__key__": "0001", "jpg": memoryview, ...}
    batch = ds.get_batch([5, 900, 17])                 # one native call, all reads in flight

    loader = gd.Loader(ds, batch_size=256, seed=0)     # reads ahead along the known order
    for epoch in range(10):
        for batch in loader:                           # a Batch; loader.state_dict() resumes
            ...

Every epoch's order is a stateless permutation of all samples keyed by (seed, epoch): a global
shuffle with O(1) memory, split exactly across ranks (torch.distributed) and DataLoader workers.
A loader's position is a handful of integers; ``load_state_dict`` continues at exactly the next
sample, also with a different number of workers. ``cache_bytes`` keeps the samples this rank
needs soonest in the next epoch in RAM.

Field values are read-only memoryviews into the batch's memory (zero copy; they keep that memory
alive); pass ``as_bytes=True`` for ``bytes``. Integers added as fields are stored as their decimal
text (WebDataset's convention): ``int(bytes(sample["cls"]))``.

The format is specified in docs/formats/dataset.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Dict, Iterator, List, Optional

from . import _core

__all__ = ["Writer", "Dataset", "Batch", "Loader", "IterableDataset", "TorchLoader", "epoch_order"]

_DEFAULT_SHARD_BYTES = 512 << 20
_DEFAULT_PREFETCH_BYTES = 256 << 20


def _url(url: Any) -> str:
    return os.fspath(url) if not isinstance(url, str) else url


class Writer:
    """Packs samples into a new dataset version, published atomically by :meth:`close`.

    Use as a context manager: leaving the block normally publishes; leaving it with an
    exception publishes nothing (so does a crash). ``append=True`` adds a version holding every
    sample of the newest one followed by the new samples; otherwise an existing dataset at
    ``url`` is an error (FileExistsError).
    """

    def __init__(self, url, shard_bytes: int = _DEFAULT_SHARD_BYTES, append: bool = False,
                 shard_writers: int = 2):
        self._core: Optional[_core.DatasetWriter] = _core.DatasetWriter(
            _url(url), shard_bytes, append, shard_writers)
        self.stats: Optional[Dict[str, int]] = None

    def add(self, key, fields: Mapping[str, Any]) -> None:
        """Adds one sample: ``key`` (str or bytes) and fields of bytes-like, str or int values."""
        if self._core is None:
            raise ValueError("writer is closed")
        if not isinstance(fields, dict):
            fields = dict(fields)
        self._core.add(key, fields)

    def close(self) -> Dict[str, int]:
        """Makes everything durable and publishes the version; returns what was written."""
        if self._core is None:
            if self.stats is None:
                raise ValueError("writer was aborted")
            return self.stats
        try:
            self.stats = self._core.finish()
        finally:
            self._core = None
        return self.stats

    def abort(self) -> None:
        """Discards the write; nothing is published."""
        self._core = None

    @property
    def samples_added(self) -> int:
        return self._core.samples_added if self._core is not None else (self.stats or {}).get(
            "samples_added", 0)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Batch(Sequence):
    """Samples read together, held in one native buffer.

    ``batch[i]`` is a dict ``{"__key__": str, "__index__": int, field: value}``, or None for a
    corrupt sample skipped with ``skip_corrupt=True``. ``field(name)`` lists one field of every
    sample. Values are memoryviews into the batch's memory unless the dataset was opened with
    ``as_bytes=True``.
    """

    __slots__ = ("_core", "_as_bytes")

    def __init__(self, core: "_core.Batch", as_bytes: bool = False):
        self._core = core
        self._as_bytes = as_bytes

    def __len__(self) -> int:
        return len(self._core)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._core.sample(k, self._as_bytes) for k in range(*i.indices(len(self)))]
        return self._core.sample(i, self._as_bytes)

    def __iter__(self) -> Iterator[Optional[Dict[str, Any]]]:
        return iter(self._core.samples(self._as_bytes))

    def field(self, name: str) -> List[Any]:
        return self._core.field(name, self._as_bytes)

    def keys(self) -> List[Optional[str]]:
        return self._core.keys()

    def indices(self) -> List[int]:
        return self._core.indices()

    @property
    def nbytes(self) -> int:
        """Record bytes held."""
        return self._core.nbytes

    @property
    def corrupt_count(self) -> int:
        return self._core.corrupt_count

    def __repr__(self) -> str:
        return f"Batch({len(self)} samples, {self.nbytes} bytes)"


class Dataset(Sequence):
    """An open, immutable version of a packed dataset.

    ``url`` is a directory path, ``file:///...`` or ``mem://name``. ``version=None`` opens the
    newest version. ``verify`` checks each record's crc32c as it is read; a corrupt record
    raises :class:`granary.DataLossError` naming shard and sample, unless ``skip_corrupt`` (then
    it reads as None and is counted). ``direct_io`` reads what the page cache does not hold with
    O_DIRECT. Picklable (reopens by URL), so it can be handed to worker processes.
    """

    def __init__(self, url, version: Optional[int] = None, *, verify: bool = True,
                 skip_corrupt: bool = False, direct_io: bool = True, read_threads: int = 2,
                 as_bytes: bool = False):
        self._args = dict(url=_url(url), version=version, verify=verify,
                          skip_corrupt=skip_corrupt, direct_io=direct_io,
                          read_threads=read_threads, as_bytes=as_bytes)
        self._open()

    def _open(self) -> None:
        a = self._args
        self._core = _core.Dataset(a["url"], a["version"] or 0, a["verify"], a["skip_corrupt"],
                                   a["direct_io"], a["read_threads"])
        self._as_bytes = a["as_bytes"]
        self.url = a["url"]

    def __getstate__(self):
        return self._args

    def __setstate__(self, state):
        self._args = state
        self._open()

    def __len__(self) -> int:
        return len(self._core)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(self.get_batch(range(*i.indices(len(self)))))
        n = len(self._core)
        if not isinstance(i, int):
            i = int(i)
        if i < 0:
            i += n
        if i < 0 or i >= n:
            raise IndexError(f"dataset index {i} out of range for {n} samples")
        return Batch(self._core.get_batch([i]), self._as_bytes)[0]

    def get_batch(self, indices) -> Batch:
        """Reads the samples at ``indices`` (a sequence of ints or an int64 array), all in flight
        together; the batch keeps the given order. IndexError for an out-of-range index."""
        if isinstance(indices, range):
            indices = list(indices)
        return Batch(self._core.get_batch(indices), self._as_bytes)

    def key(self, i: int) -> str:
        return self._core.key(i if i >= 0 else i + len(self))

    def index_of(self, key) -> int:
        """The lowest index whose key is ``key``; KeyError if none."""
        return self._core.index_of(key)

    @property
    def version(self) -> int:
        return self._core.version

    @property
    def fields(self) -> List[str]:
        return list(self._core.fields)

    @property
    def shards(self) -> List[tuple]:
        """(key, first_sample, num_samples, size_bytes) of every shard."""
        return self._core.shards

    @property
    def nbytes(self) -> int:
        """Record bytes of all samples."""
        return self._core.total_bytes

    @property
    def index_bytes(self) -> int:
        """Bytes of index memory (memory-mapped and shared for local datasets)."""
        return self._core.index_bytes

    def stats(self) -> Dict[str, int]:
        return self._core.stats()

    def verify(self) -> None:
        """Re-reads every record and the index; DataLossError naming the first damage."""
        self._core.verify()

    def __repr__(self) -> str:
        return f"Dataset({self.url!r}, version={self.version}, {len(self)} samples)"


def _distributed(rank: Optional[int], world_size: Optional[int]):
    if rank is not None and world_size is not None:
        return rank, world_size
    # Only consult torch.distributed if the program already imported it (a process group can
    # only exist then); importing torch here would cost seconds in programs that do not use it.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return (dist.get_rank() if rank is None else rank,
                dist.get_world_size() if world_size is None else world_size)
    return (rank or 0), (world_size or 1)


def _remainder(drop_last: bool, remainder: Optional[str]) -> str:
    if remainder is not None:
        return remainder
    return "drop" if drop_last else "pad"


class Loader:
    """Batches of a dataset in a global shuffle, read ahead by native threads.

    Iterating runs the rest of the current epoch; the next ``for`` loop runs the next epoch.
    ``rank``/``world_size`` default to torch.distributed's. ``drop_last`` makes every rank's
    share equal by dropping the tail of the order and drops a last short batch; otherwise ranks
    are evened out by repeating samples from the start of the order (``remainder="pad"``, as
    torch's DistributedSampler); ``remainder="uneven"`` gives every sample exactly once.
    ``locality=k`` shuffles within windows of k shards (fewer, larger reads on slow media; the
    order is then less random, see docs/design.md). At most ``prefetch_bytes`` of samples are
    read ahead. ``cache_bytes`` keeps samples needed soonest in the next epoch in RAM (not LRU);
    ``stats()["cache_hit_rate"]`` reports how well it does. ``transform`` maps each sample dict,
    ``collate`` maps the list of transformed samples (or the Batch); the loader yields what they
    return.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None,
                 drop_last: bool = False, prefetch_bytes: int = _DEFAULT_PREFETCH_BYTES,
                 transform: Optional[Callable] = None, *, collate: Optional[Callable] = None,
                 cache_bytes: int = 0, locality: int = 0, remainder: Optional[str] = None,
                 io_threads: int = 2, _share: int = 0, _num_shares: int = 1):
        if not isinstance(dataset, Dataset):
            dataset = Dataset(dataset)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.transform = transform
        self.collate = collate
        rank, world_size = _distributed(rank, world_size)
        self.rank, self.world_size = rank, world_size
        self._core = _core.Loader(dataset._core, batch_size, seed, shuffle, rank, world_size,
                                  _remainder(drop_last, remainder), locality, epoch, drop_last,
                                  prefetch_bytes, cache_bytes, io_threads, _share, _num_shares)

    def __iter__(self) -> Iterator[Any]:
        while True:
            core = self._core.next()
            if core is None:
                break
            yield self._finish(Batch(core, self.dataset._as_bytes))
        state = self._core.state()
        self._core.start_epoch(state["epoch"] + 1, 0)

    def _finish(self, batch: Batch) -> Any:
        if self.transform is not None:
            items = [self.transform(s) for s in batch]
            return self.collate(items) if self.collate is not None else items
        return self.collate(batch) if self.collate is not None else batch

    def __len__(self) -> int:
        """Batches left in the current epoch for this loader."""
        return self._core.num_batches

    @property
    def epoch(self) -> int:
        return self._core.state()["epoch"]

    def set_epoch(self, epoch: int) -> None:
        """Starts ``epoch`` from its beginning (as DistributedSampler.set_epoch)."""
        self._core.start_epoch(epoch, 0)

    def state_dict(self) -> Dict[str, int]:
        """The resume position: seed, epoch, samples consumed this epoch, dataset size, world."""
        return self._core.state()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continues exactly after the last sample consumed when ``state`` was taken.
        ValueError if it was taken for another dataset size, seed, rank or world size."""
        self._core.restore(dict(state))

    def stats(self) -> Dict[str, Any]:
        return self._core.stats()


def epoch_order(num_samples: int, epoch: int = 0, seed: int = 0, *, shuffle: bool = True,
                rank: int = 0, world_size: int = 1, remainder: str = "pad", locality: int = 0,
                shard_first_samples: Sequence[int] = (), start: int = 0,
                count: int = -1) -> List[int]:
    """The dataset indices one rank reads in ``epoch`` (positions [start, start + count))."""
    return _core.epoch_order(num_samples, epoch, seed, shuffle, rank, world_size, remainder,
                             locality, list(shard_first_samples), start, count)


def __getattr__(name: str):  # PEP 562: the torch adapters load torch on first use
    if name in ("IterableDataset", "TorchLoader", "PackedBatch"):
        from . import _data_torch
        return getattr(_data_torch, name)
    raise AttributeError(f"module 'granary.data' has no attribute {name!r}")
