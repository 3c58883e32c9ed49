#!/usr/bin/env python3
"""Model loading: safetensors, torch.load and granary.models against the disk and memcpy ceilings.

Data (generated once under --data-dir, default /work/bench-data/models, reused while its marker
files match; every file is written under a temporary name and renamed, the marker last): for each
size (--sizes-gib, default 2,8) a synthetic LLM-like state dict, all BF16 (Llama-shaped):
model.embed_tokens.weight [vocab, h]; per layer self_attn.{q,k,v,o}_proj [h, h], mlp.{gate,up}
_proj [f, h], mlp.down_proj [h, f], input_layernorm and post_attention_layernorm [h]; model.norm
[h]; lm_head [vocab, h]. h = 4096 from 6 GiB, 2048 from 1 GiB, 1024 from 128 MiB, 256 below; f =
h x 2.6875 rounded to 256; the layer count fills the size and the vocabulary the rest, so the
total is within a few KiB of the target (the exact bytes are reported). One odd-length tensor,
model.odd_bytes U8 [4097], sits at the middle of the data: every BF16 tensor after it starts at
an odd offset. The reference writer (safetensors.torch.save_file) sorts by dtype alignment,
widest first, so it would put a U8 tensor last and misalign nothing; the files are therefore
written by a streaming writer here in model order with the odd tensor in the middle (valid per
the spec: 8-byte LE header length, JSON header padded with spaces to 8 bytes, data_offsets that
tile the buffer; metadata {"format": "pt"}). Layouts, one directory each:

  single/model.safetensors                         one file (about 1/2 of the bytes misaligned)
  sharded/model-0000{1..4}-of-00004.safetensors    4 shards split at quarters of the bytes, the
          + model.safetensors.index.json           odd tensor first in shard 3 (about 1/4
                                                   misaligned); Hugging Face index format
  torch/model.pt                                   torch.save of the same tensors (zip format)

Tensor bytes are a deterministic pseudo-random ring (a 64 MiB + 4099 random pool, each tensor
starting at its own offset), so the data is never held in RAM to write it (model.pt excepted:
torch.save needs the tensors). Each file is cross-checked with safe_open (keys, shapes, dtypes,
first and last row of every tensor) or torch.load(mmap=True), and the misaligned byte counts
are read back from the headers and logged.

Contenders, each run in a fresh subprocess (this script's --child mode) that imports its modules,
notes VmRSS, then waits while the parent drops the page cache (cold) or reads the files into it
(warm, untimed), so peak RSS, CPU and cold mean one load:

  st.load_file          safetensors.torch.load_file(path) per file (default backend: mmap)
  st.load_file-pread    safetensors.torch.load_file(path, backend="pread") per file
  st.safe_open          with safe_open(path, "pt"): f.get_tensor(name) for every name, per file
  read+parse            open(path, "rb").readinto(bytearray(size)), header parsed,
                        torch.frombuffer(buf, dtype, count, offset) per tensor
  torch.load            torch.load(model.pt, weights_only=True)          (single layout only)
  torch.load-mmap       torch.load(model.pt, weights_only=True, mmap=True) (single layout only)
  granary.load          granary.models.load(src)  (src: the file, or the sharded directory)
  granary.load-map      granary.models.load(src, map_resident=True): page-cache resident
                        regions mapped (copy on write) instead of copied; cold ones as above
  granary.iter_load     for name, t in granary.models.iter_load(src): checksummed as it comes
                        and dropped (streaming; the only contender that does not hold the model)
  ceiling               cold: `granary doctor DATA/doctor --json --keep-file --size-mib N --only
                        seqread-1m,seqread-4m` (O_DIRECT sequential read of an N MiB file,
                        default 4096, so no cache holds it; the better block size); warm: `...
                        --only memcpy-fresh,memcpy-reused` (256 MiB copies; GBps is memcpy-fresh,
                        the bandwidth of filling new memory, which every loader here must do;
                        memcpy_reused_GBps is the copy into memory already faulted in)

Every contender checksums every byte of every tensor: the sum mod 2^64 of its bytes read as
little-endian int64 words from the tensor's first byte (plus the tail bytes), per tensor, with
torch (2 threads) where the storage offset allows an int64 view and numpy otherwise. All
checksums must equal those computed while the data was written; a mismatch fails the run.

Metrics (one JSON line each, harness format; point = SIZE/LAYOUT/CACHE, e.g. 2GiB/single/cold;
value = median over rounds; ratio against the ceiling of the same point and run):

  GBps              model bytes / effective load time (GB = 1e9). Effective load time = t_load +
                    t_check1 - t_check2: t_load until every tensor is returned, t_check1 the first
                    checksum pass, t_check2 a second pass (pure compute, the bytes in memory):
                    a lazy loader (mmap) pays its page faults in t_check1 and is charged for
                    them (never credited: a negative difference counts as 0). Checksums done
                    inside the load (the first tensor's, for ttft_ms; with granary.iter_load
                    every tensor's, twice as it comes) count the same way, only by what the
                    first pass took beyond the second. Goals (issue 5) for granary: cold >= 0.9
                    of the O_DIRECT sequential read ceiling; warm >= 0.8 of memcpy (goal_ratio
                    against memcpy-fresh; ratio_memcpy_reused against memcpy into reused
                    memory as well)
  ttft_ms           time to first tensor: from the call until the first tensor (in the order
                    the loader returns them) is returned, plus what its first checksum took
                    beyond a second one (so a lazy view pays for reading its bytes, and no
                    loader pays for the checksum's compute); dict loaders return every tensor
                    at once. Goal for granary: < 50 ms
  peak_rss_MiB      VmHWM at the end minus VmRSS after the imports (mmap'ed file pages count)
  rss_over_model_MiB  peak_rss_MiB - model MiB. Goal for granary: <= 256
  cpu_s_per_GB      user + system CPU seconds (getrusage, every thread of the process) of the
                    load plus the first checksum pass minus the second, per GB
  load_s            the effective load time
  first_touch_ms    t_check1 - t_check2: what the first pass over the returned tensors spent
                    beyond computing (page faults of mmap'ed tensors; about 0 for eager loaders)

A warm mmap load (st.load_file, st.safe_open, torch.load-mmap) copies nothing: its tensors are
the page cache's pages, mapped rather than copied (first_touch_ms shows what the mapping costs),
so its warm GB/s can be far above memcpy; its peak RSS counts those file pages.

Order: per size, each round runs, for every point (layout x cache state), every contender once in
an order that rotates between rounds (bench/harness.py), the ceiling among them.

Usage:
  .venv/bin/python bench/model_bench.py [--rounds 5] [--sizes-gib 2,8] [--layouts single,sharded]
        [--cache cold,warm] [--contenders st.load_file,...] [--data-dir DIR] [--granary PATH]
        [--doctor-size-mib 4096] [--no-drop-caches] [--quick]
  make bench (bench/run_all.py runs it; the options are then spelled --model-sizes-gib,
        --model-layouts, --model-cache, --model-contenders, --model-data-dir,
        --model-doctor-size-mib; --skip model to leave it out)
  quick look: OMP_NUM_THREADS=2 .venv/bin/python bench/model_bench.py --quick --rounds 2
        (a 0.25 GiB model, a 1 GiB doctor file)

Disk: about 3 x (sum of sizes) under --data-dir (30 GiB for 2,8) plus the doctor file. RAM:
writing model.pt holds the model once; a load holds it once more next to the page cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import math
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = "model"
GB = 1e9
KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
DATA_FORMAT = 1        # bump when the generated layout changes (markers then mismatch)
POOL_BYTES = 64 * MIB + 4099   # odd, so a window misplaced by a power of two reads other bytes
CHUNK_BYTES = 64 * MIB         # multiple of 8: checksum words stay aligned across chunks
ODD_NAME = "model.odd_bytes"
ODD_LEN = 4097
SHARDS = 4
LAYOUTS = ["single", "sharded"]
CACHES = ["cold", "warm"]
CONTENDERS = ["st.load_file", "st.load_file-pread", "st.safe_open", "read+parse", "torch.load",
              "torch.load-mmap", "granary.load", "granary.load-map", "granary.iter_load"]
GRANARY_CONTENDERS = {"granary.load", "granary.load-map", "granary.iter_load"}
TORCH_PT_CONTENDERS = {"torch.load", "torch.load-mmap"}
# Issue 5 goals for granary: ratios to the ceiling, and absolute values.
GOAL_COLD_RATIO = 0.9
GOAL_WARM_RATIO = 0.8
GOAL_TTFT_MS = 50.0
GOAL_RSS_OVER_MODEL_MIB = 256.0
MASK64 = (1 << 64) - 1
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "U8": 1, "I8": 1, "I16": 2, "I32": 4,
               "I64": 8, "BOOL": 1}


def log_print(log, msg: str) -> None:
    print(f"[{BENCH}] {msg}", file=log, flush=True)


# -- the model ------------------------------------------------------------------------------------

@dataclasses.dataclass
class TensorSpec:
    name: str
    dtype: str          # safetensors dtype string
    shape: tuple
    index: int          # position in the model; selects the tensor's bytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]

    @property
    def elem_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


def _hidden(target: int) -> int:
    if target >= 6 * GIB:
        return 4096
    if target >= 1 * GIB:
        return 2048
    if target >= 128 * MIB:
        return 1024
    return 256


def model_specs(target_bytes: int) -> tuple[list[TensorSpec], dict]:
    """The tensors in file order (the odd tensor in the middle of the bytes) and the config."""
    h = _hidden(target_bytes)
    f = int(round(h * 2.6875 / 256)) * 256
    per_layer = 2 * (4 * h * h + 3 * f * h + 2 * h)
    vocab0 = 8 * h
    fixed = 2 * (2 * vocab0 * h + h) + ODD_LEN
    layers = max(1, (target_bytes - fixed) // per_layer)
    rest = target_bytes - layers * per_layer - 2 * h - ODD_LEN
    vocab = max(16, rest // (2 * 2 * h))
    shapes = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (h, h)),
                   (p + "self_attn.v_proj.weight", (h, h)), (p + "self_attn.o_proj.weight", (h, h)),
                   (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                   (p + "mlp.down_proj.weight", (h, f)),
                   (p + "input_layernorm.weight", (h,)),
                   (p + "post_attention_layernorm.weight", (h,))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    specs = [TensorSpec(n, "BF16", s, 0) for n, s in shapes]
    total = sum(s.nbytes for s in specs)
    # The odd tensor goes right before the first tensor that starts in the second half of the
    # bytes, so it also starts shard 3 of 4 (the shards split at quarters of the bytes).
    off, at = 0, len(specs)
    for i, s in enumerate(specs):
        if off >= total // 2:
            at = i
            break
        off += s.nbytes
    specs.insert(at, TensorSpec(ODD_NAME, "U8", (ODD_LEN,), 0))
    for i, s in enumerate(specs):
        s.index = i
    config = {"hidden": h, "intermediate": f, "layers": layers, "vocab": vocab}
    return specs, config


_pool = None


def pool():
    """The random pool, doubled by one chunk so any chunk is one contiguous slice."""
    global _pool
    if _pool is None:
        import numpy as np
        base = np.frombuffer(np.random.default_rng(20260511).bytes(POOL_BYTES), dtype=np.uint8)
        _pool = np.concatenate([base, base[:CHUNK_BYTES]])
    return _pool


def tensor_start(index: int) -> int:
    return (index * 2654435761 + 12345) % POOL_BYTES


def tensor_chunks(spec: TensorSpec) -> Iterator:
    """The tensor's bytes as numpy uint8 slices of at most CHUNK_BYTES (all but the last a
    multiple of 8)."""
    p = pool()
    off = tensor_start(spec.index)
    left = spec.nbytes
    while left:
        n = min(left, CHUNK_BYTES)
        yield p[off:off + n]
        off = (off + n) % POOL_BYTES
        left -= n


def expected_bytes(spec: TensorSpec, start: int, length: int) -> bytes:
    p = pool()
    off = (tensor_start(spec.index) + start) % POOL_BYTES
    out = b""
    while length:
        n = min(length, POOL_BYTES - off)
        out += p[off:off + n].tobytes()
        length -= n
        off = 0
    return out


# -- checksums ------------------------------------------------------------------------------------

def checksum_np(a) -> int:
    """Sum mod 2^64 of a uint8 numpy array's bytes as LE int64 words (+ the tail as one word)."""
    n = a.size
    n8 = n - n % 8
    s = int(a[:n8].view("<i8").sum(dtype="<i8")) if n8 else 0
    if n8 < n:
        s += int.from_bytes(a[n8:].tobytes(), "little")
    return s & MASK64


