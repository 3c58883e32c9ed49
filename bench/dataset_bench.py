#!/usr/bin/env python3
"""Dataset reading: granary's Loader and get_batch against one-file-per-sample readers, WebDataset
and the disk's random-read ceiling, with a cold page cache.

Data (generated once under --data-dir, reused while its marker files match): for each point
(--ds-points, default 16k:200000,128k:50000: 200k samples of 16 KiB and 50k of 128 KiB) the
samples are random bytes (sample i: its index as 8 bytes, then a slice of a 64 MiB random pool at
an offset derived from i) plus a label cls = i % 1000, laid out three ways:

  files/DDDD/NNNNNNNN.jpg   one file per sample, 1000 per directory (as ImageNet is usually laid
                            out; the label comes from the file list, as ImageFolder takes it from
                            the directory)
  wds/shard-NNNNNN.tar      WebDataset tar shards of --ds-wds-shard-mib (default 128) MiB with
                            members KEY.jpg and KEY.cls, written by webdataset.ShardWriter with
                            an integer mtime (plain ustar headers, as `tar cf` writes them; a
                            float mtime adds a PAX header per member, which doubles the parsing)
  granary/                  gd.Writer(dir, shard_bytes=512 MiB).add(key, {"jpg": ..., "cls": i})

Every contender touches every byte of every sample (granary._core.crc32c of the "jpg" bytes in
Python; CRC-32C in C++ for the native reader) and the sum of those CRCs is checked against the
one computed at generation, so a contender that skips or repeats a sample fails. Each run reads
one whole epoch in a fresh shuffled order (round r uses seed r for every contender).

Cold section (bench "dataset"): the page cache is dropped before every run; each round runs every
contender once per point, in an order that rotates between rounds (bench/harness.py):

  python-perfile      for i in shuffled order: open(path, "rb").read()
  cpp-perfile-tN      build/.../granary_bench_perfile --list ORDER --threads N (bench/
                      perfile_reader.cc: open/fstat/read/close per file; N from
                      --ds-perfile-threads, default 1,32)
  webdataset          webdataset.WebDataset(shards, shardshuffle=100, seed=r).shuffle(1000),
                      iterated in this process (its recommended shuffling: shards shuffled, then a
                      1000-sample buffer)
  webdataset-dl       the same .batched(256) in a torch DataLoader(batch_size=None,
                      num_workers=2) (WebDataset's usual multi-process use; each worker reads
                      its share of the shards)
  torch-dl-perfile    torch DataLoader(map-style per-file Dataset, batch_size=256, shuffle=True,
                      num_workers=2, collate_fn=list)
  granary-loader      gd.Loader(gd.Dataset(dir), batch_size=256, shuffle=True, seed=r)
  granary-loader-dl   torch DataLoader(gd.IterableDataset(dir, batch_size=256, shuffle=True,
                      seed=r), batch_size=None, num_workers=2)
  granary-get_batch   gd.Dataset(dir).get_batch(chunk) for 256-sample chunks of a shuffled order
  ceiling             granary doctor DATA/doctor --json --keep-file --only randread-16k-qd32
                      (randread-128k-qd32 for 128 KiB samples; O_DIRECT, QD 32)

Metrics per (point, contender), medians over rounds (ratio: against the ceiling of the same run):

  samples_per_s       samples / seconds of the epoch (ceiling: doctor's IOPS; goal for
                      granary-loader: ratio >= 0.7); x_python (in the JSON) = this / python-
                      perfile's, x_python_paired = median of the per-round ratios (goal for
                      granary-loader: >= 4)
  MBps                sample ("jpg") bytes per second, 1e6 bytes (ceiling: IOPS x block size)
  sample_p50_us, sample_p99_us
                      per-sample latency as the consumer sees it. One-at-a-time readers (python-
                      perfile, webdataset): the time to get that sample (open..read, or the
                      iterator's next()). C++ reader: one file's open..close on its thread. Batch
                      readers (DataLoaders, granary): the time to get the batch (next() or
                      get_batch()) divided by its size, counted for each of its samples (so p50
                      is the typical amortized cost, p99 shows stalls). The doctor ceiling
                      reports its own I/O latency at QD 32 as io_p50_us / io_p99_us instead.
  cpu_s_per_1k        CPU seconds (user + system) per 1000 samples: getrusage(RUSAGE_SELF) +
                      getrusage(RUSAGE_CHILDREN) deltas around the run (DataLoader workers are
                      joined before the end, so they count; granary's native threads are in
                      SELF); C++ reader: its own getrusage of the read phase

Warm section (bench "dataset_warm", 16 KiB point): the data is read once into the page cache,
then granary-get_batch (goal >= 300k samples/s) and python-perfile run without dropping it;
ceiling: doctor memcpy-reused bandwidth / sample size. read_samples_per_s counts only the time
inside the read calls (get_batch / open+read), samples_per_s the whole loop with the touching.

Index section (bench "dataset_index"): a dataset of --ds-index-samples (default 100M) 1-byte
samples (keys of 9 digits) written once by gd.Writer; in a fresh process gd.Dataset(dir) is
opened cold (page cache dropped) and warm: open_s, index_bytes_per_sample (ds.index_bytes / N),
disk bytes of the index and key objects per sample, RSS growth of the process by the open.

Resume section (bench "dataset_resume", 16 KiB point): a Loader consumes 10 batches and saves
state_dict(); the page cache is dropped; a new Loader over the open dataset does
load_state_dict(sd) and yields its first batch: load_state_ms, resume_ms (load_state_dict +
first batch), checked to be the batch the first loader yields next. Also warm.

Accelerator utilization (bench "dataset_au", 128 KiB point; MLPerf Storage's ResNet-50 workload
shape: 0.224 s of emulated compute per 400-sample batch of about 115 KB): N emulated accelerators
are N processes, each the consumer of its own rank's pipeline (as N data-parallel ranks on a node
are): it waits for its next batch, touches its bytes, sleeps 0.224 s. Pipelines per rank: granary-
loader: gd.Loader(ds, 400, rank=r, world_size=N); torch-dl-perfile: DataLoader over the per-file
Dataset with the rank's share of a shuffled order, 2 workers; webdataset-dl: WebDataset over the
rank's shards (shards[r::N]) .shuffle(1000).batched(400) in a DataLoader with 2 workers. The
cache is dropped before each run; all processes import first, then start together.
AU = sum of compute sleeps / time from the first batch received to the end (the first batch's
wait, pipeline start-up, is reported separately as first_batch_s). Each round raises N from 1
until the mean AU over ranks falls below 90 %; max_accelerators = the largest N at >= 90 %.
Ceiling: doctor randread-128k-qd32 IOPS / (0.9 x 400 / 0.224 samples/s per accelerator).
The 128 KiB samples stand in for ~115 KB (14 % more bytes per sample: a little harder).

Usage:
  .venv/bin/python bench/dataset_bench.py [--rounds 5] [--quick] [--data-dir DIR]
        [--ds-sections cold,warm,index,resume,au] [--ds-points 16k:200000,128k:50000]
        [--ds-contenders python-perfile,...] [--ds-perfile-threads 1,32] [--no-drop-caches]
  make bench (bench/run_all.py runs it; --skip dataset to leave it out)
  quick look: OMP_NUM_THREADS=2 .venv/bin/python bench/dataset_bench.py --quick

Disk: about 30 GB under --data-dir for the default points (each sample in three layouts) plus 5 GB
for the 100M-sample index dataset and the doctor file (--ds-doctor-size-mib, default 4096).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = "dataset"
WARM_BENCH = "dataset_warm"
INDEX_BENCH = "dataset_index"
RESUME_BENCH = "dataset_resume"
AU_BENCH = "dataset_au"
KIB = 1 << 10
MIB = 1 << 20
DEFAULT_POINTS = "16k:200000,128k:50000"
QUICK_POINTS = "16k:2000,128k:400"
ALL_SECTIONS = ["cold", "warm", "index", "resume", "au"]
CONTENDERS = ["python-perfile", "cpp-perfile", "webdataset", "webdataset-dl", "torch-dl-perfile",
              "granary-loader", "granary-loader-dl", "granary-get_batch"]
AU_CONTENDERS = ["granary-loader", "torch-dl-perfile", "webdataset-dl"]
GRANARY_CONTENDERS = {"granary-loader", "granary-loader-dl", "granary-get_batch"}
DOCTOR_BLOCKS = {4 * KIB: "4k", 16 * KIB: "16k", 128 * KIB: "128k"}
POOL_BYTES = 64 * MIB
DATA_FORMAT = 2   # bump when the generated layout changes (markers then mismatch)
# Goals of issue 4 (cold Loader vs the ceiling and vs Python per-file; warm get_batch).
GOAL_RATIO = 0.7
GOAL_X_PYTHON = 4.0
GOAL_WARM_SAMPLES_PER_S = 300_000
GOAL_OPEN_S = 1.0
GOAL_INDEX_BYTES_PER_SAMPLE = 8.0
GOAL_RESUME_MS = 10.0
AU_TARGET = 0.9


def log_print(log, msg: str) -> None:
    print(f"[{BENCH}] {msg}", file=log, flush=True)


# -- the samples ------------------------------------------------------------------------------------

_pool: bytes | None = None


def pool() -> bytes:
    global _pool
    if _pool is None:
        import numpy as np
        _pool = np.random.default_rng(20250611).bytes(POOL_BYTES + 1 * MIB)
    return _pool


def sample_bytes(i: int, size: int) -> bytes:
    """Sample i's "jpg" bytes: its index (8 bytes LE), then pseudo-random bytes."""
    p = pool()
    off = (i * 2654435761) % (POOL_BYTES - size) if size < POOL_BYTES else 0
    return i.to_bytes(8, "little") + p[off + 8:off + size]


