#!/usr/bin/env python3
"""Checkpoint save/load against torch.save, torch.distributed.checkpoint and the machine's ceilings.

For each state size (--sizes-gib, default 2,8) an LLM-like state dict is generated once and
reused: per layer fp32 attention matrices (d x d), bf16 MLP matrices (f x d, d x f with f about
8/3 d), fp32 norms and bf16 biases; a bf16 embedding (8 d x d) and an fp32 lm_head sized so
the total hits the target; an "optim" part shaped like torch.optim.Adam's state_dict (per
parameter a 0-dim "step" tensor and fp32 exp_avg and exp_avg_sq, plus param_groups); and a
"meta" dict of plain Python values. d is 4096 from 6 GiB, 2048 from 3 GiB, 1024 from 384 MiB,
512 from 64 MiB, so the default sizes cover two regimes: 2 GiB = d 1024, 15 layers, 732
tensors (411 under 1 MiB, the largest 32 MiB); 8 GiB = d 4096, 3 layers, 156 tensors (87 under
1 MiB, matrices of 64 to 512 MiB). Every tensor is filled (pre-faulted) before the first
round; the exact byte count is reported.

Each round runs every contender once, in an order that rotates between rounds (bench/harness.py):

  ceiling           memcpy: copy every tensor into a warm (pre-faulted) flat buffer of the same
                    size (torch copy_, the faster of 1 and OMP_NUM_THREADS threads);
                    `granary doctor DIR --json --only seqwrite,seqread --size-mib M` (O_DIRECT;
                    the better of 1 MiB QD 32 and 4 MiB QD 16 for each direction; M defaults
                    to the state size)
  torch.save        torch.save(state, f) + f.flush + fsync(file) + fsync(dir): stall = durable;
                    torch.load cold (page cache dropped) and warm (right after, from the cache)
  dcp               dcp.save(state, storage_writer=FileSystemWriter(dir)) (defaults: one file per
                    rank, sync_files=True, 1 thread): stall = durable; dcp.load(state,
                    storage_reader=FileSystemReader(dir)) cold, in place into the state
  dcp.async         dcp.async_save(... FileSystemWriter): stall = until it returns (it stages a
                    copy in RAM), durable = until its future completes
  granary           granary.Checkpointer(url, keep_last=2, incremental=False) (fresh each
                    round): save(0, state).wait() untimed except for first_stall_s (it
                    allocates the staging pool), then the measured save(1, state): stall =
                    until save() returns, durable = until handle.wait() returns;
                    ckpt.load(1, into=state) cold
  granary.dcp       dcp.save / dcp.load with granary.dcp.Writer(url) / granary.dcp.Reader(url)
  granary.dcp.async dcp.async_save with granary.dcp.Writer(url), async_stager=granary.dcp.Stager()
                    (one per contender run, as a job keeps one); like granary, a first save
                    untimed except for first_stall_s (it allocates the staging buffers), then
                    the measured save

A contender whose API is missing (granary.Checkpointer, granary.dcp) is skipped with a note;
one that raises is dropped for the rest of the run with the error printed. Loads go in place
into the generated state (no second copy of it in RAM); before each load the first and last
4 KiB of every tensor are overwritten, and after it a sample of every tensor (head, tail, 1024
strided elements) and the Python values are checked against the originals.

Metrics (one JSON line each, harness format; value = median over rounds, ratio = against the
ceiling of the same round, 1.0 = as good as the ceiling; paired_ratio = median of per-round
ratios):

  stall_s         seconds the caller is blocked by the save. Ceiling: memcpy seconds; ratio =
                  memcpy / stall (issue 3 goal for granary: stall <= 1.2 x memcpy, ratio >= 0.83)
  durable_s       seconds from the call until the checkpoint is on disk (fsync'ed). Ceiling:
                  state bytes / doctor's O_DIRECT sequential-write bandwidth
  write_GBps      state bytes / durable_s (GB = 1e9 bytes). Ceiling: doctor seq write (goal 0.9)
  restore_s       seconds to load the checkpoint with a cold page cache. Ceiling: state bytes /
                  doctor's sequential-read bandwidth
  read_GBps       state bytes / restore_s. Ceiling: doctor seq read (goal 0.9)
  read_warm_GBps  torch.load only, the file in the page cache (no ceiling)
  peak_rss_MiB    peak VmRSS above the value before the save (granary: before its Checkpointer
                  is created, so its staging pool counts), sampled every 5 ms from a thread
                  until durable (staging copies show up here; the page cache does not)
  disk_GB         bytes allocated on disk by the checkpoint (st_blocks, like du)
  memcpy_GBps     ceiling only: the memcpy bandwidth
  first_stall_s   granary and granary.dcp.async only: the stall of the first save of a
                  Checkpointer or Stager (staging buffers allocated and faulted in), paid once
                  per job

Training loop (--train, default on): `matmuls` torch.mm of n x n fp32 per step (default 2 of
2048 x 2048 on 2 threads, about 100 ms), `saves` saves every `every` steps with each async
contender (granary, dcp.async, granary.dcp.async; if the previous save is still persisting
the next one waits for it, like if_busy="wait"), then `every` more steps. All of these loops
are contenders of one harness run, so they rotate between rounds like the contenders above:

  no-save                  the same steps without saving: the ceiling of step_ms
  ceiling: O_DIRECT write  at each save point, the state's byte count S written sequentially
                           in 16 MiB O_DIRECT writes by a subprocess, then fsync: `dd
                           if=/dev/zero of=F bs=16M count=S iflag=count_bytes oflag=direct
                           conv=fsync` (QD 1; the last short block without O_DIRECT), or with
                           --train-ceiling-writer fio `fio --rw=write --bs=16M --direct=1
                           --ioengine=io_uring --iodepth=8 --size=S --zero_buffers
                           --end_fsync=1` (S rounded up to 16 MiB; fio's start-up, about 0.5 s,
                           counts in durable_s); files removed after the loop. No checksums and
                           almost no user CPU: the slowdown of just writing at full speed next
                           to the loop (the kernel's direct-I/O work), which a save cannot beat;
                           its durable_s is the machine's time to write the state
  granary nice=N, granary  granary.Checkpointer with persist_nice=N for each N of
                           --train-granary-nice (default 0,10) and with the default (19): the
                           tradeoff between slowdown and time to durable
  dcp.async, granary.dcp.async

  step_ms         no-save: median step; the others: median of the steps that ran while a save
                  was persisting. ratio = no-save / this, slowdown_pct = (this / no-save - 1) x
                  100 (goal for granary: <= 10 %; compare with the O_DIRECT write ceiling's)
  idle_step_ms    the median of the steps of the same loop with no save in flight, and
  slowdown_vs_idle_pct  (step_ms / idle_step_ms - 1) x 100 per round: the same question asked
                  within one loop, so immune to load on the machine that changes between loops
  mean_step_ms    every step's time plus the time spent in save() calls, divided by steps
  stall_ms        median time of the save() calls (includes waiting for the previous save)
  steps_persisting  steps that started while a save was persisting
  durable_s       median over the loop's saves of the seconds from the save() call (waiting for
                  the previous save included) until the save is durable (noted by a thread
                  waiting on it, not at the next step boundary): time to durable while training

Usage:
  .venv/bin/python bench/checkpoint_bench.py [--sizes-gib 2,8] [--rounds 5] [--dir DIR]
        [--contenders torch.save,dcp,...] [--no-train | --train-only] [--train-save-every 50]
        [--train-saves 2] [--train-granary-nice 0,10] [--train-ceiling-writer dd] [--quick]
  make bench (bench/run_all.py runs it after doctor_vs_fio; --skip checkpoint to leave it out)
  quick look: OMP_NUM_THREADS=2 .venv/bin/python bench/checkpoint_bench.py --sizes-gib 0.25
        --rounds 2

The test files go in DIR/checkpoint-bench (default DIR: build/bench) and are removed after every
run of a contender. The page cache is dropped before every cold load (needs root; otherwise a
note says cold numbers are not cold). Peak memory: about 2 x the state (the state plus one
staging copy or one loaded copy).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import importlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = "checkpoint"
TRAIN_BENCH = "checkpoint_train"
GB = 1e9
MIB = 1 << 20
GIB = 1 << 30
ALL_CONTENDERS = ["torch.save", "dcp", "dcp.async", "granary", "granary.dcp",
                  "granary.dcp.async"]
ASYNC_CONTENDERS = ["granary", "dcp.async", "granary.dcp.async"]
GRANARY_DEFAULT_NICE = 19  # granary.Checkpointer(persist_nice=...)'s default
# Issue 3 goals, as ratios to the ceiling (1.0 = as good as the ceiling); granary only.
# durable_s and restore_s have the same ratios as write_GBps and read_GBps: not repeated.
GOALS = {"stall_s": 1 / 1.2, "write_GBps": 0.9, "read_GBps": 0.9, "step_ms": 1 / 1.1}

torch = None  # imported in run() so that --help and the harness tests do not need torch


def _import_torch():
    global torch
    if torch is None:
        import torch as _torch
        torch = _torch
    return torch


# -- the state ------------------------------------------------------------------------------------

@dataclasses.dataclass
class State:
    label: str
    tensors: dict          # the state dict itself
    nbytes: int            # sum of tensor bytes (the Python values are not counted)
    ntensors: int
    d: int
    layers: int
    meta: dict             # the expected Python values (deep copy)
    samples: dict          # name -> (head, tail, strided) reference bytes for verification
    gen_s: float


def iter_tensors(obj, prefix=""):
    """(dotted name, tensor) for every tensor in nested dicts/lists/tuples."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from iter_tensors(v, f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from iter_tensors(v, f"{prefix}{i}.")
    elif torch is not None and isinstance(obj, torch.Tensor):
        yield prefix[:-1], obj