class Summer:
    """Running checksum of a byte stream given in pieces whose lengths (but the last) are
    multiples of 8."""

    def __init__(self):
        self.value = 0

    def add(self, a) -> None:
        self.value = (self.value + checksum_np(a)) & MASK64


def checksum_tensor(t) -> int:
    """The same checksum of a contiguous CPU tensor's bytes (any dtype, any alignment)."""
    import torch
    b = t.reshape(-1).view(torch.uint8)
    n = b.numel()
    n8 = n - n % 8
    s = 0
    if n8:
        if b.storage_offset() % 8 == 0:
            s = int(b[:n8].view(torch.int64).sum())
        else:  # torch refuses an int64 view at this offset; numpy reads unaligned words
            s = int(b[:n8].numpy().view("<i8").sum(dtype="<i8"))
    if n8 < n:
        s += int.from_bytes(b[n8:].numpy().tobytes(), "little")
    return s & MASK64


# -- writing the files ----------------------------------------------------------------------------

def safetensors_header(specs: list[TensorSpec]) -> bytes:
    """8-byte LE length + JSON header padded with spaces to a multiple of 8; offsets in order."""
    hdr: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for s in specs:
        hdr[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [off,
                                                                                 off + s.nbytes]}
        off += s.nbytes
    body = json.dumps(hdr, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def write_safetensors(path: Path, specs: list[TensorSpec], sums: dict | None) -> None:
    """Streams the tensors into path (via path.tmp + rename); fills sums[name] if given."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(safetensors_header(specs))
        for s in specs:
            summer = Summer()
            for c in tensor_chunks(s):
                f.write(memoryview(c))
                summer.add(c)
            if sums is not None:
                sums[s.name] = summer.value
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)


def write_torch(path: Path, specs: list[TensorSpec]) -> None:
    import torch
    dtypes = {"BF16": torch.bfloat16, "U8": torch.uint8}
    state = {}
    for s in specs:
        buf = torch.empty(s.nbytes, dtype=torch.uint8)
        a = buf.numpy()
        off = 0
        for c in tensor_chunks(s):
            a[off:off + c.size] = c
            off += c.size
        state[s.name] = buf.view(dtypes[s.dtype]).reshape(s.shape)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    del state
    gc.collect()
    tmp.rename(path)


def shard_groups(specs: list[TensorSpec]) -> list[list[TensorSpec]]:
    """SHARDS groups in order, shard k starting at the first tensor that starts at or after k/4
    of the bytes."""
    total = sum(s.nbytes for s in specs)
    groups: list[list[TensorSpec]] = [[] for _ in range(SHARDS)]
    off, k = 0, 0
    for s in specs:
        while k + 1 < SHARDS and off >= total * (k + 1) // SHARDS:
            k += 1
        groups[k].append(s)
        off += s.nbytes
    return [g for g in groups if g]


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def read_header(path: Path) -> tuple[dict, int]:
    """(header dict, data start offset) of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def misaligned(paths: list[Path]) -> tuple[int, int]:
    """(bytes of tensors whose file offset is not a multiple of their element size, all bytes)."""
    bad = total = 0
    for p in paths:
        hdr, start = read_header(p)
        for name, info in hdr.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            total += e - b
            if (start + b) % DTYPE_BYTES[info["dtype"]]:
                bad += e - b
    return bad, total


def cross_check_safetensors(paths: list[Path], specs: list[TensorSpec]) -> None:
    """Opens every file with the reference reader: keys, shapes, dtypes, first and last row of
    every tensor."""
    import torch
    from safetensors import safe_open
    want = {s.name: s for s in specs}
    seen = set()
    names = {torch.bfloat16: "BF16", torch.uint8: "U8"}
    for p in paths:
        with safe_open(str(p), "pt") as f:
            for name in f.keys():
                s = want.get(name)
                if s is None:
                    raise RuntimeError(f"{p}: unexpected tensor {name}")
                sl = f.get_slice(name)
                if tuple(sl.get_shape()) != s.shape or sl.get_dtype() != s.dtype:
                    raise RuntimeError(f"{p}: {name}: {sl.get_dtype()} {sl.get_shape()}, want "
                                       f"{s.dtype} {list(s.shape)}")
                rows = s.shape[0]
                row_bytes = s.nbytes // rows
                for r in (0, rows - 1):
                    got = sl[r:r + 1]
                    if names.get(got.dtype) != s.dtype:
                        raise RuntimeError(f"{p}: {name}: read as {got.dtype}")
                    data = got.reshape(-1).view(torch.uint8).numpy().tobytes()
                    if data != expected_bytes(s, r * row_bytes, row_bytes):
                        raise RuntimeError(f"{p}: {name}: row {r} differs from what was written")
                seen.add(name)
    if seen != set(want):
        raise RuntimeError(f"{paths[0].parent}: missing tensors {sorted(set(want) - seen)[:5]}")


def cross_check_torch(path: Path, specs: list[TensorSpec]) -> None:
    import torch
    sd = torch.load(path, weights_only=True, mmap=True)
    if list(sd) != [s.name for s in specs]:
        raise RuntimeError(f"{path}: tensor names differ from what was written")
    for s in specs:
        t = sd[s.name]
        if tuple(t.shape) != s.shape:
            raise RuntimeError(f"{path}: {s.name}: shape {tuple(t.shape)}, want {s.shape}")
        b = t.reshape(-1).view(torch.uint8)
        k = min(256, s.nbytes)
        if b[:k].numpy().tobytes() != expected_bytes(s, 0, k) or \
                b[s.nbytes - k:].numpy().tobytes() != expected_bytes(s, s.nbytes - k, k):
            raise RuntimeError(f"{path}: {s.name}: bytes differ from what was written")
    del sd


class Model:
    """One generated size: its specs, checksums and the files of each layout."""

    def __init__(self, data_dir: Path, gib: float):
        self.gib = gib
        self.label = f"{gib:g}GiB"
        self.target = int(gib * GIB)
        self.root = data_dir / self.label
        self.specs, self.config = model_specs(self.target)
        self.nbytes = sum(s.nbytes for s in self.specs)
        self.sums: dict[str, int] = {}
        self.groups = shard_groups(self.specs)

    def dir(self, layout: str) -> Path:
        return self.root / {"single": "single", "sharded": "sharded", "torch": "torch"}[layout]

    def files(self, layout: str) -> list[Path]:
        d = self.dir(layout)
        if layout == "single":
            return [d / "model.safetensors"]
        if layout == "sharded":
            return [d / shard_name(i, len(self.groups)) for i in range(len(self.groups))]
        return [d / "model.pt"]

    def index_path(self) -> Path:
        return self.dir("sharded") / "model.safetensors.index.json"

    def meta(self) -> dict:
        return {"format": DATA_FORMAT, "target_bytes": self.target, "bytes": self.nbytes,
                "tensors": len(self.specs), **self.config}

    def marker(self, part: str) -> Path:
        return self.root / f"{part}.done"

    def done(self, part: str) -> bool:
        try:
            got = json.loads(self.marker(part).read_text())
        except (OSError, ValueError):
            return False
        paths = self.files(part) if part in ("single", "sharded", "torch") else []
        return all(got.get(k) == v for k, v in self.meta().items()) and \
            all(p.is_file() for p in paths)

    def mark(self, part: str, **more) -> None:
        os.sync()
        tmp = self.marker(part).with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(self.meta(), **more)) + "\n")
        tmp.rename(self.marker(part))

    def generate(self, parts: list[str], log) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.done("checksums"):
            self.sums = {k: int(v) for k, v in json.loads(
                self.marker("checksums").read_text())["sums"].items()}
        for part in parts:
            if self.done(part) and (self.sums or part != "single"):
                continue
            t0 = time.monotonic()
            self.marker(part).unlink(missing_ok=True)
            d = self.dir(part)
            d.mkdir(parents=True, exist_ok=True)
            for p in d.iterdir():  # leftovers of a killed run
                p.unlink()
            if part == "single":
                sums: dict[str, int] = {}
                write_safetensors(self.files("single")[0], self.specs, sums)
                self.sums = sums
                self.mark("checksums", sums={k: str(v) for k, v in sums.items()})
            elif part == "sharded":
                weight_map = {}
                files = self.files("sharded")
                for g, path in zip(self.groups, files):
                    write_safetensors(path, g, None)
                    weight_map.update({s.name: path.name for s in g})
                tmp = self.index_path().with_suffix(".tmp")
                tmp.write_text(json.dumps({"metadata": {"total_size": self.nbytes},
                                           "weight_map": weight_map}, indent=2) + "\n")
                tmp.rename(self.index_path())
            else:
                write_torch(self.files("torch")[0], self.specs)
            took = time.monotonic() - t0
            if part == "torch":
                cross_check_torch(self.files("torch")[0], self.specs)
            else:
                cross_check_safetensors(self.files(part), self.specs)
            self.mark(part, write_s=round(took, 1))
            log_print(log, f"{self.label}: wrote {part} ({self.nbytes / GIB:.3f} GiB) in "
                           f"{took:.1f}s, cross-checked")
        if not self.sums:
            # single was not asked for: the checksums come from the generator alone
            self.sums = {}
            for s in self.specs:
                summer = Summer()
                for c in tensor_chunks(s):
                    summer.add(c)
                self.sums[s.name] = summer.value
            self.mark("checksums", sums={k: str(v) for k, v in self.sums.items()})
        for part in parts:
            if part in ("single", "sharded"):
                bad, total = misaligned(self.files(part))
                log_print(log, f"{self.label} {part}: {bad:,} of {total:,} tensor bytes "
                               f"({bad / total:.0%}) at offsets that are not a multiple of "
                               f"their element size")

    def describe(self) -> str:
        c = self.config
        small = sum(1 for s in self.specs if s.nbytes < MIB)
        return (f"{self.nbytes:,} bytes in {len(self.specs)} tensors ({small} under 1 MiB): "
                f"h={c['hidden']}, f={c['intermediate']}, {c['layers']} layers, vocab "
                f"{c['vocab']}, BF16 + {ODD_NAME} U8 [{ODD_LEN}]")