def sample_key(i: int) -> str:
    return f"{i:08d}"


def crc32c():
    from granary import _core
    return _core.crc32c


class Point:
    """One data set: `count` samples of `size` bytes, in three layouts under `root`."""

    def __init__(self, data_dir: Path, label: str, size: int, count: int):
        self.label = label
        self.size = size
        self.count = count
        self.root = data_dir / f"{label}-{count}"
        self.files = self.root / "files"
        self.wds = self.root / "wds"
        self.granary = self.root / "granary"
        self._paths: list[str] | None = None
        self.crc_sum: int | None = None

    def path(self, i: int) -> str:
        return f"{self.files}/{i // 1000:04d}/{sample_key(i)}.jpg"

    def paths(self) -> list[str]:
        if self._paths is None:
            self._paths = [self.path(i) for i in range(self.count)]
        return self._paths

    def shards(self) -> list[str]:
        return sorted(str(p) for p in self.wds.glob("shard-*.tar"))

    def marker(self, part: str) -> Path:
        return self.root / f"{part}.done"

    def meta(self) -> dict:
        return {"format": DATA_FORMAT, "samples": self.count, "sample_bytes": self.size}

    def done(self, part: str, extra: dict | None = None) -> bool:
        try:
            got = json.loads(self.marker(part).read_text())
        except (OSError, ValueError):
            return False
        want = dict(self.meta(), **(extra or {}))
        return all(got.get(k) == v for k, v in want.items())

    def mark(self, part: str, extra: dict | None = None, **more) -> None:
        os.sync()
        self.marker(part).write_text(json.dumps(dict(self.meta(), **(extra or {}), **more)) + "\n")

    def load_crc(self) -> None:
        self.crc_sum = json.loads(self.marker("meta").read_text())["crc_sum"]

    def describe(self) -> str:
        return f"{self.count} samples of {self.size} bytes"


def parse_points(spec: str, data_dir: Path) -> list[Point]:
    out = []
    for item in spec.split(","):
        if not item.strip():
            continue
        label, count = item.split(":")
        label = label.strip().lower()
        if not label.endswith("k"):
            raise SystemExit(f"{BENCH}: point {item!r}: expected SIZEk:COUNT, e.g. 16k:200000")
        out.append(Point(data_dir, label, int(label[:-1]) * KIB, int(count)))
    return out


def generate(point: Point, parts: Iterable[str], wds_shard_mib: int, log) -> None:
    """Creates the missing layouts of a point (each marked complete by a marker file)."""
    point.root.mkdir(parents=True, exist_ok=True)
    parts = list(parts)
    if not point.done("meta"):
        t0 = time.monotonic()
        crc = crc32c()
        total = 0
        for i in range(point.count):
            total += crc(sample_bytes(i, point.size))
        point.mark("meta", crc_sum=total % (1 << 64))
        log_print(log, f"{point.label}: CRC of {point.describe()} in {time.monotonic() - t0:.1f}s")
    point.load_crc()
    if "files" in parts and not point.done("files"):
        t0 = time.monotonic()
        shutil.rmtree(point.files, ignore_errors=True)
        dirs = (point.count + 999) // 1000

        def write_dir(d: int) -> None:
            (point.files / f"{d:04d}").mkdir(parents=True, exist_ok=True)
            for i in range(d * 1000, min(point.count, (d + 1) * 1000)):
                with open(point.path(i), "wb") as f:
                    f.write(sample_bytes(i, point.size))

        with concurrent.futures.ThreadPoolExecutor(4) as pool_:
            list(pool_.map(write_dir, range(dirs)))
        point.mark("files")
        log_print(log, f"{point.label}: wrote {point.count} files in {dirs} directories in "
                       f"{time.monotonic() - t0:.1f}s")
    if "wds" in parts and not point.done("wds", {"shard_mib": wds_shard_mib}):
        import webdataset as wds
        t0 = time.monotonic()
        shutil.rmtree(point.wds, ignore_errors=True)
        point.wds.mkdir(parents=True)
        with wds.ShardWriter(str(point.wds / "shard-%06d.tar"), maxcount=1 << 40,
                             maxsize=wds_shard_mib * MIB, verbose=0, mtime=1700000000) as w:
            for i in range(point.count):
                w.write({"__key__": sample_key(i), "jpg": sample_bytes(i, point.size),
                         "cls": i % 1000})
        point.mark("wds", {"shard_mib": wds_shard_mib}, shards=len(point.shards()))
        log_print(log, f"{point.label}: wrote {len(point.shards())} WebDataset shards in "
                       f"{time.monotonic() - t0:.1f}s")
    if "granary" in parts and not point.done("granary"):
        gd = granary_data()
        t0 = time.monotonic()
        shutil.rmtree(point.granary, ignore_errors=True)
        with gd.Writer(str(point.granary), shard_bytes=512 * MIB) as w:
            for i in range(point.count):
                w.add(sample_key(i), {"jpg": sample_bytes(i, point.size), "cls": i % 1000})
        point.mark("granary")
        log_print(log, f"{point.label}: wrote the granary dataset in {time.monotonic() - t0:.1f}s")


