"""granary.models: model weights in Hugging Face safetensors files, loaded at the storage device's
speed whether the files are cold or already in the page cache, and saved byte-for-byte as the
``safetensors`` library saves them.

::

    import granary.models as gm

    tensors = gm.load("/models/llama")                 # dict name -> torch.Tensor
    tensors = gm.load("/models/llama", names=["lm_head.weight"], dtype=torch.float16)
    for name, t in gm.iter_load("/models/llama", order="layer"):
        model.get_parameter(name).copy_(t)             # each tensor as soon as it is in memory
    gm.save(model.state_dict(), "/models/mine", shard_bytes=5 << 30)   # + index.json
    info = gm.inspect("/models/llama")                 # names, dtypes, shapes, bytes, metadata

A source (``src``) is a ``.safetensors`` file, a list of them, a directory (its
``*.safetensors.index.json`` as Hugging Face lays sharded models out, preferring
``model.safetensors.index.json`` when there are several; without an index, every
``*.safetensors`` file in it), an index JSON, or a ``file://`` / ``mem://`` URL of any of these.

Loading reads every requested tensor in large requests, many in flight: ranges already in the
page cache are copied from it, the rest are read with O_DIRECT straight into the tensors' memory
(no mmap unless ``map_resident=True``, so no page faults one page at a time on cold or network
storage). Tensors of one file
region share one allocation: a loaded tensor keeps its region (up to 64 MiB, or the tensor if
larger) alive. Tensors are CPU tensors you may modify; ``load`` with ``dtype`` or a ``device``
converts tensor by tensor through a bounded window, so peak memory is the result plus the window
(plus any region shared with a tensor returned unconverted, e.g. an integer tensor).

Errors: a damaged header or index raises :class:`granary.DataLossError` naming the file and
the tensor, before anything large is allocated; a missing source ``FileNotFoundError``; a name
the model lacks ``KeyError``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from . import _core

__all__ = ["Model", "load", "iter_load", "save", "inspect", "open"]

# safetensors dtype -> torch dtype (the subset torch can represent; F4/F6 are refused by name).
_TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
    "C64": torch.complex64,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
}
if hasattr(torch, "float8_e8m0fnu"):
    _TORCH["F8_E8M0"] = torch.float8_e8m0fnu
_SAFETENSORS = {v: k for k, v in _TORCH.items()}

# Read-ahead for loads that convert or move tensors, and for iter_load.
DEFAULT_WINDOW_BYTES = 256 << 20


def _sources(src: Any) -> list[str]:
    if isinstance(src, (str, os.PathLike)):
        return [os.fspath(src)]
    if isinstance(src, Iterable):
        out = [os.fspath(s) for s in src]
        if out:
            return out
    raise TypeError(f"src must be a path, URL or list of them, not {src!r}")


class Model:
    """An opened model: every header read and validated once; load from it many times.

    ``Model(src)`` raises before anything large is allocated if a file or the index is damaged.
    """

    def __init__(self, src: Any):
        self._sources = _sources(src)
        self._model = _core.Model(self._sources)
        self._tensors = self._model.tensors  # (name, dtype, shape, bytes, file, offset)
        self._files = self._model.files
        # Counters of the latest load/iter_load: bytes (tensor bytes handed out), cached_bytes
        # (copied from the page cache), direct_bytes (read with O_DIRECT, including the aligned
        # edges around tensors, so it can exceed bytes), staged_bytes (misaligned tensors copied
        # through staging blocks), store_bytes (ranged reads from a store without local files),
        # mapped_bytes (mapped from the page cache, map_resident=True), requests, segments,
        # peak_window_bytes (most segment memory read ahead at once).
        self.last_stats: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return [t[0] for t in self._tensors]

    @property
    def total_bytes(self) -> int:
        return self._model.total_bytes

    def info(self) -> dict:
        """Files, tensors (dtype, shape, bytes, file, offset), metadata and total bytes."""
        files = self._files
        index_meta = self._model.index_metadata
        return {
            "files": [f["url"] for f in files],
            "tensors": {
                name: {"dtype": dt, "shape": list(shape), "bytes": nbytes,
                       "file": files[f]["url"], "offset": off}
                for name, dt, shape, nbytes, f, off in self._tensors
            },
            "metadata": dict(files[0]["metadata"]) if files else {},
            "file_metadata": {f["url"]: dict(f["metadata"]) for f in files},
            "index_metadata": json.loads(index_meta) if index_meta else None,
            "total_bytes": self._model.total_bytes,
        }

    def _sequence(self, names: Sequence[str] | None, order: str) -> list[int]:
        if names is None:
            seq = list(range(len(self._tensors)))
        else:
            if isinstance(names, str):
                raise TypeError("names must be a list of tensor names, not a str")
            seq = []
            for n in names:
                i = self._model.find(n)
                if i is None:
                    raise KeyError(f"tensor {n!r} is not in {', '.join(self._sources)}")
                seq.append(i)
            seq = sorted(set(seq))  # file order; repeats collapse
        if order == "file":
            return seq
        if order == "layer":
            return sorted(seq, key=lambda i: _layer_key(self._tensors[i][0], i))
        raise ValueError(f"order must be 'file' or 'layer', not {order!r}")

    def _stream(self, names, order, window_bytes, direct_io, io_threads, request_bytes,
                segment_bytes, map_resident):
        kwargs: dict[str, Any] = {"window_bytes": int(window_bytes or 0), "direct_io": direct_io,
                                  "map_resident": bool(map_resident)}
        if segment_bytes is not None:
            kwargs["segment_bytes"] = int(segment_bytes)
        if io_threads is not None:
            kwargs["io_threads"] = int(io_threads)
        if request_bytes is not None:
            kwargs["request_bytes"] = int(request_bytes)
        return self._model.read(self._sequence(names, order), **kwargs)

    def iter_load(self, names: Sequence[str] | None = None, order: str = "file",
                  dtype: torch.dtype | None = None, device: str | torch.device = "cpu", *,
                  window_bytes: int | None = DEFAULT_WINDOW_BYTES, direct_io: bool = True,
                  io_threads: int | None = None, request_bytes: int | None = None,
                  segment_bytes: int | None = None,
                  map_resident: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """Yields ``(name, tensor)`` as each tensor's bytes arrive, in file order or, with
        ``order="layer"``, embeddings (names containing emb, wte or wpe) first, then layer by layer
        (the first integer component of the dotted name), then the rest (final norm, head). At most
        ``window_bytes`` are read ahead of the consumer (None: no bound)."""
        device = torch.device(device)
        stream = self._stream(names, order, window_bytes, direct_io, io_threads, request_bytes,
                              segment_bytes, map_resident)
        try:
            for index, view in stream:
                name, dt, shape = self._tensors[index][:3]
                t = _as_tensor(view, dt, shape, name)
                yield name, _convert(t, dtype, device)
        finally:
            self.last_stats = stream.stats()
            stream.close()

    def load(self, names: Sequence[str] | None = None, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu", *, window_bytes: int | None = None,
             direct_io: bool = True, io_threads: int | None = None,
             request_bytes: int | None = None,
             segment_bytes: int | None = None,
             map_resident: bool = False) -> dict[str, torch.Tensor]:
        """Every tensor (or those in ``names``) as a dict name -> tensor, in file order.
        ``dtype`` converts floating-point tensors (integer and bool tensors keep theirs);
        ``device`` moves each tensor as it arrives.

        ``map_resident=True``: file regions already in the page cache are mapped (private,
        copy-on-write, populated up front) instead of copied, so a warm load costs neither a
        copy nor new memory and processes share the cached pages. The kernel may then drop such
        pages under memory pressure and read them back on the next touch, and truncating the
        file in place while its tensors live raises SIGBUS (replacing it by rename is safe)."""
        device = torch.device(device)
        converting = dtype is not None or device.type != "cpu"
        if window_bytes is None:
            window_bytes = DEFAULT_WINDOW_BYTES if converting else 0
        return dict(self.iter_load(names, "file", dtype, device, window_bytes=window_bytes,
                                   direct_io=direct_io, io_threads=io_threads,
                                   request_bytes=request_bytes, segment_bytes=segment_bytes,
                                   map_resident=map_resident))


_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_EMBED = re.compile(r"emb|wte|wpe", re.IGNORECASE)


def _layer_key(name: str, index: int) -> tuple:
    m = _LAYER.search(name)
    if m:
        return (1, int(m.group(1)), index)
    return (0 if _EMBED.search(name) else 2, 0, index)


def _as_tensor(view: memoryview, dtype: str, shape: tuple, name: str) -> torch.Tensor:
    tdtype = _TORCH.get(dtype)
    if tdtype is None:
        raise TypeError(f"tensor {name}: dtype {dtype} has no torch equivalent here")
    if len(view) == 0:
        return torch.empty(shape, dtype=tdtype)
    return torch.frombuffer(view, dtype=tdtype).reshape(shape)


def _convert(t: torch.Tensor, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(device=device, dtype=dtype)
    if device.type != "cpu":
        return t.to(device=device)
    return t


def open(src: Any) -> Model:  # noqa: A001 (granary.models.open mirrors granary.open)
    """Opens a model (see the module docstring for what ``src`` may be)."""
    return Model(src)


def load(src: Any, names: Sequence[str] | None = None, dtype: torch.dtype | None = None,
         device: str | torch.device = "cpu", **kwargs) -> dict[str, torch.Tensor]:
    """``Model(src).load(...)``: every tensor (or ``names``) as a dict name -> tensor."""
    return Model(src).load(names, dtype, device, **kwargs)


def iter_load(src: Any, names: Sequence[str] | None = None, order: str = "file",
              dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
              **kwargs) -> Iterator[tuple[str, torch.Tensor]]:
    """``Model(src).iter_load(...)``: ``(name, tensor)`` pairs as each tensor arrives."""
    return Model(src).iter_load(names, order, dtype, device, **kwargs)


def inspect(src: Any) -> dict:
    """Files, tensors (dtype, shape, bytes, file, offset), metadata and total bytes, from the
    headers alone."""
    return Model(src).info()


# ---- saving --------------------------------------------------------------------------------

def _raw(name: str, t: torch.Tensor) -> tuple[str, str, list[int], Any]:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensor {name}: expected a torch.Tensor, got {type(t).__name__}")
    dt = _SAFETENSORS.get(t.dtype)
    if dt is None:
        raise TypeError(f"tensor {name}: dtype {t.dtype} cannot be stored in safetensors")
    if t.layout != torch.strided:
        raise TypeError(f"tensor {name}: only dense tensors can be saved, not {t.layout}")
    shape = list(t.shape)
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return name, dt, shape, b""
    return name, dt, shape, flat.view(torch.uint8).numpy()


def _check_no_sharing(tensors: Mapping[str, torch.Tensor]) -> None:
    spans = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.numel() > 0:
            start = t.data_ptr()
            spans.append((start, start + t.numel() * t.element_size(), name))
    spans.sort()
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"tensors {n0} and {n1} share memory; safetensors stores each "
                             "tensor once, so save one of them (or clone it) and tie them "
                             "again after loading")


def _split_url(url: str) -> tuple[str, str]:
    url = os.fspath(url)
    slash = url.rstrip("/").rfind("/")
    if slash < 0:
        return ".", url
    head = url[:slash] or "/"
    if head.endswith(":/"):  # "file:///x.safetensors" -> store "file:///"
        head += "/"
    return head, url[slash + 1:]


def save(tensors: Mapping[str, torch.Tensor], url: str | os.PathLike,
         metadata: Mapping[str, str] | None = None, shard_bytes: int | None = None) -> list[str]:
    """Saves ``tensors`` as safetensors, byte-identical to ``safetensors.torch.save_file``.

    ``url`` ending in ``.safetensors`` names one file. Otherwise it is a directory that receives
    ``model.safetensors``, or, when the tensors exceed ``shard_bytes``, Hugging Face style shards
    ``model-0000i-of-0000n.safetensors`` (filled in the dict's order) and
    ``model.safetensors.index.json``, written last. Each file appears atomically. Returns the
    files written (the shards, then the index)."""
    meta = []
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str; got {k!r}: {v!r}")
        meta.append((k, v))
    _check_no_sharing(tensors)
    raw = [_raw(name, t) for name, t in tensors.items()]
    # A store URL's query (s3://b/p?endpoint=...) configures the store: it goes with the
    # store's URL, and each returned URL carries it again. Paths may contain "?".
    base, query = os.fspath(url), ""
    if "://" in base and not base.startswith("file://") and "?" in base:
        base, query = base.split("?", 1)
        query = "?" + query
    if base.endswith(".safetensors"):
        if shard_bytes is not None:
            raise ValueError("shard_bytes needs a directory url, not a .safetensors file")
        store, key = _split_url(base)
        _core.save_safetensors(store + query, key, raw, meta)
        return [base + query]
    if shard_bytes is not None and shard_bytes <= 0:
        raise ValueError("shard_bytes must be positive")
    shards: list[list] = [[]]
    size = 0
    for item in raw:
        nbytes = len(memoryview(item[3]).cast("B"))
        if shard_bytes is not None and shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    dir_url = base.rstrip("/") or "/"
    if len(shards) == 1:
        _core.save_safetensors(dir_url + query, "model.safetensors", shards[0], meta)
        return [f"{dir_url}/model.safetensors{query}"]
    n = len(shards)
    weight_map: dict[str, str] = {}
    written = []
    total = 0
    for i, shard in enumerate(shards, 1):
        key = f"model-{i:05d}-of-{n:05d}.safetensors"
        _core.save_safetensors(dir_url + query, key, shard, meta)
        written.append(f"{dir_url}/{key}{query}")
        for item in shard:
            weight_map[item[0]] = key
            total += len(memoryview(item[3]).cast("B"))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    from .store import open as open_store

    open_store(dir_url + query).put("model.safetensors.index.json",
                                    (json.dumps(index, indent=2) + "\n").encode())
    written.append(f"{dir_url}/model.safetensors.index.json{query}")
    return written