# -- the child: one load in a fresh process -------------------------------------------------------

def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _read_parse(paths: list[str]):
    import torch
    dtypes = {"BF16": torch.bfloat16, "U8": torch.uint8, "F32": torch.float32,
              "F16": torch.float16, "I8": torch.int8}
    for p in paths:
        size = os.path.getsize(p)
        buf = bytearray(size)
        mv = memoryview(buf)
        with open(p, "rb", buffering=0) as f:
            got = 0
            while got < size:
                n = f.readinto(mv[got:got + (1 << 30)])
                if not n:
                    raise OSError(f"{p}: short read at {got} of {size}")
                got += n
        n = struct.unpack_from("<Q", buf, 0)[0]
        hdr = json.loads(bytes(mv[8:8 + n]))
        start = 8 + n
        for name, info in hdr.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            dt = dtypes[info["dtype"]]
            count = (e - b) // DTYPE_BYTES[info["dtype"]]
            t = torch.frombuffer(buf, dtype=dt, count=count, offset=start + b) if count else \
                torch.empty(0, dtype=dt)
            yield name, t.reshape(info["shape"])


def child_loader(cfg: dict) -> Callable[[], Iterator]:
    """A function that starts the load and returns an iterator of (name, tensor)."""
    name, paths, src = cfg["contender"], cfg["paths"], cfg["src"]
    if name in ("st.load_file", "st.load_file-pread"):
        from safetensors.torch import load_file
        kw = {"backend": "pread"} if name.endswith("pread") else {}

        def go():
            out = {}
            for p in paths:
                out.update(load_file(p, **kw))
            return iter(out.items())
        return go
    if name == "st.safe_open":
        from safetensors import safe_open

        def gen():
            for p in paths:
                with safe_open(p, "pt") as f:
                    for k in f.keys():
                        yield k, f.get_tensor(k)
        return gen
    if name == "read+parse":
        return lambda: _read_parse(paths)
    if name in TORCH_PT_CONTENDERS:
        import torch
        mmap = name.endswith("mmap")
        return lambda: iter(torch.load(paths[0], weights_only=True, mmap=mmap).items())
    if name == "granary.load":
        import granary.models as gm
        return lambda: iter(gm.load(src).items())
    if name == "granary.load-map":
        import granary.models as gm
        return lambda: iter(gm.load(src, map_resident=True).items())
    if name == "granary.iter_load":
        import granary.models as gm
        return lambda: gm.iter_load(src)
    raise ValueError(f"unknown contender {name}")