def warm_up(paths: Iterable[Path]) -> None:
    """Reads files into the page cache (sequentially, in 8 MiB reads)."""
    buf = bytearray(8 * MIB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def files_under(d: Path) -> list[Path]:
    return [Path(r) / n for r, _, names in os.walk(d) for n in names]


# -- the granary API --------------------------------------------------------------------------------

SkipContender = harness.SkipContender


def granary_data():
    try:
        gd = importlib.import_module("granary.data")
    except ImportError as e:
        raise SkipContender(f"granary.data is missing ({e})")
    for name in ("Writer", "Dataset", "Loader"):
        if not hasattr(gd, name):
            raise SkipContender(f"granary.data.{name} is missing")
    return gd


def probe(name: str) -> str | None:
    """Why a contender cannot run at all, or None."""
    try:
        if name in GRANARY_CONTENDERS:
            gd = granary_data()
            if name == "granary-loader-dl":
                gd.IterableDataset  # noqa: B018 - raises AttributeError when missing
                importlib.import_module("torch")
        elif name in ("webdataset", "webdataset-dl"):
            importlib.import_module("webdataset")
        if name in ("torch-dl-perfile", "webdataset-dl"):
            importlib.import_module("torch")
    except SkipContender as e:
        return str(e)
    except (ImportError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def jpgs_of(batch) -> list:
    """The "jpg" values of a batch: a granary Batch (field()), a list of sample dicts, or a list
    of values."""
    if hasattr(batch, "field"):
        return batch.field("jpg")
    if batch and isinstance(batch[0], dict):
        return [s["jpg"] for s in batch]
    return list(batch)


# -- measuring --------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def percentiles_us(per_sample_s, weights=None) -> tuple[float, float]:
    import numpy as np
    a = np.asarray(per_sample_s, dtype=float)
    if weights is not None:
        a = np.repeat(a, np.asarray(weights, dtype=np.int64))
    if a.size == 0:
        return 0.0, 0.0
    p50, p99 = np.percentile(a, [50, 99])
    return float(p50) * 1e6, float(p99) * 1e6


def samples_of(n: int, nbytes: int, seconds: float, cpu_s: float, p50_us: float,
               p99_us: float) -> dict[str, harness.Sample]:
    return {
        "samples_per_s": harness.Sample(n / seconds, "samples/s"),
        "MBps": harness.Sample(nbytes / seconds / 1e6, "MB/s"),
        "sample_p50_us": harness.Sample(p50_us, "us", False),
        "sample_p99_us": harness.Sample(p99_us, "us", False),
        "cpu_s_per_1k": harness.Sample(cpu_s / n * 1000, "s", False),
    }


class Epoch:
    """Timing of one epoch: items (one sample) or batches, with the consumer's wait for each."""

    def __init__(self, point: Point):
        self.point = point
        self.crc = crc32c()
        self.crc_sum = 0
        self.n = 0
        self.nbytes = 0
        self.waits: list[float] = []
        self.sizes: list[int] = []

    def __enter__(self):
        gc.collect()
        self.cpu0 = cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        gc.collect()  # DataLoader iterators: workers are joined (and counted) by now
        self.cpu_s = cpu_seconds() - self.cpu0

    def touch(self, values, wait_s: float) -> None:
        """Every byte of `values` (CRC-32C); every sample is point.size bytes (checked by the
        CRC sum at the end)."""
        n = len(values)
        self.crc_sum += sum(map(self.crc, values))
        self.nbytes += n * self.point.size
        self.n += n
        self.waits.append(wait_s / max(1, n))
        self.sizes.append(n)

    def consume(self, iterator) -> None:
        """Takes batches from `iterator` until it ends, timing each next()."""
        it = iter(iterator)
        while True:
            t = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                break
            w = time.perf_counter() - t
            self.touch(jpgs_of(b), w)
        del it

    def result(self, what: str) -> dict[str, harness.Sample]:
        check_epoch(self.point, what, self.n, self.crc_sum % (1 << 64))
        p50, p99 = percentiles_us(self.waits, self.sizes)
        return samples_of(self.n, self.nbytes, self.seconds, self.cpu_s, p50, p99)


def check_epoch(point: Point, what: str, n: int, crc_sum: int) -> None:
    if n != point.count or crc_sum != point.crc_sum:
        raise RuntimeError(f"{what}: read {n} samples with CRC sum {crc_sum}; the epoch has "
                           f"{point.count} with CRC sum {point.crc_sum} (samples missed or "
                           f"repeated, or wrong bytes)")


def order(point: Point, seed: int):
    import numpy as np
    return np.random.default_rng(seed).permutation(point.count)


def batched(seq, size: int) -> list:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


class PerFileDataset:
    """Map-style torch Dataset: sample i = (open(path).read(), label)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with open(self.paths[i], "rb") as f:
            return f.read()


def collate_list(samples):
    return list(samples)


def collate_jpgs(samples):
    return [s["jpg"] for s in samples]


# -- the contenders ---------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, points: list[Point], log):
        self.args = args
        self.points = {p.label: p for p in points}
        self.log = log
        self.failed: dict[str, str] = {}
        self.runs: dict[tuple[str, str], int] = {}
        self.granary_bin = find_granary(args.granary)
        self.perfile_bin = None
        self.doctor_dir = Path(args.data_dir) / "doctor"
        self.cold_ok = True

    def seed(self, name: str, point: str) -> int:
        """Run r of a contender at a point uses seed r (the same order for all in a round)."""
        k = (name, point)
        self.runs[k] = self.runs.get(k, -1) + 1
        return self.runs[k]

    def guarded(self, name: str, fn: Callable[[Point, int], dict]) -> Callable[[str], dict]:
        """fn as a contender (harness.run_guarded: a failure drops it for the run)."""
        def run(label: str) -> dict:
            seed = self.seed(name, label)
            return harness.run_guarded(name, lambda: fn(self.points[label], seed), self.failed,
                                       self.log, BENCH, after=gc.collect)
        return run

    # 1. Python open().read() per file
    def run_python_perfile(self, point: Point, seed: int, read_rate: bool = False) -> dict:
        paths = point.paths()
        idx = order(point, seed).tolist()
        crc = crc32c()
        lat = [0.0] * len(idx)
        total = nbytes = 0
        clock = time.perf_counter
        with Epoch(point) as e:
            for k, i in enumerate(idx):
                t = clock()
                with open(paths[i], "rb") as f:
                    data = f.read()
                lat[k] = clock() - t
                total += crc(data)
                nbytes += len(data)
        check_epoch(point, "python-perfile", len(idx), total % (1 << 64))
        p50, p99 = percentiles_us(lat)
        out = samples_of(len(idx), nbytes, e.seconds, e.cpu_s, p50, p99)
        if read_rate:  # the time inside open+read only
            out["read_samples_per_s"] = harness.Sample(len(idx) / sum(lat), "samples/s")
        return out

    # 2. C++ per-file reader
    def find_perfile(self) -> str:
        if self.perfile_bin is None:
            self.perfile_bin = find_perfile(self.args.ds_perfile_bin)
        return self.perfile_bin

    def order_file(self, point: Point, seed: int) -> Path:
        f = point.root / f"order-{seed}.txt"
        if not f.exists():
            paths = point.paths()
            tmp = f.with_suffix(".tmp")
            tmp.write_text("".join(paths[i] + "\n" for i in order(point, seed).tolist()))
            tmp.rename(f)
        return f

    def make_cpp_perfile(self, threads: int):
        def run(point: Point, seed: int) -> dict:
            cmd = [self.find_perfile(), "--list", str(self.order_file(point, seed)),
                   "--threads", str(threads)]
            got = json.loads(harness.run_command(cmd, "granary_bench_perfile"))
            check_epoch(point, f"cpp-perfile-t{threads}", got["samples"], got["crc_sum"])
            return samples_of(got["samples"], got["bytes"], got["seconds"], got["cpu_s"],
                              got["p50_us"], got["p99_us"])
        return run

    # 3. WebDataset
    def run_webdataset(self, point: Point, seed: int) -> dict:
        import webdataset as wds
        shards = point.shards()
        with Epoch(point) as e:
            ds = wds.WebDataset(shards, shardshuffle=self.args.ds_wds_shardshuffle, seed=seed,
                                empty_check=False).shuffle(self.args.ds_wds_buffer)
            it = iter(ds)
            clock = time.perf_counter
            while True:
                t = clock()
                try:
                    s = next(it)
                except StopIteration:
                    break
                e.touch((s["jpg"],), clock() - t)
            del it, ds
        return e.result("webdataset")

    def run_webdataset_dl(self, point: Point, seed: int) -> dict:
        import webdataset as wds
        from torch.utils.data import DataLoader
        with Epoch(point) as e:
            ds = (wds.WebDataset(point.shards(), shardshuffle=self.args.ds_wds_shardshuffle,
                                 seed=seed, empty_check=False)
                  .shuffle(self.args.ds_wds_buffer)
                  .batched(self.args.ds_batch_size, collation_fn=collate_jpgs, partial=True))
            dl = DataLoader(ds, batch_size=None, num_workers=self.args.ds_workers)
            e.consume(dl)
            del dl, ds
        return e.result("webdataset-dl")

    # 4. torch DataLoader over per-file reads
    def run_torch_dl_perfile(self, point: Point, seed: int) -> dict:
        import torch
        from torch.utils.data import DataLoader
        g = torch.Generator()
        g.manual_seed(seed)
        with Epoch(point) as e:
            dl = DataLoader(PerFileDataset(point.paths()), batch_size=self.args.ds_batch_size,
                            shuffle=True, num_workers=self.args.ds_workers,
                            collate_fn=collate_list, generator=g)
            e.consume(dl)
            del dl
        return e.result("torch-dl-perfile")

    # 5. granary Loader, alone and in a torch DataLoader
    def run_granary_loader(self, point: Point, seed: int) -> dict:
        gd = granary_data()
        with Epoch(point) as e:
            ds = gd.Dataset(str(point.granary))
            ld = gd.Loader(ds, batch_size=self.args.ds_batch_size, shuffle=True, seed=seed)
            e.consume(_one_epoch(ld))
            del ld, ds
        return e.result("granary-loader")

    def run_granary_loader_dl(self, point: Point, seed: int) -> dict:
        gd = granary_data()
        from torch.utils.data import DataLoader
        with Epoch(point) as e:
            it = gd.IterableDataset(str(point.granary), batch_size=self.args.ds_batch_size,
                                    shuffle=True, seed=seed)
            dl = DataLoader(it, batch_size=None, num_workers=self.args.ds_workers)
            e.consume(dl)
            del dl, it
        return e.result("granary-loader-dl")

    # 6. get_batch in shuffled order
    def run_granary_get_batch(self, point: Point, seed: int) -> dict:
        gd = granary_data()
        chunks = batched(order(point, seed).tolist(), self.args.ds_batch_size)
        with Epoch(point) as e:
            ds = gd.Dataset(str(point.granary))
            clock = time.perf_counter
            for c in chunks:
                t = clock()
                b = ds.get_batch(c)
                e.touch(b.field("jpg"), clock() - t)
                del b
            del ds
        return e.result("granary-get_batch")

    # 7. the ceiling
    def doctor_cmd(self, points: str) -> list[str]:
        return [self.granary_bin, "doctor", str(self.doctor_dir), "--json", "--keep-file",
                "--size-mib", str(self.args.ds_doctor_size_mib), "--runtime-s",
                f"{self.args.ds_doctor_runtime_s:g}", "--only", points]

    def doctor(self, points: str) -> tuple[list[dict], float]:
        self.doctor_dir.mkdir(parents=True, exist_ok=True)
        cpu0 = cpu_seconds()
        out = harness.run_command(self.doctor_cmd(points), "granary doctor")
        cpu = cpu_seconds() - cpu0
        return [json.loads(l) for l in out.splitlines() if l.startswith("{")], cpu

    def doctor_point(self, point: Point) -> str:
        block = min(DOCTOR_BLOCKS, key=lambda b: abs(b - point.size))
        return f"randread-{DOCTOR_BLOCKS[block]}-qd32"

    def run_ceiling(self, point: Point, seed: int) -> dict:
        name = self.doctor_point(point)
        got, cpu = self.doctor(name)
        m = {r["metric"]: r for r in got if r["point"] == name}
        iops = m["iops"]["value"]
        ops = m["iops"].get("ops") or iops * m["iops"]["seconds"]
        return {
            "samples_per_s": harness.Sample(iops, "samples/s"),
            "MBps": harness.Sample(iops * m["iops"]["block_bytes"] / 1e6, "MB/s"),
            "io_p50_us": harness.Sample(m["p50_latency"]["value"], "us", False),
            "io_p99_us": harness.Sample(m["p99_latency"]["value"], "us", False),
            "cpu_s_per_1k": harness.Sample(cpu / ops * 1000, "s", False),
        }

    def describe_ceiling(self, label: str) -> str:
        cmd = self.doctor_cmd(self.doctor_point(self.points[label]))
        return " ".join(["granary"] + cmd[1:])

    def contenders(self, names: list[str]) -> list[harness.Contender]:
        a = self.args
        bs, w = a.ds_batch_size, a.ds_workers
        table: dict[str, tuple[Callable, str]] = {
            "python-perfile": (self.run_python_perfile,
                               "for i in shuffled order: open(path, 'rb').read()"),
            "webdataset": (self.run_webdataset,
                           f"webdataset.WebDataset(shards, shardshuffle="
                           f"{a.ds_wds_shardshuffle}, seed=r).shuffle({a.ds_wds_buffer})"),
            "webdataset-dl": (self.run_webdataset_dl,
                              f"DataLoader(webdataset.WebDataset(shards, shardshuffle="
                              f"{a.ds_wds_shardshuffle}, seed=r).shuffle({a.ds_wds_buffer})"
                              f".batched({bs}), batch_size=None, num_workers={w})"),
            "torch-dl-perfile": (self.run_torch_dl_perfile,
                                 f"DataLoader(per-file Dataset, batch_size={bs}, shuffle=True, "
                                 f"num_workers={w}, collate_fn=list)"),
            "granary-loader": (self.run_granary_loader,
                               f"gd.Loader(gd.Dataset(dir), batch_size={bs}, shuffle=True, "
                               f"seed=r)"),
            "granary-loader-dl": (self.run_granary_loader_dl,
                                  f"DataLoader(gd.IterableDataset(dir, batch_size={bs}, "
                                  f"shuffle=True, seed=r), batch_size=None, num_workers={w})"),
            "granary-get_batch": (self.run_granary_get_batch,
                                  f"gd.Dataset(dir).get_batch(chunk) per {bs} of a shuffled "
                                  f"order"),
        }
        out = [harness.Contender("ceiling", self.guarded("ceiling", self.run_ceiling), cold=True,
                                 describe=self.describe_ceiling)]
        for n in names:
            if n == "cpp-perfile":
                for t in a.ds_perfile_threads:
                    name = f"cpp-perfile-t{t}"
                    out.append(harness.Contender(
                        name, self.guarded(name, self.make_cpp_perfile(t)), cold=True,
                        describe=lambda p, t=t: f"granary_bench_perfile --list ORDER --threads "
                                                f"{t} (open/fstat/read/close per file)"))
                continue
            fn, what = table[n]
            out.append(harness.Contender(n, self.guarded(n, fn), cold=True,
                                         describe=lambda p, what=what: what))
        return out

    # -- warm get_batch -----------------------------------------------------------------------
    def run_warm_get_batch(self, point: Point, seed: int) -> dict:
        gd = granary_data()
        chunks = batched(order(point, seed).tolist(), self.args.ds_batch_size)
        ds = gd.Dataset(str(point.granary))
        inside = 0.0
        with Epoch(point) as e:
            clock = time.perf_counter
            for c in chunks:
                t = clock()
                b = ds.get_batch(c)
                w = clock() - t
                inside += w
                e.touch(b.field("jpg"), w)
                del b
        out = e.result("granary-get_batch (warm)")
        out["read_samples_per_s"] = harness.Sample(e.n / inside, "samples/s")
        return out

    def run_warm_python(self, point: Point, seed: int) -> dict:
        return self.run_python_perfile(point, seed, read_rate=True)

    def run_warm_ceiling(self, point: Point, seed: int) -> dict:
        got, _ = self.doctor("memcpy-reused")
        mibps = next(r["value"] for r in got if r["point"] == "memcpy-reused")
        rate = mibps * MIB / point.size
        return {"samples_per_s": harness.Sample(rate, "samples/s"),
                "MBps": harness.Sample(mibps * MIB / 1e6, "MB/s"),
                "read_samples_per_s": harness.Sample(rate, "samples/s")}


def _one_epoch(loader):
    """The loader's batches of its current epoch (a granary Loader moves to the next epoch when
    the for loop over it ends)."""
    yield from loader


def find_granary(explicit: str | None) -> str:
    import doctor_vs_fio
    return doctor_vs_fio.find_granary(explicit)


def find_perfile(explicit: str | None) -> str:
    candidates = [explicit, os.environ.get("GRANARY_BENCH_PERFILE")]
    candidates += [str(p / "bench" / "granary_bench_perfile")
                   for p in sorted((REPO / "build").glob("*"), key=_mtime, reverse=True)]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise SkipContender("granary_bench_perfile not found: cmake --build build/release --target "
                        "granary_bench_perfile (or pass --ds-perfile-bin PATH)")


def _mtime(p: Path) -> float:
    try:
        return (p / "bench" / "granary_bench_perfile").stat().st_mtime
    except OSError:
        return 0.0


# -- sections -------------------------------------------------------------------------------------

def finish(results: list[dict], out, goals: bool = True) -> list[dict]:
    """Adds x_python (against python-perfile of the same point) and the goals, then prints."""
    python = {r["what"]: r for r in results if r["contender"] == "python-perfile"}
    for r in results:
        metric = r["what"].split(" ", 1)[1]
        py = python.get(r["what"])
        if metric == "samples_per_s" and py and r["contender"] not in ("python-perfile",
                                                                      "ceiling"):
            r["x_python"] = round(r["value"] / py["value"], 3) if py["value"] else None
            if len(py["samples"]) == len(r["samples"]):
                r["x_python_paired"] = round(harness.median(
                    [a / b for a, b in zip(r["samples"], py["samples"]) if b > 0]), 3)
            if goals and r["contender"] == "granary-loader":
                r["goal_x_python"] = GOAL_X_PYTHON
        if goals and r["contender"] == "granary-loader" and metric in ("samples_per_s", "MBps"):
            r["goal_ratio"] = GOAL_RATIO
        harness.emit(r, out)
    return results


class _Null:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def run_cold(bench: Bench, names: list[str], out, log) -> list[dict]:
    contenders = bench.contenders(names)
    got = harness.Harness(BENCH, bench.args.rounds, out=_Null(), log=log,
                          drop_caches=drop_caches_fn(bench)).run(
        list(bench.points), contenders, ceiling="ceiling")
    for r in got:
        if "cold" in r:
            r["cold"] = r["cold"] and bench.cold_ok
    return finish(got, out)


def drop_caches_fn(bench: Bench):
    def drop() -> bool:
        if bench.args.no_drop_caches:
            bench.cold_ok = False
            return False
        ok = harness.drop_page_cache(bench.log)
        if not ok:
            bench.cold_ok = False
        return ok
    return drop


def run_warm(bench: Bench, point: Point, names: list[str], out, log) -> list[dict]:
    log_print(log, f"warm: reading {point.label} into the page cache")
    warm_up(files_under(point.granary))
    if "python-perfile" in names:
        warm_up(Path(p) for p in point.paths())
    contenders = [harness.Contender("ceiling", bench.guarded("ceiling (warm)",
                                                             bench.run_warm_ceiling),
                                    describe=lambda p: "granary doctor --only memcpy-reused: "
                                                       "MiB/s / sample bytes")]
    if "granary-get_batch" in names:
        contenders.append(harness.Contender(
            "granary-get_batch", bench.guarded("granary-get_batch (warm)",
                                               bench.run_warm_get_batch),
            describe=lambda p: f"gd.Dataset(dir).get_batch(chunk) per {bench.args.ds_batch_size}"
                               f" of a shuffled order, data in the page cache"))
    if "python-perfile" in names:
        contenders.append(harness.Contender(
            "python-perfile", bench.guarded("python-perfile (warm)", bench.run_warm_python),
            describe=lambda p: "open(path, 'rb').read() in shuffled order, page cache warm"))
    got = harness.Harness(WARM_BENCH, bench.args.rounds, out=_Null(), log=log).run(
        [point.label], contenders, ceiling="ceiling")
    for r in got:
        metric = r["what"].split(" ", 1)[1]
        if r["contender"] == "granary-get_batch" and metric == "samples_per_s":
            r["goal_value"] = GOAL_WARM_SAMPLES_PER_S
    return finish(got, out, goals=False)


# -- index of a big dataset -------------------------------------------------------------------------

INDEX_PROBE = r"""
import json, os, random, sys, time
t0 = time.perf_counter()
import granary.data as gd
t1 = time.perf_counter()
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
r0 = rss()
t = time.perf_counter()
ds = gd.Dataset(sys.argv[1])
open_s = time.perf_counter() - t
r1 = rss()
n = len(ds)
rng = random.Random(0)
t = time.perf_counter()
for _ in range(100):
    s = ds[rng.randrange(n)]
get_ms = (time.perf_counter() - t) * 10
print(json.dumps({"open_s": open_s, "import_s": t1 - t0, "samples": n,
                  "index_bytes": ds.index_bytes, "rss_open_bytes": r1 - r0,
                  "rss_after_gets_bytes": rss() - r0, "random_get_ms": get_ms}))
"""


def index_dataset(args, log) -> tuple[Path, int, float | None]:
    n = args.ds_index_samples
    root = Path(args.data_dir) / f"index-{n}"
    marker = root / "granary.done"
    want = {"format": DATA_FORMAT, "samples": n}
    try:
        got = json.loads(marker.read_text())
        if all(got.get(k) == v for k, v in want.items()):
            return root / "granary", n, got.get("write_s")
    except (OSError, ValueError):
        pass
    gd = granary_data()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.monotonic()
    synth = Path(__file__).resolve().parent.parent / "build/release/bench/granary_bench_synth_dataset"
    if synth.exists():
        # The same DatasetWriter through a small C++ driver: 100M Python add() calls take minutes.
        log_print(log, f"index: writing {n:,} samples of 1 byte with {synth.name} (once)")
        subprocess.run([str(synth), str(root / "granary"), str(n)], check=True)
        write_s = time.monotonic() - t0
        os.sync()
        marker.write_text(json.dumps(dict(want, write_s=write_s)) + "\n")
        return root / "granary", n, write_s
    log_print(log, f"index: writing {n:,} samples of 1 byte with gd.Writer (once)")
    one = b"x"
    with gd.Writer(str(root / "granary"), shard_bytes=512 * MIB) as w:
        add = w.add
        step = max(1, n // 20)
        for i in range(n):
            add(f"{i:09d}", {"b": one})
            if i % step == step - 1:
                el = time.monotonic() - t0
                log_print(log, f"index: {i + 1:,} samples in {el:.0f}s "
                               f"({(i + 1) / el:,.0f}/s)")
    write_s = time.monotonic() - t0
    os.sync()
    marker.write_text(json.dumps(dict(want, write_s=write_s)) + "\n")
    log_print(log, f"index: wrote {n:,} samples in {write_s:.1f}s")
    return root / "granary", n, write_s


def run_index(bench: Bench, out, log) -> list[dict]:
    path, n, write_s = index_dataset(bench.args, log)
    index_disk = sum(p.stat().st_size for p in files_under(path) if p.name == "index")
    keys_disk = sum(p.stat().st_size for p in files_under(path) if p.name == "keys")
    samples: dict[str, list[float]] = {}
    for r in range(bench.args.rounds):
        for cold in (True, False):
            if cold:
                drop_caches_fn(bench)()
            got = json.loads(harness.run_command(
                [sys.executable, "-c", INDEX_PROBE, str(path)], "index probe"))
            tag = "cold" if cold else "warm"
            samples.setdefault(f"open_s {tag}", []).append(got["open_s"])
            samples.setdefault(f"rss_open_MiB {tag}", []).append(got["rss_open_bytes"] / MIB)
            samples.setdefault(f"random_get_ms {tag}", []).append(got["random_get_ms"])
            if cold:
                samples.setdefault("index_bytes_per_sample", []).append(got["index_bytes"] / n)
            log_print(log, f"index round {r + 1}: {tag} open {got['open_s'] * 1e3:.1f} ms, "
                           f"index {got['index_bytes'] / n:.2f} B/sample, RSS +"
                           f"{got['rss_open_bytes'] / MIB:.1f} MiB")
    results = []
    units = {"open_s": ("s", GOAL_OPEN_S), "rss_open_MiB": ("MiB", None),
             "random_get_ms": ("ms", None), "index_bytes_per_sample": ("B", None)}
    for what, vals in samples.items():
        unit, goal = units[what.split(" ")[0]]
        r = {"bench": INDEX_BENCH, "what": f"{n} samples {what}", "contender": "granary",
             "value": round(harness.median(vals), 6), "unit": unit, "median_of": len(vals),
             "higher_is_better": False, "is_ceiling": False,
             "samples": [round(v, 6) for v in vals]}
        if goal is not None:
            r["goal_value"] = goal
        if what == "index_bytes_per_sample":
            r["goal_value"] = GOAL_INDEX_BYTES_PER_SAMPLE
            r["index_disk_bytes_per_sample"] = round(index_disk / n, 3)
            r["keys_disk_bytes_per_sample"] = round(keys_disk / n, 3)
        if what.endswith("cold"):
            r["cold"] = bench.cold_ok
        if write_s is not None:
            r["write_s"] = round(write_s, 1)
        results.append(r)
        harness.emit(r, out)
    return results


# -- resume -----------------------------------------------------------------------------------------

def run_resume(bench: Bench, point: Point, out, log) -> list[dict]:
    gd = granary_data()
    bs = bench.args.ds_batch_size
    crc = crc32c()
    samples: dict[str, list[float]] = {}
    for r in range(bench.args.rounds):
        for cold in (True, False):
            ds = gd.Dataset(str(point.granary))
            ld = gd.Loader(ds, batch_size=bs, shuffle=True, seed=r)
            it = iter(ld)
            for _ in range(min(10, max(1, point.count // bs - 2))):
                next(it)
            sd = dict(ld.state_dict())
            want = [crc(v) for v in next(it).field("jpg")]
            del it, ld
            ds2 = gd.Dataset(str(point.granary))
            if cold:
                drop_caches_fn(bench)()
            t0 = time.perf_counter()
            ld2 = gd.Loader(ds2, batch_size=bs, shuffle=True, seed=r)
            t1 = time.perf_counter()
            ld2.load_state_dict(sd)
            t2 = time.perf_counter()
            b = next(iter(ld2))
            t3 = time.perf_counter()
            got = [crc(v) for v in b.field("jpg")]
            if got != want:
                raise RuntimeError("resume: the first batch after load_state_dict is not the batch "
                                   "the first loader yielded next")
            tag = "cold" if cold else "warm"
            samples.setdefault(f"resume_ms {tag}", []).append((t3 - t1) * 1e3)
            samples.setdefault(f"load_state_ms {tag}", []).append((t2 - t1) * 1e3)
            samples.setdefault(f"loader_create_ms {tag}", []).append((t1 - t0) * 1e3)
            log_print(log, f"resume round {r + 1} {tag}: Loader() {(t1 - t0) * 1e3:.2f} ms, "
                           f"load_state_dict {(t2 - t1) * 1e3:.3f} ms, + first batch "
                           f"{(t3 - t1) * 1e3:.2f} ms")
            del b, ld2, ds2, ds
            gc.collect()
    results = []
    for what, vals in samples.items():
        r = {"bench": RESUME_BENCH, "what": f"{point.label} {what}", "contender": "granary-loader",
             "value": round(harness.median(vals), 4), "unit": "ms", "median_of": len(vals),
             "higher_is_better": False, "is_ceiling": False, "batch_size": bs,
             "samples": [round(v, 4) for v in vals]}
        if what.startswith("resume_ms"):
            r["goal_value"] = GOAL_RESUME_MS
        if what.endswith("cold"):
            r["cold"] = bench.cold_ok
        results.append(r)
        harness.emit(r, out)
    return results


# -- accelerator utilization ------------------------------------------------------------------------

def au_worker(cfg: dict) -> int:
    """One emulated accelerator (rank) of an AU run: builds its pipeline after "go" on stdin,
    then for each batch: touch the bytes, sleep compute_s. Prints its numbers as JSON."""
    name, rank, world = cfg["contender"], cfg["rank"], cfg["world"]
    bs, seed, workers = cfg["batch"], cfg["seed"], cfg["workers"]
    crc = crc32c()
    if name != "granary-loader":
        import torch  # noqa: F401 - imported before "go", as a training process has it
        from torch.utils.data import DataLoader
    if name == "webdataset-dl":
        import webdataset as wds
    if name == "granary-loader":
        gd = granary_data()
    print("ready", flush=True)
    sys.stdin.readline()
    t_go = time.perf_counter()
    if name == "granary-loader":
        ds = gd.Dataset(cfg["granary"])
        it = _one_epoch(gd.Loader(ds, batch_size=bs, shuffle=True, seed=seed, rank=rank,
                                  world_size=world, drop_last=True))
    elif name == "torch-dl-perfile":
        import numpy as np
        idx = np.random.default_rng(seed).permutation(len(cfg["paths"]))[rank::world].tolist()
        it = DataLoader(PerFileDataset(cfg["paths"]), batch_size=bs, sampler=idx,
                        num_workers=workers, collate_fn=collate_list, drop_last=True)
    elif name == "webdataset-dl":
        shards = cfg["shards"][rank::world]
        ds = (wds.WebDataset(shards, shardshuffle=cfg["shardshuffle"], seed=seed,
                             empty_check=False).shuffle(cfg["buffer"])
              .batched(bs, collation_fn=collate_jpgs, partial=False))
        it = DataLoader(ds, batch_size=None, num_workers=workers)
    else:
        raise SystemExit(f"unknown AU contender {name}")
    compute = cfg["compute_s"]
    t_first = None
    busy = 0.0
    batches = 0
    n = 0
    for b in it:
        if t_first is None:
            t_first = time.perf_counter()
        vals = jpgs_of(b)
        for v in vals:
            crc(v)
        n += len(vals)
        t = time.perf_counter()
        time.sleep(compute)
        busy += time.perf_counter() - t
        batches += 1
    t_end = time.perf_counter()
    del it
    span = (t_end - t_first) if t_first is not None else 0.0
    print(json.dumps({"rank": rank, "batches": batches, "samples": n, "busy_s": busy,
                      "span_s": span, "first_batch_s": (t_first or t_end) - t_go,
                      "au": busy / span if span > 0 else 0.0}), flush=True)
    return 0


def run_au_once(bench: Bench, point: Point, name: str, world: int, seed: int) -> dict:
    a = bench.args
    cfg = {"contender": name, "world": world, "batch": a.ds_au_batch, "seed": seed,
           "workers": a.ds_workers, "compute_s": a.ds_au_compute_s,
           "granary": str(point.granary), "shards": point.shards(), "paths": point.paths(),
           "shardshuffle": a.ds_wds_shardshuffle, "buffer": a.ds_wds_buffer}
    procs = []
    drop_caches_fn(bench)()
    try:
        for r in range(world):
            cfg_r = point.root / f"au-config-{r}.json"
            cfg_r.write_text(json.dumps(dict(cfg, rank=r)))
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--au-worker", str(cfg_r)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=dict(os.environ, OMP_NUM_THREADS="1")))
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"AU worker of {name} did not start: {line!r}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        got = []
        for p in procs:
            text, _ = p.communicate(timeout=3600)
            if p.returncode != 0:
                raise RuntimeError(f"AU worker of {name} failed (exit {p.returncode})")
            got.append(json.loads(text.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    aus = [g["au"] for g in got]
    return {"au_mean": sum(aus) / len(aus), "au_min": min(aus),
            "first_batch_s": max(g["first_batch_s"] for g in got),
            "samples": sum(g["samples"] for g in got),
            "samples_per_s": sum(g["samples"] / g["span_s"] for g in got if g["span_s"] > 0)}


def run_au(bench: Bench, point: Point, names: list[str], out, log) -> list[dict]:
    a = bench.args
    per_acc = a.ds_au_batch / a.ds_au_compute_s  # samples/s one accelerator consumes
    # at[(name, N)] = [run dicts]; best[name] = [max N per round]
    at: dict[tuple[str, int], list[dict]] = {}
    best: dict[str, list[int]] = {n: [] for n in names}
    ceiling: list[float] = []
    failed: dict[str, str] = {}
    for r in range(a.rounds):
        got, _ = bench.doctor("randread-128k-qd32")
        iops = next(g["value"] for g in got if g["metric"] == "iops")
        ceiling.append(iops * (128 * KIB) / point.size / (AU_TARGET * per_acc))
        alive = {n: 0 for n in names if n not in failed}
        for world in range(1, a.ds_au_max + 1):
            if not alive:
                break
            rot = list(alive)
            rot = rot[r % len(rot):] + rot[:r % len(rot)]
            for name in rot:
                try:
                    res = run_au_once(bench, point, name, world, r)
                except Exception as e:  # noqa: BLE001
                    failed[name] = f"{type(e).__name__}: {e}"
                    log_print(log, f"AU {name} FAILED, dropped: {failed[name]}")
                    traceback.print_exc(file=log)
                    alive.pop(name)
                    continue
                at.setdefault((name, world), []).append(res)
                log_print(log, f"AU round {r + 1}/{a.rounds} {name} N={world}: AU mean "
                               f"{res['au_mean'] * 100:.1f} % (min {res['au_min'] * 100:.1f} "
                               f"%), {res['samples_per_s']:.0f} samples/s, first batch "
                               f"{res['first_batch_s']:.2f} s")
                if res["au_mean"] >= AU_TARGET:
                    alive[name] = world
                else:
                    best[name].append(alive.pop(name))
        for name, n in alive.items():
            best[name].append(n)
    results = []
    desc = (f"{a.ds_au_batch} samples of {point.size} B per batch, {a.ds_au_compute_s} s compute "
            f"per batch, {point.count} samples")
    cval = harness.median(ceiling)
    for name in names:
        if not best[name]:
            continue
        v = harness.median(best[name])
        r = {"bench": AU_BENCH, "what": f"{point.label} max_accelerators", "contender": name,
             "value": v, "unit": "accelerators", "median_of": len(best[name]),
             "ceiling": round(cval, 3), "ceiling_what": "granary doctor randread-128k-qd32 IOPS "
             f"/ ({AU_TARGET} x {per_acc:.0f} samples/s per accelerator)",
             "ratio": round(v / cval, 3) if cval else None, "higher_is_better": True,
             "is_ceiling": False, "samples": best[name], "setup": desc}
        results.append(r)
        harness.emit(r, out)
        for world in range(1, a.ds_au_max + 1):
            runs = at.get((name, world))
            if not runs:
                continue
            for key, unit in (("au_mean", "%"), ("au_min", "%"), ("first_batch_s", "s"),
                              ("samples_per_s", "samples/s")):
                vals = [x[key] * (100 if unit == "%" else 1) for x in runs]
                r = {"bench": AU_BENCH, "what": f"{point.label} N={world} {key}",
                     "contender": name, "value": round(harness.median(vals), 3), "unit": unit,
                     "median_of": len(vals), "higher_is_better": key != "first_batch_s",
                     "is_ceiling": False, "samples": [round(x, 3) for x in vals]}
                results.append(r)
                harness.emit(r, out)
    results.append({"bench": AU_BENCH, "what": f"{point.label} max_accelerators",
                    "contender": "ceiling", "value": round(cval, 3), "unit": "accelerators",
                    "median_of": len(ceiling), "higher_is_better": True, "is_ceiling": True,
                    "samples": [round(c, 3) for c in ceiling]})
    harness.emit(results[-1], out)
    return results


# -- tables -------------------------------------------------------------------------------------------

def _num(v) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if abs(v) < 10 else harness._fmt(v)


def markdown_table(results: list[dict]) -> str:
    lines: list[str] = []
    cold = [r for r in results if r["bench"] == BENCH]
    if cold:
        by: dict[tuple[str, str], dict[str, dict]] = {}
        for r in cold:
            point, metric = r["what"].split(" ", 1)
            by.setdefault((point, r["contender"]), {})[metric] = r
        lines.append("| point | contender | samples/s | MB/s | / ceiling (paired) | x python "
                     "(paired) | p50 us | p99 us | CPU s / 1k samples | n |")
        lines.append("|---|---|" + "---:|" * 8)
        points = list(dict.fromkeys(p for p, _ in by))
        for p in points:
            names = [c for q, c in by if q == p and c != "ceiling"] + ["ceiling"]
            for c in names:
                m = by.get((p, c))
                if not m:
                    continue
                s = m.get("samples_per_s", {})
                ratio = ""
                if s.get("ratio") is not None and not s.get("is_ceiling"):
                    ratio = f"{s['ratio']:.2f} ({s.get('paired_ratio') or 0:.2f})"
                    goal = s.get("goal_ratio")
                    if goal and (s.get("paired_ratio") or s["ratio"]) < goal:
                        ratio = f"**{ratio}**"
                xp = ""
                if s.get("x_python") is not None:
                    xp = f"{s['x_python']:.2f}"
                    if s.get("x_python_paired") is not None:
                        xp += f" ({s['x_python_paired']:.2f})"
                    if s.get("goal_x_python") and (s.get("x_python_paired") or
                                                   s["x_python"]) < s["goal_x_python"]:
                        xp = f"**{xp}**"
                lat = ("io_p50_us", "io_p99_us") if c == "ceiling" else ("sample_p50_us",
                                                                          "sample_p99_us")
                name = "ceiling: doctor randread QD32" if c == "ceiling" else c
                cells = [_num(m[k]["value"]) if k in m else "" for k in ("samples_per_s",
                                                                         "MBps")]
                cells += [ratio, xp]
                cells += [_num(m[k]["value"]) if k in m else "" for k in lat + ("cpu_s_per_1k",)]
                n = max(r["median_of"] for r in m.values())
                lines.append(f"| {p} | {name} | " + " | ".join(cells) + f" | {n} |")
        lines.append("")
        lines.append("Cold page cache, one epoch in a shuffled order per run, every byte touched "
                     "(CRC-32C). Ratio: samples/s against the doctor random-read ceiling of the "
                     "same run (goal for granary-loader >= 0.7; bold below); x python: against "
                     "python-perfile (goal >= 4). Latency: per sample as the consumer sees it "
                     "(batch readers: batch wait / batch size); ceiling: its I/O latency at QD 32.")
    warm = [r for r in results if r["bench"] == WARM_BENCH]
    if warm:
        lines.append("")
        lines.append("| warm (page cache) | contender | samples/s | read-only samples/s | MB/s "
                     "| / ceiling | n |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        by2: dict[tuple[str, str], dict[str, dict]] = {}
        for r in warm:
            point, metric = r["what"].split(" ", 1)
            by2.setdefault((point, r["contender"]), {})[metric] = r
        for (p, c), m in by2.items():
            s = m.get("samples_per_s", {})
            ratio = f"{s['ratio']:.2f}" if s.get("ratio") is not None and c != "ceiling" else ""
            name = "ceiling: memcpy / sample size" if c == "ceiling" else c
            cells = [_num(m[k]["value"]) if k in m else "" for k in
                     ("samples_per_s", "read_samples_per_s", "MBps")]
            lines.append(f"| {p} | {name} | " + " | ".join(cells) +
                         f" | {ratio} | {s.get('median_of', '')} |")
        lines.append("")
        lines.append(f"Goal: warm get_batch >= {GOAL_WARM_SAMPLES_PER_S:,} samples/s at 16 KiB.")
    other = [r for r in results if r["bench"] in (INDEX_BENCH, RESUME_BENCH)]
    if other:
        lines.append("")
        lines.append("| bench | what | value | unit | goal | n |")
        lines.append("|---|---|---:|---|---:|---:|")
        for r in other:
            goal = r.get("goal_value")
            lines.append(f"| {r['bench']} | {r['what']} | {_num(r['value'])} | {r['unit']} | "
                         f"{'' if goal is None else _num(goal)} | {r['median_of']} |")
    au = [r for r in results if r["bench"] == AU_BENCH]
    if au:
        lines.append("")
        lines.append("| accelerator utilization | contender | max accelerators at >= 90 % AU "
                     "| AU % at N=1..k (median) | n |")
        lines.append("|---|---|---:|---|---:|")
        for r in au:
            if not r["what"].endswith("max_accelerators"):
                continue
            p = r["what"].split(" ")[0]
            aus = [x for x in au if x["contender"] == r["contender"] and
                   x["what"].endswith(" au_mean")]
            cells = ", ".join(f"{x['what'].split(' ')[1]}: {x['value']:.0f}" for x in aus)
            name = "ceiling: doctor 128k QD32 IOPS / demand" if r["is_ceiling"] else r["contender"]
            lines.append(f"| {p} | {name} | {_num(r['value'])} | {cells} | {r['median_of']} |")
        if au[0].get("setup"):
            lines.append("")
            lines.append(f"AU setup: {au[0]['setup']}; each accelerator a process with its own "
                         "rank's pipeline.")
    return "\n".join(lines)


# -- driver ---------------------------------------------------------------------------------------

def _int_list(s: str) -> list[int]:
    return [int(x) for x in str(s).split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """Options of this benchmark. With standalone=False the options shared with the other
    benchmarks of run_all.py (--rounds, --granary, --quick) are left to the caller."""
    if standalone:
        parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS,
                            help="rounds (default 5)")
        parser.add_argument("--granary", default=None, help="path of the granary binary")
        parser.add_argument("--quick", action="store_true",
                            help=f"tiny data ({QUICK_POINTS}, 100k-sample index, short AU)")
    parser.add_argument("--data-dir", default=os.environ.get("GRANARY_BENCH_DATA",
                                                             "/work/bench-data/dataset"),
                        help="where the generated data sets live and are reused (default: "
                             "$GRANARY_BENCH_DATA or /work/bench-data/dataset)")
    parser.add_argument("--ds-sections", default=",".join(ALL_SECTIONS),
                        help=f"dataset sections to run, comma-separated (default: "
                             f"{','.join(ALL_SECTIONS)})")
    parser.add_argument("--ds-points", default=None,
                        help=f"SIZEk:COUNT,... (default {DEFAULT_POINTS}; {QUICK_POINTS} quick)")
    parser.add_argument("--ds-contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--ds-perfile-threads", default="1,32",
                        help="threads of the C++ per-file reader, one contender each (default "
                             "1,32)")
    parser.add_argument("--ds-perfile-bin", default=None,
                        help="granary_bench_perfile (default: newest build/*/bench/)")
    parser.add_argument("--ds-batch-size", type=int, default=256, help="batch size (256)")
    parser.add_argument("--ds-workers", type=int, default=2,
                        help="DataLoader worker processes (2)")
    parser.add_argument("--ds-wds-shard-mib", type=int, default=None,
                        help="WebDataset shard size in MiB (128; 4 quick)")
    parser.add_argument("--ds-wds-buffer", type=int, default=1000,
                        help="WebDataset .shuffle() buffer (1000)")
    parser.add_argument("--ds-wds-shardshuffle", type=int, default=100,
                        help="WebDataset(shardshuffle=) (100)")
    parser.add_argument("--ds-doctor-size-mib", type=int, default=None,
                        help="doctor's test file for the ceiling (4096; 64 quick)")
    parser.add_argument("--ds-doctor-runtime-s", type=float, default=None,
                        help="seconds per doctor random-read run (5; 1 quick)")
    parser.add_argument("--ds-index-samples", type=int, default=None,
                        help="samples of the index dataset (100000000; 100000 quick)")
    parser.add_argument("--ds-au-contenders", default=",".join(AU_CONTENDERS),
                        help=f"comma-separated subset of {','.join(AU_CONTENDERS)}")
    parser.add_argument("--ds-au-max", type=int, default=None,
                        help="most emulated accelerators to try (8; 2 quick)")
    parser.add_argument("--ds-au-batch", type=int, default=None,
                        help="samples per accelerator batch (400; 50 quick)")
    parser.add_argument("--ds-au-compute-s", type=float, default=None,
                        help="emulated compute per batch (0.224 s; 0.028 quick)")
    parser.add_argument("--no-drop-caches", action="store_true",
                        help="do not drop the page cache (results then say cold: false)")


def run(args: argparse.Namespace, out=sys.stdout, log=sys.stderr) -> list[dict]:
    """Runs the benchmark; prints JSON lines to `out` and returns the results."""
    quick = args.quick
    defaults = {"ds_points": (DEFAULT_POINTS, QUICK_POINTS),
                "ds_doctor_size_mib": (4096, 64), "ds_doctor_runtime_s": (5.0, 1.0),
                "ds_index_samples": (100_000_000, 100_000), "ds_au_max": (8, 2),
                "ds_au_batch": (400, 50), "ds_wds_shard_mib": (128, 4), "ds_au_compute_s": (0.224, 0.028)}
    for k, (full, q) in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, q if quick else full)
    if isinstance(args.ds_perfile_threads, str):
        args.ds_perfile_threads = _int_list(args.ds_perfile_threads)
    sections = [s for s in args.ds_sections.split(",") if s]
    bad = [s for s in sections if s not in ALL_SECTIONS]
    names = [c for c in args.ds_contenders.split(",") if c]
    bad += [c for c in names if c not in CONTENDERS]
    au_names = [c for c in args.ds_au_contenders.split(",") if c]
    bad += [c for c in au_names if c not in AU_CONTENDERS]
    if bad:
        raise SystemExit(f"{BENCH}: unknown sections or contenders {bad}")
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir = str(data_dir)
    points = parse_points(args.ds_points, data_dir)
    skipped = {}
    for c in set(names) | set(au_names if "au" in sections else []):
        why = probe(c)
        if why:
            skipped[c] = why
            log_print(log, f"skipping {c}: {why}")
    names = [c for c in names if c not in skipped]
    au_names = [c for c in au_names if c not in skipped]
    have_granary = probe("granary-loader") is None
    try:
        # As in a training process, torch is loaded before any contender runs: gd.Loader() looks
        # at torch.distributed for rank and world size, and importing torch there (about 1.5 s
        # of CPU) would land on whichever granary run came first.
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 2)
    except ImportError:
        pass
    bench = Bench(args, points, log)
    if "cpp-perfile" in names:
        try:
            bench.find_perfile()
        except SkipContender as e:
            skipped["cpp-perfile"] = str(e)
            names.remove("cpp-perfile")
            log_print(log, f"skipping cpp-perfile: {e}")
    log_print(log, f"data {data_dir}, points {[p.label + ':' + str(p.count) for p in points]}, "
                   f"sections {sections}, {args.rounds} rounds, contenders {names}")

    parts = set()
    if {"python-perfile", "cpp-perfile", "torch-dl-perfile"} & set(names) or \
            ("au" in sections and "torch-dl-perfile" in au_names):
        parts.add("files")
    if {"webdataset", "webdataset-dl"} & set(names) or ("au" in sections and
                                                       "webdataset-dl" in au_names):
        parts.add("wds")
    if have_granary:
        parts.add("granary")
    for p in points:
        generate(p, parts, args.ds_wds_shard_mib, log)

    results: list[dict] = []
    by_label = {p.label: p for p in points}
    p16 = by_label.get("16k") or points[0]
    p128 = by_label.get("128k") or points[-1]
    if "cold" in sections:
        results += run_cold(bench, names, out, log)
    if "warm" in sections:
        results += run_warm(bench, p16, [n for n in names if n in ("granary-get_batch",
                                                                  "python-perfile")], out, log)
    if "index" in sections and have_granary:
        results += run_index(bench, out, log)
    if "resume" in sections and have_granary:
        results += run_resume(bench, p16, out, log)
    if "au" in sections and au_names:
        results += run_au(bench, p128, au_names, out, log)
    for name, why in list(skipped.items()) + list(bench.failed.items()):
        log_print(log, f"not measured: {name}: {why}")
    return results


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--au-worker":
        return au_worker(json.loads(Path(sys.argv[2]).read_text()))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    results = run(args)
    print()
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