def _bytes_view(t):
    return t.reshape(-1).view(torch.uint8)


SAMPLE_EDGE = 4096
SAMPLE_STRIDED = 1024


def _sample(t):
    b = _bytes_view(t)
    n = b.numel()
    head = b[:min(SAMPLE_EDGE, n)].clone()
    tail = b[max(0, n - SAMPLE_EDGE):].clone()
    flat = t.reshape(-1)
    step = max(1, flat.numel() // SAMPLE_STRIDED)
    strided = _bytes_view(flat[::step].contiguous()).clone()
    return head, tail, strided


def scribble(state: State) -> None:
    """Overwrites the first and last 4 KiB of every tensor so that a load that does nothing is
    caught by verify()."""
    for _, t in iter_tensors(state.tensors):
        b = _bytes_view(t)
        n = b.numel()
        b[:min(SAMPLE_EDGE, n)].fill_(0xA5)
        b[max(0, n - SAMPLE_EDGE):].fill_(0x5A)


def restore_samples(state: State) -> None:
    """Puts the sampled bytes back (after a failed verification, so later contenders save the
    right bytes at least where we look)."""
    for name, t in iter_tensors(state.tensors):
        head, tail, _ = state.samples[name]
        b = _bytes_view(t)
        n = b.numel()
        b[:head.numel()].copy_(head)
        b[n - tail.numel():].copy_(tail)


def verify(state: State, loaded, what: str) -> None:
    """Raises if `loaded` (a state dict) does not match the generated state on the samples."""
    seen = 0
    for name, t in iter_tensors(loaded):
        ref = state.samples.get(name)
        if ref is None:
            raise RuntimeError(f"{what}: unexpected tensor {name} in the loaded state")
        got = _sample(t)
        for part, a, b in zip(("head", "tail", "strided sample"), got, ref):
            if not torch.equal(a, b):
                raise RuntimeError(f"{what}: tensor {name}: {part} differs from what was saved")
        seen += 1
    if seen != len(state.samples):
        raise RuntimeError(f"{what}: {seen} tensors loaded, {len(state.samples)} saved")
    meta = loaded.get("meta") if isinstance(loaded, dict) else None
    if meta != state.meta:
        raise RuntimeError(f"{what}: Python values differ: {meta!r} != {state.meta!r}")


def _dims(target: int) -> int:
    if target >= 6 * GIB:
        return 4096
    if target >= 3 * GIB:
        return 2048
    if target >= 384 * MIB:
        return 1024
    if target >= 64 * MIB:
        return 512
    return 256  # tests


def make_state(target_bytes: int, label: str, log) -> State:
    """An LLM-like model + Adam state of about target_bytes (exactly reported)."""
    t0 = time.monotonic()
    d = _dims(target_bytes)
    f = int(math.ceil(8 * d / 3 / 256) * 256)
    vocab = 8 * d
    fp32, bf16 = torch.float32, torch.bfloat16
    # (name, shape, dtype); the optimizer keeps fp32 exp_avg and exp_avg_sq for every parameter.
    layer = [("attn.q_proj.weight", (d, d), fp32), ("attn.k_proj.weight", (d, d), fp32),
             ("attn.v_proj.weight", (d, d), fp32), ("attn.o_proj.weight", (d, d), fp32),
             ("attn.q_proj.bias", (d,), bf16), ("attn.k_proj.bias", (d,), bf16),
             ("attn.v_proj.bias", (d,), bf16),
             ("mlp.gate_proj.weight", (f, d), bf16), ("mlp.up_proj.weight", (f, d), bf16),
             ("mlp.down_proj.weight", (d, f), bf16),
             ("input_layernorm.weight", (d,), fp32),
             ("post_attention_layernorm.weight", (d,), fp32)]

    def nbytes(shape, dtype):
        return math.prod(shape) * (4 if dtype == fp32 else 2)

    def with_optim(shape, dtype):
        return nbytes(shape, dtype) + 2 * nbytes(shape, fp32) + 4  # + exp_avg(_sq) + step

    per_layer = sum(with_optim(s, t) for _, s, t in layer)
    fixed = with_optim((vocab, d), bf16) + with_optim((d,), fp32)  # embedding, final norm
    layers = max(1, (target_bytes - fixed) // per_layer)
    params = [("model.embed_tokens.weight", (vocab, d), bf16)]
    for i in range(layers):
        params += [(f"model.layers.{i}.{n}", s, t) for n, s, t in layer]
    params.append(("model.norm.weight", (d,), fp32))
    rest = target_bytes - fixed - layers * per_layer
    rows = max(1, rest // (d * 12 + 4))  # lm_head [rows, d] fp32 fills what is left
    params.append(("lm_head.weight", (rows, d), fp32))

    gen = torch.Generator().manual_seed(1234)
    model, optim_state = {}, {}
    for name, shape, dtype in params:
        p = torch.empty(shape, dtype=dtype)
        p.normal_(0.0, 0.02, generator=gen)
        model[name] = p
        m = torch.empty(shape, dtype=fp32).normal_(0.0, 1e-3, generator=gen)
        v = torch.empty(shape, dtype=fp32).uniform_(0.0, 1e-6, generator=gen)
        optim_state[name] = {"step": torch.tensor(1000.0), "exp_avg": m, "exp_avg_sq": v}
    meta = {"step": 1000, "epoch": 3, "lr": 3.0e-4, "name": f"llm-like-{label}",
            "tokens_seen": 1000 * 4 * 2048 * 512, "done": False, "loss_scale": None,
            "config": {"d_model": d, "d_ff": f, "layers": layers, "vocab": vocab}}
    optim = {"state": optim_state,
             "param_groups": [{"lr": 3.0e-4, "betas": [0.9, 0.95], "eps": 1e-8,
                               "weight_decay": 0.1, "amsgrad": False,
                               "params": [n for n, _, _ in params]}]}
    tensors = {"model": model, "optim": optim, "meta": dict(meta, config=dict(meta["config"]))}
    total = 0
    samples = {}
    count = 0
    for name, t in iter_tensors(tensors):
        total += t.numel() * t.element_size()
        samples[name] = _sample(t)
        count += 1
    gen_s = time.monotonic() - t0
    print(f"[{BENCH}] {label}: state of {total:,} bytes ({total / GIB:.3f} GiB) in {count} "
          f"tensors: d={d}, d_ff={f}, {layers} layers, lm_head {rows}x{d}; generated in "
          f"{gen_s:.1f}s", file=log, flush=True)
    return State(label, tensors, total, count, d, layers, meta, samples, gen_s)


# -- measuring helpers ----------------------------------------------------------------------------

def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssPeak:
    """Samples VmRSS every `interval` seconds in a thread; .extra = peak - value at start."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.start)


_libc = None


def release_memory() -> None:
    """gc + malloc_trim, so that the next contender's RSS baseline does not include our garbage."""
    global _libc
    gc.collect()
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under path (st_blocks * 512, like du)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def file_url(path: Path) -> str:
    return "file://" + str(path.resolve())


SkipContender = harness.SkipContender


def granary_checkpointer_cls():
    try:
        granary = importlib.import_module("granary")
    except ImportError as e:
        raise SkipContender(f"cannot import granary ({e})")
    cls = getattr(granary, "Checkpointer", None)
    if cls is None:
        raise SkipContender(f"granary.Checkpointer is missing in {granary.__file__}")
    return cls


def granary_dcp_module():
    try:
        mod = importlib.import_module("granary.dcp")
    except ImportError as e:
        raise SkipContender(f"granary.dcp is missing ({e})")
    for name in ("Writer", "Reader"):
        if not hasattr(mod, name):
            raise SkipContender(f"granary.dcp.{name} is missing")
    return mod


def new_granary_dcp_stager():
    """A granary.dcp.Stager (one per job, as users keep it), or None before it existed."""
    cls = getattr(granary_dcp_module(), "Stager", None)
    return None if cls is None else cls()


def _dcp():
    import torch.distributed.checkpoint as dcp
    return dcp


class Pending:
    """A save in flight: granary's handle or a dcp future, behind one interface."""

    def __init__(self, obj):
        # dcp.async_save returns a Future, or an AsyncSaveResponse with upload_completion.
        self.obj = getattr(obj, "upload_completion", obj)

    def done(self) -> bool:
        return bool(self.obj.done())

    def wait(self) -> None:
        if hasattr(self.obj, "result"):
            self.obj.result()
        else:
            self.obj.wait()
            exc = self.obj.exception() if hasattr(self.obj, "exception") else None
            if exc is not None:
                raise exc


# -- contenders -----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, state: State, granary_bin: str, log):
        self.args = args
        self.state = state
        self.granary_bin = granary_bin
        self.log = log
        self.root = Path(args.dir).resolve() / "checkpoint-bench"
        self.root.mkdir(parents=True, exist_ok=True)
        self.doctor_mib = args.doctor_size_mib or max(4, int(math.ceil(state.nbytes / MIB / 4)) * 4)
        self.cold_ok = True
        self.failed: dict[str, str] = {}

    def drop(self) -> None:
        if not harness.drop_page_cache(self.log):
            self.cold_ok = False

    def path(self, name: str) -> Path:
        p = self.root / name.replace(".", "-")
        remove(p)
        return p

    def after(self, path: Path) -> None:
        remove(path)
        release_memory()

    def save_samples(self, stall: float, durable: float, peak: RssPeak, path: Path) -> dict:
        n = self.state.nbytes
        return {
            "stall_s": harness.Sample(stall, "s", False),
            "durable_s": harness.Sample(durable, "s", False),
            "write_GBps": harness.Sample(n / durable / GB, "GB/s"),
            "peak_rss_MiB": harness.Sample(peak.extra / MIB, "MiB", False),
            "disk_GB": harness.Sample(disk_bytes(path) / GB, "GB", False),
        }

    def load_samples(self, seconds: float) -> dict:
        return {"restore_s": harness.Sample(seconds, "s", False),
                "read_GBps": harness.Sample(self.state.nbytes / seconds / GB, "GB/s")}

    def load_in_place(self, what: str, load: Callable[[], Any]) -> float:
        """scribble, drop the cache, time load() (which fills state.tensors), verify."""
        scribble(self.state)
        self.drop()
        t0 = time.perf_counter()
        load()
        seconds = time.perf_counter() - t0
        try:
            verify(self.state, self.state.tensors, what)
        except Exception:
            restore_samples(self.state)
            raise
        return seconds

    # ceiling
    def run_ceiling(self) -> dict:
        out = {}
        n = self.state.nbytes
        buf = torch.empty(n, dtype=torch.uint8)
        buf.fill_(0)  # warm: every page faulted in before the timed copy
        # Per-tensor copies: with several OpenMP threads each copy_ pays a thread wake-up
        # (milliseconds on a busy 2-core machine), with one it is plain memcpy; the ceiling is
        # the faster of the two.
        threads = torch.get_num_threads()
        memcpy_s = math.inf
        try:
            for nthreads in sorted({1, threads}):
                torch.set_num_threads(nthreads)
                t0 = time.perf_counter()
                off = 0
                for _, t in iter_tensors(self.state.tensors):
                    b = _bytes_view(t)
                    buf[off:off + b.numel()].copy_(b)
                    off += b.numel()
                memcpy_s = min(memcpy_s, time.perf_counter() - t0)
        finally:
            torch.set_num_threads(threads)
        del buf
        release_memory()
        doc = harness.run_command(
            [self.granary_bin, "doctor", str(self.root), "--json", "--size-mib",
             str(self.doctor_mib), "--only", "seqwrite,seqread"], "granary doctor")
        import json
        points = [json.loads(l) for l in doc.splitlines() if l.startswith("{")]
        write = max(p["value"] for p in points if p["point"].startswith("seqwrite")) * MIB / GB
        read = max(p["value"] for p in points if p["point"].startswith("seqread")) * MIB / GB
        out["stall_s"] = harness.Sample(memcpy_s, "s", False)
        out["durable_s"] = harness.Sample(n / (write * GB), "s", False)
        out["write_GBps"] = harness.Sample(write, "GB/s")
        out["restore_s"] = harness.Sample(n / (read * GB), "s", False)
        out["read_GBps"] = harness.Sample(read, "GB/s")
        out["memcpy_GBps"] = harness.Sample(n / memcpy_s / GB, "GB/s")
        return out

    def describe_ceiling(self, point: str) -> str:
        return (f"memcpy of the state into a warm buffer (stall); granary doctor {self.root} "
                f"--json --size-mib {self.doctor_mib} --only seqwrite,seqread (best of 1m QD32 "
                f"and 4m QD16, O_DIRECT)")

    # torch.save / torch.load
    def run_torch_save(self) -> dict:
        path = self.path("torch.save.pt")
        try:
            with RssPeak() as peak:
                t0 = time.perf_counter()
                with open(path, "wb") as f:
                    torch.save(self.state.tensors, f)
                    f.flush()
                    os.fsync(f.fileno())
                fsync_path(path.parent)
                durable = time.perf_counter() - t0
            out = self.save_samples(durable, durable, peak, path)
            self.drop()
            t0 = time.perf_counter()
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            cold = time.perf_counter() - t0
            verify(self.state, loaded, "torch.load")
            del loaded
            release_memory()
            t0 = time.perf_counter()
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            warm = time.perf_counter() - t0
            del loaded
            out.update(self.load_samples(cold))
            out["read_warm_GBps"] = harness.Sample(self.state.nbytes / warm / GB, "GB/s")
            return out
        finally:
            self.after(path)

    # torch.distributed.checkpoint, with either writer
    def _dcp_run(self, name: str, writer_fn, reader_fn, asynchronous: bool, load: bool,
                 stager_fn=None) -> dict:
        dcp = _dcp()
        path = self.path(name)
        first_path = self.path(name + "-first")
        kwargs, first, stager = {}, None, None
        try:
            with RssPeak() as peak:
                stager = None if stager_fn is None else stager_fn()
                if stager is not None:
                    # One stager per job, as users keep it (like granary's staging pool): its
                    # first save allocates the staging buffers (first_stall_s), later saves
                    # reuse them. RSS is watched from before, so the buffers count.
                    kwargs["async_stager"] = stager
                    t0 = time.perf_counter()
                    pending = Pending(dcp.async_save(self.state.tensors,
                                                     storage_writer=writer_fn(first_path),
                                                     **kwargs))
                    first = time.perf_counter() - t0
                    pending.wait()
                    del pending
                    remove(first_path)
                t0 = time.perf_counter()
                if asynchronous:
                    pending = Pending(dcp.async_save(self.state.tensors,
                                                     storage_writer=writer_fn(path), **kwargs))
                    stall = time.perf_counter() - t0
                    pending.wait()
                else:
                    dcp.save(self.state.tensors, storage_writer=writer_fn(path))
                    stall = time.perf_counter() - t0
                durable = time.perf_counter() - t0
            out = self.save_samples(stall, durable, peak, path)
            if first is not None:
                out["first_stall_s"] = harness.Sample(first, "s", False)
            if asynchronous:
                del pending
            release_memory()
            if load:
                seconds = self.load_in_place(
                    name, lambda: dcp.load(self.state.tensors, storage_reader=reader_fn(path)))
                out.update(self.load_samples(seconds))
            return out
        finally:
            if stager is not None:
                stager.close()
            del stager, kwargs
            remove(first_path)
            self.after(path)

    def run_dcp(self) -> dict:
        dcp = _dcp()
        return self._dcp_run("dcp", dcp.FileSystemWriter, dcp.FileSystemReader, False, True)

    def run_dcp_async(self) -> dict:
        dcp = _dcp()
        return self._dcp_run("dcp.async", dcp.FileSystemWriter, dcp.FileSystemReader, True,
                             False)

    def run_granary_dcp(self) -> dict:
        g = granary_dcp_module()
        return self._dcp_run("granary.dcp", lambda p: g.Writer(file_url(p)),
                             lambda p: g.Reader(file_url(p)), False, True)

    def run_granary_dcp_async(self) -> dict:
        g = granary_dcp_module()
        return self._dcp_run("granary.dcp.async", lambda p: g.Writer(file_url(p)),
                             lambda p: g.Reader(file_url(p)), True, False,
                             new_granary_dcp_stager)

    # granary.Checkpointer
    def checkpointer(self, path: Path, persist_nice: int | None = None):
        cls = granary_checkpointer_cls()
        budget = self.args.granary_budget_mib
        kwargs = {"budget_bytes": budget * MIB} if budget else {}
        if persist_nice is not None:
            kwargs["persist_nice"] = persist_nice
        return cls(file_url(path), keep_last=2, incremental=False, **kwargs)

    def run_granary(self) -> dict:
        path = self.path("granary")
        ckpt = None
        try:
            # The staging pool is allocated and pre-faulted by the first save and reused by the
            # next ones: the first save of a job pays for it once (first_stall_s), every later
            # save is what the stall goal is about. RSS is watched from before the Checkpointer
            # exists, so the pool counts; disk is step 1's bytes (keep_last=2 keeps step 0).
            with RssPeak() as peak:
                ckpt = self.checkpointer(path)
                t0 = time.perf_counter()
                h = ckpt.save(0, self.state.tensors)
                first = time.perf_counter() - t0
                Pending(h).wait()
                del h
                before = disk_bytes(path)
                t0 = time.perf_counter()
                h = ckpt.save(1, self.state.tensors)
                stall = time.perf_counter() - t0
                Pending(h).wait()
                durable = time.perf_counter() - t0
            out = self.save_samples(stall, durable, peak, path)
            out["disk_GB"] = harness.Sample((disk_bytes(path) - before) / GB, "GB", False)
            out["first_stall_s"] = harness.Sample(first, "s", False)
            del h
            release_memory()
            seconds = self.load_in_place("granary", lambda: ckpt.load(1, into=self.state.tensors))
            out.update(self.load_samples(seconds))
            return out
        finally:
            close = getattr(ckpt, "close", None)
            if close is not None:
                close()
            del ckpt
            self.after(path)

    def runners(self) -> dict[str, Callable[[], dict]]:
        return {"torch.save": self.run_torch_save, "dcp": self.run_dcp,
                "dcp.async": self.run_dcp_async, "granary": self.run_granary,
                "granary.dcp": self.run_granary_dcp,
                "granary.dcp.async": self.run_granary_dcp_async}

    def describe(self, name: str) -> str:
        return {
            "torch.save": "torch.save(state, f); f.flush(); os.fsync; fsync(dir); "
                          "torch.load(weights_only=True) cold and warm",
            "dcp": "dcp.save(state, storage_writer=FileSystemWriter(dir)); dcp.load(state, "
                   "storage_reader=FileSystemReader(dir)) cold",
            "dcp.async": "dcp.async_save(state, storage_writer=FileSystemWriter(dir)).result()",
            "granary": "granary.Checkpointer(url, keep_last=2, incremental=False): "
                       "save(step, state).wait(); load(step, into=state) cold",
            "granary.dcp": "dcp.save/dcp.load with granary.dcp.Writer(url)/Reader(url), cold load",
            "granary.dcp.async": "dcp.async_save(state, storage_writer=granary.dcp.Writer(url), "
                                 "async_stager=stager) with one granary.dcp.Stager per job",
        }[name]

    def guarded(self, name: str, fn: Callable[[], dict]) -> Callable[[str], dict]:
        """fn as a contender (harness.run_guarded: a failure drops it for the run)."""
        return lambda point: harness.run_guarded(name, fn, self.failed, self.log, BENCH,
                                                 after=release_memory)


def probe(name: str) -> str | None:
    """Why the contender cannot run at all, or None."""
    try:
        if name.startswith("granary.dcp"):
            granary_dcp_module()
        elif name == "granary":
            granary_checkpointer_cls()
    except SkipContender as e:
        return str(e)
    return None


# -- training loop --------------------------------------------------------------------------------

class Trainer:
    def __init__(self, args):
        n = args.train_matmul_n
        g = torch.Generator().manual_seed(7)
        self.a = torch.randn(n, n, generator=g)
        self.b = torch.randn(n, n, generator=g) / n
        self.c = torch.empty(n, n)
        self.matmuls = args.train_matmuls
        self.every = args.train_save_every
        self.saves = args.train_saves
        self.steps = self.every * (self.saves + 1)
        for _ in range(3):
            self.step()

    def step(self) -> None:
        for _ in range(self.matmuls):
            torch.mm(self.a, self.b, out=self.c)

    def loop(self, save: Callable[[int], Pending] | None) -> dict:
        idle, persisting, stalls = [], [], []
        saves: list[Watched] = []
        pending: Watched | None = None
        total = 0.0
        for s in range(1, self.steps + 1):
            in_flight = False
            if pending is not None:
                if pending.done():
                    pending.wait()  # raises if the save failed
                    pending = None
                else:
                    in_flight = True
            t0 = time.perf_counter()
            self.step()
            dt = time.perf_counter() - t0
            total += dt
            (persisting if in_flight else idle).append(dt)
            if save is not None and s % self.every == 0 and s <= self.every * self.saves:
                t0 = time.perf_counter()
                if pending is not None:
                    pending.wait()
                    pending = None  # drop the finished save (and anything it holds) first
                # Durable is timed from here, the caller's save request (waiting for the
                # previous save included, as if_busy="wait" does).
                pending = Watched(save(s), t0)
                saves.append(pending)
                dt = time.perf_counter() - t0
                stalls.append(dt)
                total += dt
        if pending is not None:
            pending.wait()
        out = {"mean_step_ms": harness.Sample(total / self.steps * 1e3, "ms", False)}
        if save is None:
            out["step_ms"] = harness.Sample(statistics.median(idle) * 1e3, "ms", False)
        else:
            if persisting:
                busy = statistics.median(persisting)
                out["step_ms"] = harness.Sample(busy * 1e3, "ms", False)
                if idle:
                    # Against the steps of the same loop with no save in flight: immune to
                    # load on the machine that changes between loops.
                    quiet = statistics.median(idle)
                    out["idle_step_ms"] = harness.Sample(quiet * 1e3, "ms", False)
                    out["slowdown_vs_idle_pct"] = harness.Sample((busy / quiet - 1) * 100, "%",
                                                                 False)
            out["stall_ms"] = harness.Sample(statistics.median(stalls) * 1e3, "ms", False)
            out["steps_persisting"] = harness.Sample(len(persisting), "steps")
            out["durable_s"] = harness.Sample(statistics.median(w.durable_s for w in saves), "s",
                                              False)
        return out


class Watched:
    """A save in flight (a Pending) and a thread that notes when it became durable, so that
    durable_s is exact rather than rounded up to the next step boundary."""

    def __init__(self, pending: Pending, t0: float):
        self.pending = pending
        self.t0 = t0
        self.durable_s = math.nan
        self.error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        try:
            self.pending.wait()
        except BaseException as e:  # noqa: BLE001 - re-raised by wait() in the loop
            self.error = e
        self.durable_s = time.perf_counter() - self.t0
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        self._done.wait()
        if self.error is not None:
            raise self.error


class WriteProcess:
    """A ceiling "save": a subprocess (fio or dd) writing the state's byte count with O_DIRECT;
    wait() raises if it failed."""

    def __init__(self, cmd: list[str]):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self) -> None:
        _, err = self.proc.communicate()
        if self.proc.returncode != 0:
            tail = (err or "").strip().splitlines()
            raise RuntimeError(f"{self.cmd[0]} failed (exit {self.proc.returncode}): "
                               f"{tail[-1] if tail else '(no output)'}\ncommand: "
                               f"{' '.join(self.cmd)}")


ODIRECT_CEILING = "ceiling: O_DIRECT write"
ODIRECT_BS = 16 * MIB


def odirect_write_cmd(tool: str, path: Path, nbytes: int) -> list[str]:
    """The ceiling's writer: nbytes (fio: rounded up to 16 MiB, fio writes whole blocks) of
    zeros in sequential 16 MiB O_DIRECT writes, then fsync."""
    if tool == "fio":
        size = -(-nbytes // ODIRECT_BS) * ODIRECT_BS
        return ["fio", "--name=w", f"--filename={path}", "--rw=write", "--bs=16M", "--direct=1",
                "--ioengine=io_uring", "--iodepth=8", f"--size={size}", "--zero_buffers",
                "--end_fsync=1", "--output-format=terse"]
    # GNU dd: count in bytes, the last short block written without O_DIRECT; conv=fsync.
    return ["dd", "if=/dev/zero", f"of={path}", "bs=16M", f"count={nbytes}", "iflag=count_bytes",
            "oflag=direct", "conv=fsync", "status=none"]


def train_contenders(bench: Bench, trainer: Trainer, names: list[str]) -> list[harness.Contender]:
    """no-save (the harness's ceiling), the O_DIRECT write ceiling, then the async contenders
    in `names` (granary also at each of --train-granary-nice): all in one harness run, so
    their loops rotate between rounds like every other contender's runs."""
    state = bench.state.tensors
    dcp = _dcp()
    args = bench.args

    def run_none(point: str) -> dict:
        return trainer.loop(None)

    tool = args.train_ceiling_writer

    def run_odirect() -> dict:
        path = bench.path("odirect-train")
        path.mkdir(parents=True)
        try:
            return trainer.loop(lambda step: Pending(WriteProcess(
                odirect_write_cmd(tool, path / f"{step}.bin", bench.state.nbytes))))
        finally:
            bench.after(path)

    def make_dcp(name, writer_fn, stager_fn=None):
        def run() -> dict:
            path = bench.path(name + "-train")
            stager = None if stager_fn is None else stager_fn()
            kwargs = {} if stager is None else {"async_stager": stager}
            try:
                def save(step):
                    writer = writer_fn(path / str(step))
                    return Pending(dcp.async_save(state, storage_writer=writer, **kwargs))
                if stager is not None:
                    save("first").wait()  # the staging buffers, as in run_granary
                return trainer.loop(save)
            finally:
                if stager is not None:
                    stager.close()
                del stager, kwargs
                bench.after(path)
        return run

    def make_granary(name, nice=None):
        def run() -> dict:
            path = bench.path(name.replace(" ", "-").replace("=", "") + "-train")
            ckpt = bench.checkpointer(path, persist_nice=nice)
            try:
                Pending(ckpt.save(0, state)).wait()  # the staging pool, as in run_granary
                return trainer.loop(lambda step: Pending(ckpt.save(step, state)))
            finally:
                close = getattr(ckpt, "close", None)
                if close is not None:
                    close()
                del ckpt
                bench.after(path)
        return run

    fns: dict[str, tuple[Callable[[], dict], str]] = {}
    if "granary" in names:
        nices = [int(n) for n in str(args.train_granary_nice).split(",") if n.strip()]
        for nice in sorted(set(nices + [None]), key=lambda n: GRANARY_DEFAULT_NICE
                           if n is None else n):
            name = "granary" if nice is None else f"granary nice={nice}"
            what = "default persist_nice" if nice is None else f"persist_nice={nice}"
            fns[name] = (make_granary(name, nice),
                         f"granary.Checkpointer(url, keep_last=2, incremental=False, {what}): "
                         f"save(step, state)")
    if "dcp.async" in names:
        fns["dcp.async"] = (make_dcp("dcp.async", dcp.FileSystemWriter),
                            "dcp.async_save(state, storage_writer=FileSystemWriter(dir))")
    if "granary.dcp.async" in names:
        fns["granary.dcp.async"] = (make_dcp(
            "granary.dcp.async", lambda p: granary_dcp_module().Writer(file_url(p)),
            new_granary_dcp_stager), "dcp.async_save(state, storage_writer=granary.dcp."
                                     "Writer(url), async_stager=granary.dcp.Stager())")
    out = [harness.Contender("no-save", run_none,
                             describe=lambda p: f"{trainer.steps} steps of {trainer.matmuls} "
                                                f"x mm {trainer.a.shape[0]}^2 fp32, no saves")]
    if args.train_ceiling_writer != "none":
        cmd = " ".join(odirect_write_cmd(tool, bench.root / "odirect-train" / "STEP.bin",
                                         bench.state.nbytes))
        out.append(harness.Contender(
            ODIRECT_CEILING, bench.guarded(ODIRECT_CEILING + " (train)", run_odirect),
            describe=lambda p: f"every {trainer.every} steps: {cmd}"))
    for name, (fn, what) in fns.items():
        out.append(harness.Contender(
            name, bench.guarded(name + " (train)", fn),
            describe=lambda p, what=what: f"{what} every {trainer.every} steps"))
    return out


# -- driver ---------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """Options of this benchmark. With standalone=False the options shared with the other
    benchmarks of run_all.py (--rounds, --dir, --granary, --quick) are left to the caller."""
    if standalone:
        parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS,
                            help="rounds (default 5)")
        parser.add_argument("--dir", default=str(REPO / "build" / "bench"),
                            help="directory for the checkpoints (default: build/bench)")
        parser.add_argument("--granary", default=None, help="path of the granary binary")
        parser.add_argument("--quick", action="store_true",
                            help="a 0.25 GiB state and a short training loop")
    parser.add_argument("--sizes-gib", default=None,
                        help="state sizes in GiB, comma-separated (default 2,8; 0.25 with --quick)")
    parser.add_argument("--contenders", default=",".join(ALL_CONTENDERS),
                        help=f"comma-separated subset of {','.join(ALL_CONTENDERS)}")
    parser.add_argument("--doctor-size-mib", type=int, default=None,
                        help="granary doctor's test file (default: the state size)")
    parser.add_argument("--granary-budget-mib", type=int, default=None,
                        help="granary.Checkpointer(budget_bytes=...) (default: none)")
    parser.add_argument("--no-train", dest="train", action="store_false",
                        help="leave out the training loop")
    parser.add_argument("--train-only", action="store_true", help="only the training loop")
    parser.add_argument("--train-save-every", type=int, default=None,
                        help="steps between saves in the training loop (default 50; 10 quick)")
    parser.add_argument("--train-saves", type=int, default=2, help="saves per loop (default 2)")
    parser.add_argument("--train-matmuls", type=int, default=2,
                        help="matmuls per training step (default 2)")
    parser.add_argument("--train-matmul-n", type=int, default=2048,
                        help="matrix size of the training matmuls (default 2048)")
    parser.add_argument("--train-granary-nice", default="0,10",
                        help="granary's persist_nice values to run in the training loop besides "
                             "the default, comma-separated (default 0,19; '' for none)")
    parser.add_argument("--train-ceiling-writer", choices=["dd", "fio", "none"], default="dd",
                        help="the O_DIRECT write ceiling of the training loop: dd (QD 1, the "
                             "default) or fio (io_uring QD 8; its start-up, about 0.5 s and "
                             "0.1 s of CPU, counts in its durable_s); none: leave it out")


def run(args: argparse.Namespace, out=sys.stdout, log=sys.stderr) -> list[dict]:
    """Runs the benchmark; prints JSON lines to `out` and returns the results."""
    _import_torch()
    # dcp.save/load without a process group say so on every call; that is the intent here.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or "
                            "uninitialized")
    import doctor_vs_fio
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or min(2, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    if args.sizes_gib is None:
        args.sizes_gib = "0.25" if args.quick else "2,8"
    if args.train_save_every is None:
        args.train_save_every = 10 if args.quick else 50
    sizes = [float(s) for s in str(args.sizes_gib).split(",") if s]
    names = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in names if c not in ALL_CONTENDERS]
    if unknown:
        raise SystemExit(f"{BENCH}: unknown contenders {unknown}; known: {ALL_CONTENDERS}")
    skipped = {}
    for c in names:
        why = probe(c)
        if why:
            skipped[c] = why
            print(f"[{BENCH}] skipping {c}: {why}", file=log, flush=True)
    names = [c for c in names if c not in skipped]
    granary_bin = doctor_vs_fio.find_granary(args.granary)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    print(f"[{BENCH}] sizes {sizes} GiB, {args.rounds} rounds, contenders {names}, torch "
          f"{torch.__version__} on {threads} threads, dir {Path(args.dir).resolve()}",
          file=log, flush=True)
    results: list[dict] = []
    for gib in sizes:
        label = f"{gib:g}GiB"
        state = make_state(int(gib * GIB), label, log)
        bench = Bench(args, state, granary_bin, log)
        contenders = trainer = None
        try:
            if not args.train_only:
                runners = bench.runners()
                contenders = [harness.Contender("ceiling", bench.guarded("ceiling",
                                                                         bench.run_ceiling),
                                                describe=bench.describe_ceiling)]
                contenders += [harness.Contender(n, bench.guarded(n, runners[n]),
                                                 describe=lambda p, n=n: bench.describe(n))
                               for n in names]
                got = harness.Harness(BENCH, args.rounds, out=_Null(), log=log).run(
                    [label], contenders, ceiling="ceiling")
                results += finish(got, state, bench, out)
            if args.train:
                trainer = Trainer(args)
                contenders = train_contenders(bench, trainer, [n for n in names
                                                               if n in ASYNC_CONTENDERS])
                got = harness.Harness(TRAIN_BENCH, args.rounds, out=_Null(), log=log).run(
                    [label], contenders, ceiling="no-save")
                results += finish(got, state, bench, out)
        finally:
            remove(bench.root)
            contenders = trainer = None  # they hold the state
            del bench, state
            release_memory()
    for name, why in skipped.items():
        print(f"[{BENCH}] skipped {name}: {why}", file=log, flush=True)
    return results


class _Null:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def finish(results: list[dict], state: State, bench: Bench, out) -> list[dict]:
    """Adds the state's size, goals and slowdown to the harness's results, then prints them."""
    for r in results:
        metric = r["what"].split(" ", 1)[1]
        r["state_bytes"] = state.nbytes
        r["state_tensors"] = state.ntensors
        if r["contender"] != "ceiling" and r["bench"] == BENCH and metric.startswith(
                ("restore_s", "read_GBps")):
            r["cold"] = bench.cold_ok
        if r["contender"] == "granary" and metric == "peak_rss_MiB" and \
                bench.args.granary_budget_mib:
            r["budget_MiB"] = bench.args.granary_budget_mib
        if r["contender"].startswith("granary") and metric in GOALS and not r["is_ceiling"]:
            r["goal_ratio"] = round(GOALS[metric], 3)
        if metric == "step_ms" and r.get("ceiling") and not r["is_ceiling"]:
            r["slowdown_pct"] = round((r["value"] / r["ceiling"] - 1) * 100, 1)
        if r["is_ceiling"] and r["bench"] == BENCH:
            r["ceiling_what"] = bench.describe_ceiling("")
        harness.emit(r, out)
    return results


# -- tables ---------------------------------------------------------------------------------------

def _num(v):
    if v is None:
        return ""
    return f"{v:.3g}" if abs(v) < 10 else harness._fmt(v)


def _ratio_cell(r: dict | None) -> str:
    """"ratio (paired ratio)", bold when a granary result is below its goal."""
    if r is None or r.get("ratio") is None or r.get("is_ceiling"):
        return ""
    q, p = r["ratio"], r.get("paired_ratio")
    cell = f"{q:.2f}" + (f" ({p:.2f})" if p is not None else "")
    goal = r.get("goal_ratio")
    return f"**{cell}**" if goal is not None and (p if p is not None else q) < goal else cell


def markdown_table(results: list[dict]) -> str:
    """Two tables: saves/loads per (size, contender), and the training loop."""
    lines = []
    by: dict[tuple[str, str, str], dict[str, dict]] = {}
    order: dict[str, list[tuple[str, str]]] = {BENCH: [], TRAIN_BENCH: []}
    for r in results:
        if r["bench"] not in order:
            continue
        size, metric = r["what"].split(" ", 1)
        key = (r["bench"], size, r["contender"])
        if key not in by:
            by[key] = {}
            order[r["bench"]].append((size, r["contender"]))
        by[key][metric] = r
    if order[BENCH]:
        # (metric, header, "value" or "ratio")
        cols = [("stall_s", "stall s", "value"), ("stall_s", "memcpy / stall", "ratio"),
                ("first_stall_s", "first save's stall s", "value"),
                ("durable_s", "durable s", "value"), ("write_GBps", "write GB/s", "value"),
                ("write_GBps", "write / ceiling", "ratio"),
                ("restore_s", "cold restore s", "value"), ("read_GBps", "cold read GB/s", "value"),
                ("read_GBps", "read / ceiling", "ratio"),
                ("read_warm_GBps", "warm read GB/s", "value"),
                ("peak_rss_MiB", "peak extra RSS MiB", "value"), ("disk_GB", "on disk GB", "value")]
        lines.append("| state | contender | " + " | ".join(c for _, c, _ in cols) + " | n |")
        lines.append("|---|---|" + "---:|" * (len(cols) + 1))
        sizes = list(dict.fromkeys(size for size, _ in order[BENCH]))
        rows = [(size, c) for size in sizes for c in
                [c for s2, c in order[BENCH] if s2 == size and c != "ceiling"] + ["ceiling"]
                if (BENCH, size, c) in by]
        for size, c in rows:
            m = by[(BENCH, size, c)]
            n = max(r["median_of"] for r in m.values())
            name = "ceiling: memcpy, doctor O_DIRECT seq" if c == "ceiling" else c
            cells = [_ratio_cell(m.get(k)) if kind == "ratio" else
                     _num(m[k]["value"]) if k in m else "" for k, _, kind in cols]
            lines.append(f"| {size} | {name} | " + " | ".join(cells) + f" | {n} |")
        lines.append("")
        lines.append("Ratios: median ratio (median of the per-round ratios) to the ceiling "
                     "measured in the same run; 1.0 = as fast as the ceiling. Bold: a granary "
                     "result below issue 3's goal (stall <= 1.2 x memcpy, write and read >= 0.9).")
    if order[TRAIN_BENCH]:
        if lines:
            lines.append("")
        lines.append("| state | training loop | step ms while persisting | slowdown vs no-save | "
                     "step ms, no save in flight | slowdown vs those | mean step ms (incl. "
                     "save()) | save() ms | steps persisting | durable s while training | n |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size, c in order[TRAIN_BENCH]:
            m = by[(TRAIN_BENCH, size, c)]
            step = m.get("step_ms")
            slow = "" if not step or step.get("slowdown_pct") is None else \
                f"{step['slowdown_pct']:+.1f} %"
            n = max(r["median_of"] for r in m.values())
            idle = m.get("slowdown_vs_idle_pct")
            idle = "" if idle is None else f"{idle['value']:+.1f} %"
            def val(k):
                return _num(m[k]["value"]) if k in m else ""
            steps = f"{m['steps_persisting']['value']:g}" if "steps_persisting" in m else ""
            lines.append(f"| {size} | {c} | {val('step_ms')} | {slow} | {val('idle_step_ms')} | "
                         f"{idle} | {val('mean_step_ms')} | {val('stall_ms')} | "
                         f"{steps} | {val('durable_s')} | {n} |")
        if any(c == ODIRECT_CEILING for _, c in order[TRAIN_BENCH]):
            lines.append("")
            lines.append(f"{ODIRECT_CEILING}: the state's byte count written with sequential "
                         "16 MiB O_DIRECT writes (fio or dd, no checksums) at each save point: "
                         "the slowdown of writing at full speed next to this loop on this "
                         "machine, against which a save's slowdown is judged. Durable s: from "
                         "the save() call (waiting for the previous save included) to durable.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    results = run(args)
    print()
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