def child_main(cfg: dict) -> int:
    """Imports, reports ready, waits for "go" on stdin (the parent drops or fills the cache),
    loads, checksums, prints one JSON line."""
    import torch
    torch.set_num_threads(cfg["threads"])
    import numpy  # noqa: F401
    loader = child_loader(cfg)
    stream = cfg["contender"] == "granary.iter_load"
    checksum_tensor(torch.zeros(64, dtype=torch.uint8))  # first-call costs out of the timing
    gc.collect()
    base_rss = _status_kib("VmRSS") * KIB
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    clock = time.perf_counter
    sums: dict[str, int] = {}
    held: list = []
    cpu0 = _cpu_s()
    t0 = clock()
    ttft = None
    # Checksums done inside the load (the first tensor's; every tensor's when streaming) are
    # taken out of its time and CPU, all but what the first pass took beyond the second.
    inline_s = inline_cpu = 0.0
    for name, t in loader():
        if ttft is None or stream:
            returned = clock() - t0
            f0, fc0 = clock(), _cpu_s()
            s = checksum_tensor(t)
            first_s, first_cpu = clock() - f0, _cpu_s() - fc0
            r0, c0 = clock(), _cpu_s()
            if checksum_tensor(t) != s:
                raise RuntimeError(f"{name}: checksum changed between two passes")
            again_s, again_cpu = clock() - r0, _cpu_s() - c0
            inline_s += first_s + again_s - max(0.0, first_s - again_s)
            inline_cpu += first_cpu + again_cpu - max(0.0, first_cpu - again_cpu)
            if ttft is None:
                # Returned, plus what touching its bytes took beyond computing (a lazy view's
                # page faults); the checksum's own compute is not the loader's.
                ttft = returned + max(0.0, first_s - again_s)
            sums[name] = s
        if not stream:
            held.append((name, t))
        del t
    t_load = clock() - t0 - inline_s
    cpu_load = _cpu_s() - cpu0 - inline_cpu
    if stream:
        # Each tensor was checksummed twice as it came: the second pass is pure compute.
        t_check1 = t_check2 = 0.0
        cpu_check1 = cpu_check2 = 0.0
    else:
        t1, c1 = clock(), _cpu_s()
        for name, t in held:
            sums[name] = checksum_tensor(t)
        t_check1, cpu_check1 = clock() - t1, _cpu_s() - c1
        t2, c2 = clock(), _cpu_s()
        for name, t in held:
            if checksum_tensor(t) != sums[name]:
                raise RuntimeError(f"{name}: checksum changed between two passes")
        t_check2, cpu_check2 = clock() - t2, _cpu_s() - c2
    peak = _status_kib("VmHWM") * KIB
    print(json.dumps({"t_load": t_load, "t_check1": t_check1, "t_check2": t_check2,
                      "ttft": ttft, "cpu_load": cpu_load, "cpu_check1": cpu_check1,
                      "cpu_check2": cpu_check2, "peak_rss": peak, "base_rss": base_rss,
                      "tensors": len(sums), "sums": {k: str(v) for k, v in sums.items()}}),
          flush=True)
    return 0


# -- the parent -----------------------------------------------------------------------------------

SkipContender = harness.SkipContender


class ChecksumMismatch(RuntimeError):
    pass


def granary_models():
    try:
        gm = importlib.import_module("granary.models")
    except ImportError as e:
        raise SkipContender(f"granary.models is missing ({e})")
    for name in ("load", "iter_load"):
        if not hasattr(gm, name):
            raise SkipContender(f"granary.models.{name} is missing")
    return gm


def probe(name: str) -> str | None:
    """Why a contender cannot run at all, or None."""
    try:
        if name in GRANARY_CONTENDERS:
            gm = granary_models()
            if name == "granary.iter_load" and not hasattr(gm, "iter_load"):
                return "granary.models.iter_load is missing"
        elif name == "st.load_file-pread":
            import inspect
            from safetensors.torch import load_file
            if "backend" not in inspect.signature(load_file).parameters:
                return "safetensors.torch.load_file has no backend= (safetensors < 0.8)"
    except SkipContender as e:
        return str(e)
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def warm_up(paths: list[Path]) -> None:
    """Reads files into the page cache (sequentially, in 8 MiB reads)."""
    buf = bytearray(8 * MIB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


class Bench:
    def __init__(self, args, model: Model, granary_bin: str, log):
        self.args = args
        self.model = model
        self.granary_bin = granary_bin
        self.log = log
        self.doctor_dir = Path(args.model_data_dir) / "doctor"
        self.cold_ok = True
        self.failed: dict[str, str] = {}
        self.mismatches: list[str] = []
        self.threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or min(2, os.cpu_count()
                                                                                or 1)

    @staticmethod
    def split(point: str) -> tuple[str, str, str]:
        label, layout, cache = point.split("/")
        return label, layout, cache

    def prepare(self, cache: str, paths: list[Path]) -> None:
        """Cold: drop the page cache; warm: read the files into it."""
        if cache == "cold":
            if getattr(self.args, "no_drop_caches", False) or not harness.drop_page_cache(
                    self.log):
                self.cold_ok = False
        else:
            warm_up(paths)

    def contender_paths(self, name: str, layout: str) -> tuple[list[Path], Path]:
        if name in TORCH_PT_CONTENDERS:
            return self.model.files("torch"), self.model.files("torch")[0]
        files = self.model.files(layout)
        return files, files[0] if layout == "single" else self.model.dir(layout)

    def run_child(self, name: str, point: str) -> dict:
        _, layout, cache = self.split(point)
        if name in TORCH_PT_CONTENDERS and layout != "single":
            return {}  # one model.pt only: measured at the single-file points
        if name in GRANARY_CONTENDERS:
            granary_models()
        paths, src = self.contender_paths(name, layout)
        cfg = {"contender": name, "paths": [str(p) for p in paths], "src": str(src),
               "threads": self.threads}
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child",
                                 json.dumps(cfg)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                _, err = proc.communicate()
                raise RuntimeError(f"{name}: child did not start: {(line + err).strip()[-800:]}")
            self.prepare(cache, paths)
            out, err = proc.communicate("go\n", timeout=self.args.model_timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: child failed (exit {proc.returncode}): "
                               f"{err.strip()[-1500:]}")
        got = json.loads(out.strip().splitlines()[-1])
        self.verify(name, point, {k: int(v) for k, v in got["sums"].items()})
        return self.samples(got)

    def verify(self, name: str, point: str, sums: dict[str, int]) -> None:
        want = self.model.sums
        if sums == want:
            return
        missing = sorted(set(want) - set(sums))
        extra = sorted(set(sums) - set(want))
        wrong = sorted(k for k in set(want) & set(sums) if want[k] != sums[k])
        msg = (f"{name} at {point}: CHECKSUM MISMATCH: {len(missing)} tensors missing "
               f"{missing[:3]}, {len(extra)} unexpected {extra[:3]}, {len(wrong)} with other "
               f"bytes {wrong[:3]}")
        self.mismatches.append(msg)
        raise ChecksumMismatch(msg)

    def samples(self, got: dict) -> dict:
        n = self.model.nbytes
        # The first checksum pass minus the second is what the first pass spent reading (page
        # faults of a lazy loader): a charge, never a credit (noise can make it negative).
        load_s = got["t_load"] + max(0.0, got["t_check1"] - got["t_check2"])
        cpu = got["cpu_load"] + max(0.0, got["cpu_check1"] - got["cpu_check2"])
        peak = max(0, got["peak_rss"] - got["base_rss"]) / MIB
        return {
            "GBps": harness.Sample(n / max(load_s, 1e-9) / GB, "GB/s"),
            "ttft_ms": harness.Sample(got["ttft"] * 1e3, "ms", False),
            "peak_rss_MiB": harness.Sample(peak, "MiB", False),
            "rss_over_model_MiB": harness.Sample(peak - n / MIB, "MiB", False),
            "cpu_s_per_GB": harness.Sample(max(cpu, 0.0) / (n / GB), "s", False),
            "load_s": harness.Sample(load_s, "s", False),
            "first_touch_ms": harness.Sample(max(0.0, got["t_check1"] - got["t_check2"]) * 1e3,
                                             "ms", False),
        }

    # the ceiling
    def doctor_cmd(self, cache: str) -> list[str]:
        only = "seqread-1m,seqread-4m" if cache == "cold" else "memcpy-fresh,memcpy-reused"
        return [self.granary_bin, "doctor", str(self.doctor_dir), "--json", "--keep-file",
                "--size-mib", str(self.args.model_doctor_size_mib), "--only", only]

    def run_ceiling(self, point: str) -> dict:
        _, _, cache = self.split(point)
        self.doctor_dir.mkdir(parents=True, exist_ok=True)
        out = harness.run_command(self.doctor_cmd(cache), "granary doctor")
        got = {m["point"]: m for m in (json.loads(l) for l in out.splitlines()
                                       if l.startswith("{")) if m["metric"] == "bandwidth"}
        gbps = {k: v["value"] * MIB / GB for k, v in got.items()}
        if cache == "cold":
            best = max(gbps.get("seqread-1m", 0), gbps.get("seqread-4m", 0))
            res = {"GBps": harness.Sample(best, "GB/s")}
            for k in ("seqread-1m", "seqread-4m"):
                if k in gbps:
                    res[k.replace("-", "_") + "_GBps"] = harness.Sample(gbps[k], "GB/s")
        else:
            res = {"GBps": harness.Sample(gbps["memcpy-fresh"], "GB/s"),
                   "memcpy_reused_GBps": harness.Sample(gbps["memcpy-reused"], "GB/s")}
        res["load_s"] = harness.Sample(self.model.nbytes / (res["GBps"].value * GB), "s", False)
        return res

    def describe_ceiling(self, point: str) -> str:
        _, _, cache = self.split(point)
        what = ("O_DIRECT sequential read, the better of 1 MiB QD 32 and 4 MiB QD 16"
                if cache == "cold" else "memcpy of 256 MiB into fresh memory (GBps) and into "
                                        "reused memory (memcpy_reused_GBps)")
        return " ".join(["granary"] + self.doctor_cmd(cache)[1:]) + f": {what}"

    def guarded(self, name: str, fn: Callable[[str], dict]) -> Callable[[str], dict]:
        """fn as a contender (harness.run_guarded: a failure drops it for the run; a checksum
        mismatch is reported without a traceback)."""
        return lambda point: harness.run_guarded(name, lambda: fn(point), self.failed, self.log,
                                                 BENCH, quiet=(ChecksumMismatch,),
                                                 after=gc.collect)

    def contenders(self, names: list[str]) -> list[harness.Contender]:
        out = [harness.Contender("ceiling", self.guarded("ceiling", self.run_ceiling),
                                 describe=self.describe_ceiling)]
        for n in names:
            out.append(harness.Contender(
                n, self.guarded(n, lambda p, n=n: self.run_child(n, p)),
                describe=lambda p, n=n: describe(n)))
        return out


def describe(name: str) -> str:
    return {
        "st.load_file": "safetensors.torch.load_file(path) per file (backend mmap)",
        "st.load_file-pread": "safetensors.torch.load_file(path, backend='pread') per file",
        "st.safe_open": "safe_open(path, 'pt'): get_tensor(name) for every name, per file",
        "read+parse": "open(path,'rb').readinto(bytearray(size)); header parsed; "
                      "torch.frombuffer per tensor",
        "torch.load": "torch.load(model.pt, weights_only=True)",
        "torch.load-mmap": "torch.load(model.pt, weights_only=True, mmap=True)",
        "granary.load": "granary.models.load(src) (a file, or the sharded directory)",
        "granary.load-map": "granary.models.load(src, map_resident=True)",
        "granary.iter_load": "for name, t in granary.models.iter_load(src): checksum, drop",
    }[name]


# -- results --------------------------------------------------------------------------------------

class _Null:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def finish(results: list[dict], bench: Bench, out) -> list[dict]:
    """Adds the model's size, cold flags, goals and the memcpy-reused ratio, then prints."""
    m = bench.model
    reused = {r["what"].split(" ")[0]: r for r in results
              if r["is_ceiling"] and r["what"].endswith(" memcpy_reused_GBps")}
    for r in results:
        point, metric = r["what"].split(" ", 1)
        _, layout, cache = Bench.split(point)
        r["model_bytes"] = m.nbytes
        r["model_tensors"] = len(m.specs)
        r["layout"] = layout
        r["cache"] = cache
        if cache == "cold":
            r["cold"] = bench.cold_ok
        if r["is_ceiling"]:
            harness.emit(r, out)
            continue
        granary = r["contender"] in GRANARY_CONTENDERS
        if metric == "GBps":
            ru = reused.get(point)
            if ru is not None:
                r["ceiling_memcpy_reused"] = ru["value"]
                r["ratio_memcpy_reused"] = harness._round(harness.ratio(r["value"], ru["value"],
                                                                        True))
                r["paired_ratio_memcpy_reused"] = harness._round(harness.paired_ratio(
                    r["samples"], ru["samples"], True))
            if granary:
                r["goal_ratio"] = GOAL_COLD_RATIO if cache == "cold" else GOAL_WARM_RATIO
                q = r["paired_ratio"] if r["paired_ratio"] is not None else r["ratio"]
                r["goal_met"] = q is not None and q >= r["goal_ratio"]
        if granary and metric == "ttft_ms":
            r["goal_value"] = GOAL_TTFT_MS
            r["goal_met"] = r["value"] < GOAL_TTFT_MS
        if granary and metric == "rss_over_model_MiB":
            r["goal_value"] = GOAL_RSS_OVER_MODEL_MIB
            r["goal_met"] = r["value"] <= GOAL_RSS_OVER_MODEL_MIB
        harness.emit(r, out)
    return results


def _num(v) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if abs(v) < 10 else harness._fmt(v)


def markdown_table(results: list[dict]) -> str:
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for r in results:
        if r["bench"] != BENCH:
            continue
        point, metric = r["what"].split(" ", 1)
        rows.setdefault((point, r["contender"]), {})[metric] = r
    if not rows:
        return ""
    lines = ["| point | contender | GB/s | / ceiling (paired) | / memcpy reused | TTFT ms | "
             "peak RSS MiB | RSS - model MiB | CPU s / GB | n |",
             "|---|---|" + "---:|" * 8]
    points = list(dict.fromkeys(p for p, _ in rows))
    for p in points:
        names = [c for q, c in rows if q == p and c != "ceiling"] + ["ceiling"]
        for c in names:
            m = rows.get((p, c))
            if not m:
                continue
            g = m.get("GBps", {})
            ratio = reused = ""
            if g.get("ratio") is not None and not g.get("is_ceiling"):
                ratio = f"{g['ratio']:.2f} ({g.get('paired_ratio') or 0:.2f})"
                if g.get("goal_met") is False:
                    ratio = f"**{ratio}**"
            if g.get("ratio_memcpy_reused") is not None:
                reused = f"{g['ratio_memcpy_reused']:.2f}"
            if c == "ceiling":
                name = ("ceiling: doctor O_DIRECT seq read" if p.endswith("cold") else
                        "ceiling: doctor memcpy fresh")
                if "memcpy_reused_GBps" in m:
                    reused = f"reused: {_num(m['memcpy_reused_GBps']['value'])} GB/s"
            else:
                name = c

            def cell(k):
                r = m.get(k)
                if r is None:
                    return ""
                s = _num(r["value"])
                return f"**{s}**" if r.get("goal_met") is False else s
            n = max(r["median_of"] for r in m.values())
            lines.append(f"| {p} | {name} | {_num(g.get('value'))} | {ratio} | {reused} | "
                         f"{cell('ttft_ms')} | {cell('peak_rss_MiB')} | "
                         f"{cell('rss_over_model_MiB')} | {cell('cpu_s_per_GB')} | {n} |")
    lines.append("")
    lines.append("GB/s = model bytes / (load + first checksum pass - second pass), every byte "
                 "checksummed. Ceiling: cold = doctor O_DIRECT sequential read, warm = doctor "
                 "memcpy into fresh memory (/ memcpy reused: against memcpy into reused memory). "
                 f"Goals for granary (bold when missed): cold >= {GOAL_COLD_RATIO}, warm >= "
                 f"{GOAL_WARM_RATIO} of the ceiling, TTFT < {GOAL_TTFT_MS:g} ms, RSS - model <= "
                 f"{GOAL_RSS_OVER_MODEL_MIB:g} MiB. torch.load reads model.pt (single points).")
    return "\n".join(lines)


# -- driver ---------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """Options of this benchmark. With standalone=False the options shared with the other
    benchmarks of run_all.py (--rounds, --granary, --quick, --no-drop-caches) are left to the
    caller and this benchmark's own options are only spelled --model-*."""
    if standalone:
        parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS,
                            help="rounds (default 5)")
        parser.add_argument("--granary", default=None, help="path of the granary binary")
        parser.add_argument("--quick", action="store_true",
                            help="a 0.25 GiB model and a 1 GiB doctor file")
        parser.add_argument("--no-drop-caches", action="store_true",
                            help="do not drop the page cache (results then say cold: false)")

    def opt(name: str, **kw):
        names = [f"--model-{name}"] + ([f"--{name}"] if standalone else [])
        parser.add_argument(*names, dest=f"model_{name.replace('-', '_')}", **kw)

    opt("sizes-gib", default=None,
        help="model sizes in GiB, comma-separated (default 2,8; 0.25 with --quick)")
    opt("layouts", default=",".join(LAYOUTS), help="single,sharded (default both)")
    opt("cache", default=",".join(CACHES), help="cold,warm (default both)")
    opt("contenders", default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    opt("data-dir", default=os.environ.get("GRANARY_BENCH_MODELS", "/work/bench-data/models"),
        help="where the generated models live and are reused (default: $GRANARY_BENCH_MODELS "
             "or /work/bench-data/models)")
    opt("doctor-size-mib", type=int, default=None,
        help="doctor's sequential-read test file in DATA_DIR/doctor (default 4096; 1024 quick)")
    opt("timeout-s", type=float, default=1800.0, help="seconds a load may take (default 1800)")


def _list(s: str, known: list[str], what: str) -> list[str]:
    got = [x for x in str(s).split(",") if x]
    bad = [x for x in got if x not in known]
    if bad:
        raise SystemExit(f"{BENCH}: unknown {what} {bad}; known: {','.join(known)}")
    return got


def run(args: argparse.Namespace, out=sys.stdout, log=sys.stderr) -> list[dict]:
    """Runs the benchmark; prints JSON lines to `out` and returns the results."""
    if args.model_sizes_gib is None:
        args.model_sizes_gib = "0.25" if args.quick else "2,8"
    if args.model_doctor_size_mib is None:
        args.model_doctor_size_mib = 1024 if args.quick else 4096
    sizes = [float(s) for s in str(args.model_sizes_gib).split(",") if s]
    layouts = _list(args.model_layouts, LAYOUTS, "layouts")
    caches = _list(args.model_cache, CACHES, "cache states")
    names = _list(args.model_contenders, CONTENDERS, "contenders")
    skipped = {}
    for c in names:
        why = probe(c)
        if why:
            skipped[c] = why
            log_print(log, f"skipping {c}: {why}")
    names = [c for c in names if c not in skipped]
    import doctor_vs_fio
    granary_bin = doctor_vs_fio.find_granary(args.granary)
    data_dir = Path(args.model_data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    args.model_data_dir = str(data_dir)
    log_print(log, f"sizes {sizes} GiB, layouts {layouts}, cache {caches}, {args.rounds} rounds, "
                   f"contenders {names}, data {data_dir}")
    parts = list(layouts) + (["torch"] if TORCH_PT_CONTENDERS & set(names) and
                             "single" in layouts else [])
    results: list[dict] = []
    mismatches: list[str] = []
    failed: dict[str, str] = {}
    for gib in sizes:
        model = Model(data_dir, gib)
        model.generate(parts, log)
        log_print(log, f"{model.label}: {model.describe()}")
        bench = Bench(args, model, granary_bin, log)
        points = [f"{model.label}/{lay}/{c}" for lay in layouts for c in caches]
        got = harness.Harness(BENCH, args.rounds, out=_Null(), log=log).run(
            points, bench.contenders(names), ceiling="ceiling")
        results += finish(got, bench, out)
        mismatches += bench.mismatches
        failed.update(bench.failed)
    for name, why in list(skipped.items()) + list(failed.items()):
        log_print(log, f"not measured: {name}: {why}")
    if mismatches:
        raise RuntimeError(f"{BENCH}: checksums disagree:\n" + "\n".join(mismatches))
    return results


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_main(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    results = run(args)
    print()
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
