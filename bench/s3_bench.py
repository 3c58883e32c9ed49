#!/usr/bin/env python3
"""S3: granary reading a packed dataset, loading a model and writing a checkpoint over S3 against
boto3 the way people use it today, the loopback server's own ceiling and the local disk.

Server: a single-node Ceph RGW on 127.0.0.1 started for the run with `scripts/ceph-rgw.sh start
DIR` (memstore OSD: the objects live in RAM, CEPH_RGW_MEMSTORE_BYTES = --s3-memstore-gib, default
12) and stopped at the end, unless GRANARY_TEST_S3_ENDPOINT is set (then that server is used and
left running; GRANARY_TEST_S3_ACCESS_KEY, _SECRET_KEY, _REGION go with it). granary and boto3
both find the server and keys in AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_REGION, which the run sets (docs/s3.md). Objects go to the bucket --s3-bucket (default
granary-bench, created if missing) under s3bench/v1/; with a server that outlives the run the
data is reused while its marker objects match. boto3 clients are made with max_pool_connections
= max(10, --s3-threads) (with the default 10, 16 threads would open and drop connections).

Sections, each one harness run (bench/harness.py: every round runs every contender once per
point, in an order that rotates between rounds; medians; ratios to the ceiling of the same run):

dataset (bench "s3_dataset"): --s3-dataset-mib (default 1024) of --s3-sample-kib (default 100)
KiB samples, the bytes and CRC sum of bench/dataset_bench.py (sample i: its index, then a slice
of a random pool; every contender CRCs every byte and the epoch's CRC sum must match), stored
one object per sample (ds/SIZE-COUNT/files/NNNNNNNN.jpg) and packed (gd.Writer, 512 MiB shards)
both in S3 and on local disk (--s3-data-dir). One epoch per run in a shuffled order (round r:
seed r).

  boto3-get           for i in shuffled order: s3.get_object(Bucket, Key)["Body"].read()
  boto3-get-tN        the same through a ThreadPoolExecutor(N).map (N = --s3-threads, 16)
  granary-s3          gd.Loader(gd.Dataset("s3://bucket/.../granary"), batch_size=256,
                      shuffle=True, seed=r); a fresh Dataset each run (nothing cached)
  granary-s3-cache-cold  the same with "?cache_dir=DIR&cache_bytes=N" on the URL and DIR empty:
                      a job's first epoch with a node-local cache (whole 2 MiB pages fetched)
  granary-s3-cache    the same with "?cache_dir=DIR&cache_bytes=N" on the URL, after one untimed
                      epoch has filled the node-local cache (skipped with a note while granary has
                      no cache: granary.open(url, cache_dir=...) raises TypeError/ValueError)
  granary-local       the same Loader over the packed copy on local disk, page cache dropped
  s3-ceiling          what the server can serve: curl --parallel, K (--s3-ceiling-streams, 8)
                      ranged GETs of one --s3-ceiling-mib (1024) MiB object to /dev/null (SigV4,
                      no SDK); samples/s = MB/s / sample bytes
  s3-ceiling-objects  what the server can serve one sample per request: curl --parallel
                      --parallel-max 64 GETs of every per-sample object (URL glob, SigV4)
  disk-ceiling        granary doctor DIR --json --keep-file --only randread-128k-qd32 (O_DIRECT;
                      the random-read ceiling bench/dataset_bench.py uses for 128 KiB samples)

  metrics (bench/dataset_bench.py's): samples_per_s, MBps, sample_p50_us, sample_p99_us,
  cpu_s_per_1k; x_boto3 (JSON) = samples/s over boto3-get's, ratio_disk = over disk-ceiling's,
  ratio_objects = over s3-ceiling-objects' (what the server does at one request per sample)

model (bench "s3_model"): a --s3-model-gib (default 1) safetensors file made by
bench/model_bench.py (Llama-shaped BF16, one odd-length tensor, every tensor checksummed by every
contender against the values computed while writing), uploaded to model/SIZE/model.safetensors.
Each load runs in a fresh process (this script's --child mode) that imports, reports ready and
waits while the parent drops the page cache (local) or does nothing (S3):

  granary-s3          granary.models.load("s3://bucket/.../model.safetensors")
  granary-s3-cache    the same with ?cache_dir=... after one untimed load filled the cache
  boto3-download+load_file  s3.download_file(bucket, key, tmp) + safetensors.torch.load_file(tmp)
  boto3-get+load      safetensors.torch.load(s3.get_object(...)["Body"].read())
  granary-local       granary.models.load(local copy), page cache dropped
  s3-ceiling          curl --parallel ranged GETs of the model object itself
  disk-ceiling        granary doctor --only seqread-1m,seqread-4m (O_DIRECT, the better one)

  metrics: MBps = model bytes / (load + first checksum pass - second pass) as in
  bench/model_bench.py (an mmap'ed load pays its page faults), load_s, peak_rss_MiB, cpu_s_per_GB

checkpoint (bench "s3_checkpoint"): an LLM-like state of --s3-checkpoint-gib (default 2) made by
bench/checkpoint_bench.py (model + Adam state, 732 tensors at 2 GiB):

  granary-ckpt        granary.Checkpointer("s3://.../ckpt/granary", keep_last=2,
                      incremental=False), one per run of the section (as a job keeps one); its
                      first save is untimed but for first_stall_s (staging memory); each round
                      save(step, state): stall = until save() returns (the training loop is
                      blocked only this long), durable = until handle.wait() returns
  granary-writer      with store.writer(key) as w: torch.save(state, w) (multipart, parts in
                      flight; synchronous: stall = durable)
  boto3-upload        buf = io.BytesIO(); torch.save(state, buf); s3.upload_fileobj(buf, ...)
                      (default TransferConfig: 8 MiB parts, 10 threads); stall = durable;
                      serialize_s = the torch.save part
  s3-ceiling          curl --parallel: K PUTs of state bytes / K each from a file in /dev/shm

  metrics: stall_s, durable_s, write_MBps = state bytes / durable_s (ceiling: the PUT MB/s);
  x_boto3 = boto3-upload's durable_s / this durable_s (JSON)

MB = 1e6 bytes. Ratios: value / ceiling (ceiling / value for times), 1.0 = as good.

Usage:
  .venv/bin/python bench/s3_bench.py [--rounds 3] [--quick] [--s3-sections dataset,model,
        checkpoint] [--s3-dataset-mib 1024] [--s3-sample-kib 100] [--s3-model-gib 1]
        [--s3-checkpoint-gib 2] [--s3-threads 16] [--s3-contenders a,b] [--s3-data-dir DIR]
        [--no-drop-caches] [--jsonl FILE]
  make bench (bench/run_all.py runs it; --skip s3 to leave it out, --bench s3 for it alone)
  smoke test: GRANARY_TEST_S3_ENDPOINT=... .venv/bin/python -m pytest bench/test_s3_bench.py

Memory: RGW holds every object in RAM (dataset twice, the model, checkpoints in flight); the
checkpoint section holds the state, granary's staging copy and boto3's serialized buffer.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = "s3"
DATASET_BENCH = "s3_dataset"
MODEL_BENCH = "s3_model"
CKPT_BENCH = "s3_checkpoint"
SECTIONS = ["dataset", "model", "checkpoint"]
DEFAULT_ROUNDS = 3
KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
MB = 1e6
DATA_FORMAT = 1    # bump when the uploaded layout changes (markers then mismatch)
PREFIX = f"s3bench/v{DATA_FORMAT}"
DATASET_CONTENDERS = ["boto3-get", "boto3-get-tN", "granary-s3", "granary-s3-cache-cold",
                      "granary-s3-cache", "granary-local"]
MODEL_CONTENDERS = ["granary-s3", "granary-s3-cache", "boto3-download+load_file",
                    "boto3-get+load", "granary-local"]
CKPT_CONTENDERS = ["granary-ckpt", "granary-writer", "boto3-upload"]
CACHE_CONTENDER = "granary-s3-cache"
CEILINGS = ("s3-ceiling", "s3-ceiling-objects", "disk-ceiling")
QUICK = {"s3_dataset_mib": 4, "s3_model_gib": 0.01, "s3_checkpoint_gib": 0.03,
         "s3_ceiling_mib": 32, "s3_doctor_size_mib": 16, "s3_doctor_runtime_s": 0.3,
         "s3_cache_bytes_gib": 1}
FULL = {"s3_dataset_mib": 1024, "s3_model_gib": 1.0, "s3_checkpoint_gib": 2.0,
        "s3_ceiling_mib": 1024, "s3_doctor_size_mib": 1024, "s3_doctor_runtime_s": 2.0,
        "s3_cache_bytes_gib": 8}


def log_print(log, msg: str) -> None:
    print(f"[{BENCH}] {msg}", file=log, flush=True)


SkipContender = harness.SkipContender


# -- the server -----------------------------------------------------------------------------------

class Server:
    """The S3 server of the run: GRANARY_TEST_S3_* if set, else an RGW started here (and stopped
    by close()). Exports AWS_* for granary and boto3 (this process and its children)."""

    def __init__(self, args, log):
        self.args = args
        self.log = log
        self.dir: str | None = None
        self.saved_env: dict[str, str | None] = {}
        env = dict(os.environ)
        if not env.get("GRANARY_TEST_S3_ENDPOINT"):
            self.dir = f"/tmp/granary-s3bench-{os.getpid()}"
            run_env = dict(env, CEPH_RGW_MEMSTORE_BYTES=str(int(args.s3_memstore_gib * GIB)))
            log_print(log, f"starting Ceph RGW in {self.dir} (memstore "
                           f"{args.s3_memstore_gib:g} GiB)")
            t0 = time.monotonic()
            proc = subprocess.run([str(REPO / "scripts" / "ceph-rgw.sh"), "start", self.dir],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=run_env)
            if proc.returncode != 0:
                self.close()
                raise RuntimeError(f"scripts/ceph-rgw.sh start failed: "
                                   f"{proc.stderr.strip()[-1500:]}")
            for line in proc.stdout.splitlines():
                k, sep, v = line.partition("=")
                if sep and k.startswith("GRANARY_"):
                    env[k.strip()] = v.strip()
            log_print(log, f"RGW up at {env.get('GRANARY_TEST_S3_ENDPOINT')} in "
                           f"{time.monotonic() - t0:.1f}s")
        self.endpoint = env["GRANARY_TEST_S3_ENDPOINT"]
        self.access_key = env.get("GRANARY_TEST_S3_ACCESS_KEY", "")
        self.secret_key = env.get("GRANARY_TEST_S3_SECRET_KEY", "")
        self.region = env.get("GRANARY_TEST_S3_REGION", "us-east-1")
        self.export({"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                     "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region,
                     "AWS_ENDPOINT_URL_S3": None})

    def export(self, values: dict[str, str | None]) -> None:
        for k, v in values.items():
            self.saved_env.setdefault(k, os.environ.get(k))
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def describe(self) -> str:
        return f"{'RGW started for this run' if self.dir else 'GRANARY_TEST_S3_ENDPOINT'} " \
               f"{self.endpoint}"

    def close(self) -> None:
        for k, v in self.saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.saved_env = {}
        if self.dir:
            proc = subprocess.run([str(REPO / "scripts" / "ceph-rgw.sh"), "stop", self.dir],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                log_print(self.log, f"scripts/ceph-rgw.sh stop {self.dir} failed: "
                                    f"{proc.stderr.strip()[-500:]}")
            self.dir = None


def boto3_client(threads: int):
    import boto3
    import botocore.config
    return boto3.client("s3", config=botocore.config.Config(
        max_pool_connections=max(10, threads)))


def curl_auth(server: Server) -> list[str]:
    return ["--aws-sigv4", f"aws:amz:{server.region}:s3", "--user",
            f"{server.access_key}:{server.secret_key}", "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD"]


def object_url(server: Server, bucket: str, key: str) -> str:
    return f"{server.endpoint.rstrip('/')}/{bucket}/{urllib.parse.quote(key)}"


class S3:
    """The bucket, markers and bulk helpers (boto3)."""

    def __init__(self, server: Server, bucket: str, threads: int, log):
        self.server = server
        self.bucket = bucket
        self.client = boto3_client(threads)
        self.log = log
        try:
            self.client.head_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001 - absent (404) or not ours; creating tells which
            self.client.create_bucket(Bucket=bucket)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def marker(self, key: str) -> dict | None:
        try:
            return json.loads(self.client.get_object(Bucket=self.bucket,
                                                     Key=key + ".done")["Body"].read())
        except Exception:  # noqa: BLE001 - absent or unreadable: not done
            return None

    def done(self, key: str, meta: dict) -> bool:
        got = self.marker(key)
        return got is not None and all(got.get(k) == v for k, v in meta.items())

    def mark(self, key: str, meta: dict) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key + ".done",
                               Body=json.dumps(meta).encode())

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                     Prefix=prefix)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": keys[i:i + 1000], "Quiet": True})
            n += len(keys)
        return n


# -- ceilings -------------------------------------------------------------------------------------

def curl_get_ceiling(server: Server, bucket: str, key: str, size: int, streams: int) -> dict:
    """MB/s of `streams` parallel ranged GETs of one object (curl --parallel, to /dev/null)."""
    auth = curl_auth(server)
    url = object_url(server, bucket, key)
    step = -(-size // streams)
    cmd = ["curl", "--no-progress-meter", "--fail", "--parallel", "--parallel-max",
           str(streams)]
    for i in range(streams):
        lo, hi = i * step, min(size, (i + 1) * step) - 1
        if lo > hi:
            break
        if i:
            cmd.append("--next")
        cmd += auth + ["-r", f"{lo}-{hi}", "-o", "/dev/null", "-w", "%{size_download}\n", url]
    cpu0 = harness_children_cpu()
    t0 = time.perf_counter()
    out = harness.run_command(cmd, "curl (S3 GET ceiling)", timeout_s=600)
    secs = time.perf_counter() - t0
    got = sum(int(x) for x in out.split())
    if got != size:
        raise RuntimeError(f"curl read {got} of {size} bytes of {key}")
    return {"MBps": size / secs / MB, "seconds": secs,
            "cpu_s": harness_children_cpu() - cpu0}


def curl_get_objects(server: Server, bucket: str, glob: str, count: int, size: int,
                     parallel: int) -> dict:
    """MB/s of GETs of the `count` objects of `size` bytes a URL glob names, `parallel` at once
    (curl --parallel, to /dev/null)."""
    cmd = ["curl", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", str(parallel),
           *curl_auth(server), "-o", "/dev/null", "-w", "%{size_download}\n",
           object_url(server, bucket, "GLOB").replace("GLOB", glob)]
    cpu0 = harness_children_cpu()
    t0 = time.perf_counter()
    out = harness.run_command(cmd, "curl (S3 GET of every sample object)", timeout_s=600)
    secs = time.perf_counter() - t0
    sizes = [int(x) for x in out.split()]
    if len(sizes) != count or sum(sizes) != count * size:
        raise RuntimeError(f"curl read {len(sizes)} objects, {sum(sizes)} bytes of {glob}; "
                           f"expected {count} of {size}")
    return {"MBps": count * size / secs / MB, "seconds": secs,
            "cpu_s": harness_children_cpu() - cpu0}


def curl_put_ceiling(server: Server, bucket: str, prefix: str, nbytes: int, streams: int,
                     s3: S3) -> dict:
    """MB/s of `streams` parallel PUTs of nbytes / streams each, from a file in /dev/shm."""
    part = -(-nbytes // streams)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    src = shm / f"granary-s3bench-{os.getpid()}.put"
    try:
        with open(src, "wb") as f:
            block = os.urandom(MIB)
            left = part
            while left:
                n = min(left, MIB)
                f.write(block[:n])
                left -= n
        auth = curl_auth(server)
        cmd = ["curl", "--no-progress-meter", "--fail", "--parallel", "--parallel-max",
               str(streams)]
        for i in range(streams):
            if i:
                cmd.append("--next")
            cmd += auth + ["-T", str(src), "-o", "/dev/null",
                           object_url(server, bucket, f"{prefix}/part-{i}")]
        t0 = time.perf_counter()
        harness.run_command(cmd, "curl (S3 PUT ceiling)", timeout_s=600)
        secs = time.perf_counter() - t0
    finally:
        src.unlink(missing_ok=True)
        s3.delete_prefix(prefix + "/")
    return {"MBps": part * streams / secs / MB, "seconds": secs}


def harness_children_cpu() -> float:
    import resource
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return c.ru_utime + c.ru_stime


class Doctor:
    """The local disk's ceilings, measured with `granary doctor` as the other benches do."""

    def __init__(self, args, granary_bin: str):
        self.args = args
        self.granary_bin = granary_bin
        self.dir = Path(args.s3_data_dir) / "doctor"

    def cmd(self, only: str) -> list[str]:
        return [self.granary_bin, "doctor", str(self.dir), "--json", "--keep-file", "--size-mib",
                str(self.args.s3_doctor_size_mib), "--runtime-s",
                f"{self.args.s3_doctor_runtime_s:g}", "--only", only]

    def run(self, only: str) -> list[dict]:
        self.dir.mkdir(parents=True, exist_ok=True)
        out = harness.run_command(self.cmd(only), "granary doctor")
        return [json.loads(l) for l in out.splitlines() if l.startswith("{")]

    def describe(self, only: str) -> str:
        return " ".join(["granary"] + self.cmd(only)[1:])


# -- the node-local cache (granary's, when it exists) ---------------------------------------------

def cache_url(url: str, query: dict) -> str:
    base, _, q = url.partition("?")
    items = urllib.parse.parse_qsl(q) + list(query.items())
    return base + "?" + urllib.parse.urlencode(items, safe="/")


def probe_cache(url: str, cache_dir: Path, cache_bytes: int) -> tuple[dict | None, str | None]:
    """(the URL query that turns granary's node-local cache on, None) or (None, why not)."""
    import granary
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        granary.open(url, cache_dir=str(cache_dir), cache_bytes=cache_bytes).close()
    except (TypeError, ValueError) as e:
        return None, (f"not available: granary.open(url, cache_dir=..., cache_bytes=...) "
                      f"raises {type(e).__name__}: {e}")
    why = ""
    for query in ({"cache_dir": str(cache_dir), "cache_bytes": str(cache_bytes)},
                  {"cache_dir": str(cache_dir)}):
        try:
            granary.open(cache_url(url, query)).close()
            return query, None
        except (TypeError, ValueError) as e:
            why = f"{type(e).__name__}: {e}"
    return None, f"not available: the URL query ?cache_dir= is refused ({why})"


# -- dataset section ------------------------------------------------------------------------------

class DatasetSection:
    def __init__(self, args, s3: S3, doctor: Doctor, log):
        import dataset_bench as db
        self.db = db
        self.args = args
        self.s3 = s3
        self.doctor = doctor
        self.log = log
        size = args.s3_sample_kib * KIB
        count = max(1, int(args.s3_dataset_mib * MIB) // size)
        self.point = db.Point(Path(args.s3_data_dir) / "dataset", f"{args.s3_sample_kib}k",
                              size, count)
        self.label = f"{args.s3_sample_kib}KiBx{count}"
        self.root = f"{PREFIX}/ds/{self.point.label}-{count}"
        self.granary_url = s3.url(f"{self.root}/granary")
        self.cache_dir = Path(args.s3_data_dir) / "cache" / "dataset"
        self.cache_query: dict | None = None
        self.cache_filled = False
        self.failed: dict[str, str] = {}
        self.runs: dict[str, int] = {}
        self.cold_ok = True
        self._client = None

    def key(self, i: int) -> str:
        return f"{self.root}/files/{self.db.sample_key(i)}.jpg"

    def client(self):
        if self._client is None:
            self._client = boto3_client(self.args.s3_threads)
        return self._client

    def generate(self) -> None:
        db, p, s3 = self.db, self.point, self.s3
        db.generate(p, ["granary"], 0, self.log)   # CRC sum + the local packed copy
        meta = {"format": DATA_FORMAT, "samples": p.count, "sample_bytes": p.size,
                "crc_sum": p.crc_sum}
        if not s3.done(f"{self.root}/files", meta):
            t0 = time.monotonic()
            s3.delete_prefix(f"{self.root}/files/")

            def put(i: int) -> None:
                self.client().put_object(Bucket=s3.bucket, Key=self.key(i),
                                         Body=db.sample_bytes(i, p.size))
            with concurrent.futures.ThreadPoolExecutor(self.args.s3_threads) as pool:
                list(pool.map(put, range(p.count)))
            s3.mark(f"{self.root}/files", meta)
            log_print(self.log, f"dataset: uploaded {p.count} objects of {p.size} bytes in "
                                f"{time.monotonic() - t0:.1f}s")
        if not s3.done(f"{self.root}/granary", meta):
            gd = self.db.granary_data()
            t0 = time.monotonic()
            s3.delete_prefix(f"{self.root}/granary/")
            with gd.Writer(self.granary_url, shard_bytes=512 * MIB) as w:
                for i in range(p.count):
                    w.add(db.sample_key(i), {"jpg": db.sample_bytes(i, p.size), "cls": i % 1000})
            s3.mark(f"{self.root}/granary", meta)
            log_print(self.log, f"dataset: wrote the packed dataset to {self.granary_url} in "
                                f"{time.monotonic() - t0:.1f}s")
        if not s3.done(f"{PREFIX}/ceiling/{self.args.s3_ceiling_mib}MiB", {"format": DATA_FORMAT}):
            upload_random(s3, f"{PREFIX}/ceiling/{self.args.s3_ceiling_mib}MiB",
                          self.args.s3_ceiling_mib * MIB)
            s3.mark(f"{PREFIX}/ceiling/{self.args.s3_ceiling_mib}MiB", {"format": DATA_FORMAT})

    def seed(self, name: str) -> int:
        self.runs[name] = self.runs.get(name, -1) + 1
        return self.runs[name]

    # contenders
    def run_boto3_get(self, seed: int) -> dict:
        db, p = self.db, self.point
        client, bucket = self.client(), self.s3.bucket
        keys = [self.key(i) for i in db.order(p, seed).tolist()]
        clock = time.perf_counter
        with db.Epoch(p) as e:
            for k in keys:
                t = clock()
                data = client.get_object(Bucket=bucket, Key=k)["Body"].read()
                e.touch((data,), clock() - t)
        return e.result("boto3-get")

    def run_boto3_threads(self, seed: int) -> dict:
        db, p = self.db, self.point
        client, bucket = self.client(), self.s3.bucket
        keys = [self.key(i) for i in db.order(p, seed).tolist()]

        def get(k: str) -> bytes:
            return client.get_object(Bucket=bucket, Key=k)["Body"].read()
        with db.Epoch(p) as e:
            with concurrent.futures.ThreadPoolExecutor(self.args.s3_threads) as pool:
                it = pool.map(get, keys)
                clock = time.perf_counter
                while True:
                    t = clock()
                    try:
                        data = next(it)
                    except StopIteration:
                        break
                    e.touch((data,), clock() - t)
        return e.result(f"boto3-get-t{self.args.s3_threads}")

    def loader_epoch(self, url: str, seed: int, what: str) -> dict:
        gd = self.db.granary_data()
        with self.db.Epoch(self.point) as e:
            ds = gd.Dataset(url)
            ld = gd.Loader(ds, batch_size=self.args.s3_batch_size, shuffle=True, seed=seed)
            e.consume(self.db._one_epoch(ld))
            del ld, ds
        return e.result(what)

    def run_granary_s3(self, seed: int) -> dict:
        return self.loader_epoch(self.granary_url, seed, "granary-s3")

    def run_granary_cache(self, seed: int) -> dict:
        if self.cache_query is None:
            raise SkipContender(self.failed.get(CACHE_CONTENDER, "cache not probed"))
        url = cache_url(self.granary_url, self.cache_query)
        if not self.cache_filled:
            t0 = time.monotonic()
            self.loader_epoch(url, 10_000 + seed, "granary-s3-cache (fill)")
            self.cache_filled = True
            log_print(self.log, f"dataset: filled the node-local cache in "
                                f"{time.monotonic() - t0:.1f}s (untimed)")
        return self.loader_epoch(url, seed, CACHE_CONTENDER)

    def run_granary_cache_cold(self, seed: int) -> dict:
        if self.cache_query is None:
            raise SkipContender(self.failed.get(CACHE_CONTENDER, "cache not probed"))
        cold_dir = self.cache_dir.parent / "dataset-cold"
        shutil.rmtree(cold_dir, ignore_errors=True)
        cold_dir.mkdir(parents=True)
        try:
            return self.loader_epoch(cache_url(self.granary_url,
                                               {**self.cache_query, "cache_dir": str(cold_dir)}),
                                     seed, "granary-s3-cache-cold")
        finally:
            shutil.rmtree(cold_dir, ignore_errors=True)

    def run_granary_local(self, seed: int) -> dict:
        return self.loader_epoch(str(self.point.granary), seed, "granary-local")

    def run_s3_ceiling(self, seed: int) -> dict:
        got = curl_get_ceiling(self.s3.server, self.s3.bucket,
                               f"{PREFIX}/ceiling/{self.args.s3_ceiling_mib}MiB",
                               self.args.s3_ceiling_mib * MIB, self.args.s3_ceiling_streams)
        mbps = got["MBps"]
        return {"samples_per_s": harness.Sample(mbps * MB / self.point.size, "samples/s"),
                "MBps": harness.Sample(mbps, "MB/s"),
                "cpu_s_per_1k": harness.Sample(got["cpu_s"] / (self.args.s3_ceiling_mib * MIB /
                                                               self.point.size) * 1000, "s",
                                               False)}

    def run_s3_ceiling_objects(self, seed: int) -> dict:
        p = self.point
        got = curl_get_objects(self.s3.server, self.s3.bucket,
                               f"{self.root}/files/[{self.db.sample_key(0)}-"
                               f"{self.db.sample_key(p.count - 1)}].jpg", p.count, p.size, 64)
        return {"samples_per_s": harness.Sample(p.count / got["seconds"], "samples/s"),
                "MBps": harness.Sample(got["MBps"], "MB/s"),
                "cpu_s_per_1k": harness.Sample(got["cpu_s"] / p.count * 1000, "s", False)}

    def run_disk_ceiling(self, seed: int) -> dict:
        got = self.doctor.run("randread-128k-qd32")
        m = {r["metric"]: r for r in got if r["point"] == "randread-128k-qd32"}
        iops = m["iops"]["value"]
        mbps = iops * m["iops"]["block_bytes"] / MB
        return {"samples_per_s": harness.Sample(mbps * MB / self.point.size, "samples/s"),
                "MBps": harness.Sample(mbps, "MB/s")}

    def contenders(self, names: list[str]) -> list[harness.Contender]:
        a = self.args
        t = a.s3_threads
        table = {
            "boto3-get": (self.run_boto3_get, "for i in shuffled order: s3.get_object(Bucket, "
                                              "Key)['Body'].read()"),
            "boto3-get-tN": (self.run_boto3_threads,
                             f"ThreadPoolExecutor({t}).map(lambda k: s3.get_object(Bucket, "
                             f"Key=k)['Body'].read(), shuffled keys)"),
            "granary-s3": (self.run_granary_s3,
                           f"gd.Loader(gd.Dataset('{self.granary_url}'), batch_size="
                           f"{a.s3_batch_size}, shuffle=True, seed=r)"),
            "granary-s3-cache-cold": (self.run_granary_cache_cold,
                                      f"gd.Loader(gd.Dataset('{self.granary_url}?cache_dir=DIR'),"
                                      f" ...) with DIR empty (a first epoch)"),
            CACHE_CONTENDER: (self.run_granary_cache,
                              f"gd.Loader(gd.Dataset('{self.granary_url}?cache_dir=DIR'), ...) "
                              f"after one untimed epoch"),
            "granary-local": (self.run_granary_local,
                              f"gd.Loader(gd.Dataset('{self.point.granary}'), batch_size="
                              f"{a.s3_batch_size}, shuffle=True, seed=r), page cache dropped"),
        }
        out = [harness.Contender("s3-ceiling", self.guarded("s3-ceiling", self.run_s3_ceiling),
                                 describe=lambda p: f"curl --parallel: "
                                                    f"{a.s3_ceiling_streams} ranged GETs of one "
                                                    f"{a.s3_ceiling_mib} MiB object"),
               harness.Contender("s3-ceiling-objects",
                                 self.guarded("s3-ceiling-objects", self.run_s3_ceiling_objects),
                                 describe=lambda p: "curl --parallel --parallel-max 64: one GET "
                                                    "per sample object (URL glob)"),
               harness.Contender("disk-ceiling", self.guarded("disk-ceiling",
                                                              self.run_disk_ceiling),
                                 describe=lambda p: self.doctor.describe("randread-128k-qd32"))]
        for n in names:
            fn, what = table[n]
            name = f"boto3-get-t{t}" if n == "boto3-get-tN" else n
            out.append(harness.Contender(name, self.guarded(name, fn),
                                         cold=n == "granary-local",
                                         describe=lambda p, what=what: what))
        return out

    def guarded(self, name: str, fn: Callable[[int], dict]) -> Callable[[str], dict]:
        return guarded(self, name, lambda point: fn(self.seed(name)))


def upload_random(s3: S3, key: str, nbytes: int) -> None:
    """A random object of nbytes (granary's multipart writer: 8 MiB parts in flight)."""
    import granary
    store = granary.open(s3.url(key.rsplit("/", 1)[0]))
    block = os.urandom(8 * MIB)
    with store.writer(key.rsplit("/", 1)[1]) as w:
        left = nbytes
        while left:
            n = min(left, len(block))
            w.write(memoryview(block)[:n])
            left -= n
    store.close()


def guarded(section, name: str, fn: Callable[[str], dict]) -> Callable[[str], dict]:
    """fn as a contender of `section` (harness.run_guarded: a failure drops it for the run)."""
    return lambda point: harness.run_guarded(name, lambda: fn(point), section.failed,
                                             section.log, BENCH, after=gc.collect)


# -- model section --------------------------------------------------------------------------------

def child_main(cfg: dict) -> int:
    """One model load in a fresh process: imports, "ready", waits for "go", loads, checksums
    every tensor twice, prints one JSON line (bench/model_bench.py's protocol)."""
    import model_bench as mb
    import torch
    torch.set_num_threads(cfg["threads"])
    name = cfg["contender"]
    if name.startswith("boto3"):
        client = boto3_client(1)
        client.head_object(Bucket=cfg["bucket"], Key=cfg["key"])  # connection up, as in a job
    if name == "boto3-download+load_file":
        from safetensors.torch import load_file

        def load():
            client.download_file(cfg["bucket"], cfg["key"], cfg["tmp"])
            return load_file(cfg["tmp"])
    elif name == "boto3-get+load":
        from safetensors.torch import load as st_load

        def load():
            return st_load(client.get_object(Bucket=cfg["bucket"], Key=cfg["key"])["Body"].read())
    else:
        import granary.models as gm

        def load():
            return gm.load(cfg["src"])
    mb.checksum_tensor(torch.zeros(64, dtype=torch.uint8))
    gc.collect()
    base_rss = mb._status_kib("VmRSS") * KIB
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    clock = time.perf_counter
    cpu0, t0 = mb._cpu_s(), clock()
    tensors = load()
    t_load, cpu_load = clock() - t0, mb._cpu_s() - cpu0
    t1, c1 = clock(), mb._cpu_s()
    sums = {k: mb.checksum_tensor(t) for k, t in tensors.items()}
    t_check1, cpu_check1 = clock() - t1, mb._cpu_s() - c1
    t2, c2 = clock(), mb._cpu_s()
    for k, t in tensors.items():
        if mb.checksum_tensor(t) != sums[k]:
            raise RuntimeError(f"{k}: checksum changed between two passes")
    t_check2, cpu_check2 = clock() - t2, mb._cpu_s() - c2
    print(json.dumps({"t_load": t_load, "t_check1": t_check1, "t_check2": t_check2,
                      "cpu_load": cpu_load, "cpu_check1": cpu_check1, "cpu_check2": cpu_check2,
                      "peak_rss": mb._status_kib("VmHWM") * KIB, "base_rss": base_rss,
                      "sums": {k: str(v) for k, v in sums.items()}}), flush=True)
    return 0


class ModelSection:
    def __init__(self, args, s3: S3, doctor: Doctor, log):
        import model_bench as mb
        self.mb = mb
        self.args = args
        self.s3 = s3
        self.doctor = doctor
        self.log = log
        self.model = mb.Model(Path(args.s3_data_dir) / "models", args.s3_model_gib)
        self.label = self.model.label
        self.key = f"{PREFIX}/model/{self.label}/model.safetensors"
        self.url = s3.url(self.key)
        self.local = self.model.files("single")[0]
        self.tmp = Path(args.s3_data_dir) / "download" / "model.safetensors"
        self.cache_dir = Path(args.s3_data_dir) / "cache" / "model"
        self.cache_query: dict | None = None
        self.cache_filled = False
        self.failed: dict[str, str] = {}
        self.mismatches: list[str] = []
        self.cold_ok = True
        self.threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or min(2, os.cpu_count()
                                                                                or 1)

    def generate(self) -> None:
        self.model.generate(["single"], self.log)
        meta = {"format": DATA_FORMAT, "bytes": self.local.stat().st_size}
        if not self.s3.done(self.key, meta):
            t0 = time.monotonic()
            self.s3.client.upload_file(str(self.local), self.s3.bucket, self.key)
            self.s3.mark(self.key, meta)
            log_print(self.log, f"model: uploaded {self.label} ({meta['bytes']:,} bytes) in "
                                f"{time.monotonic() - t0:.1f}s")
        log_print(self.log, f"model {self.label}: {self.model.describe()}")

    def run_child(self, name: str, fill: bool = False) -> dict:
        src = self.url
        if name == CACHE_CONTENDER:
            if self.cache_query is None:
                raise SkipContender(self.failed.get(CACHE_CONTENDER, "cache not probed"))
            src = cache_url(self.url, self.cache_query)
            if not self.cache_filled and not fill:
                t0 = time.monotonic()
                self.run_child(name, fill=True)
                self.cache_filled = True
                log_print(self.log, f"model: filled the node-local cache in "
                                    f"{time.monotonic() - t0:.1f}s (untimed)")
        elif name == "granary-local":
            src = str(self.local)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        cfg = {"contender": name, "src": src, "bucket": self.s3.bucket, "key": self.key,
               "tmp": str(self.tmp), "threads": self.threads}
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child",
                                 json.dumps(cfg)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                _, err = proc.communicate()
                raise RuntimeError(f"{name}: child did not start: {(line + err).strip()[-800:]}")
            if name == "granary-local":
                if self.args.no_drop_caches or not harness.drop_page_cache(self.log):
                    self.cold_ok = False
            out, err = proc.communicate("go\n", timeout=self.args.s3_timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.tmp.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: child failed (exit {proc.returncode}): "
                               f"{err.strip()[-1500:]}")
        got = json.loads(out.strip().splitlines()[-1])
        self.verify(name, {k: int(v) for k, v in got["sums"].items()})
        n = self.model.nbytes
        load_s = got["t_load"] + max(0.0, got["t_check1"] - got["t_check2"])
        cpu = got["cpu_load"] + max(0.0, got["cpu_check1"] - got["cpu_check2"])
        return {"MBps": harness.Sample(n / max(load_s, 1e-9) / MB, "MB/s"),
                "load_s": harness.Sample(load_s, "s", False),
                "peak_rss_MiB": harness.Sample(max(0, got["peak_rss"] - got["base_rss"]) / MIB,
                                               "MiB", False),
                "cpu_s_per_GB": harness.Sample(max(cpu, 0.0) / (n / 1e9), "s", False)}

    def verify(self, name: str, sums: dict[str, int]) -> None:
        want = self.model.sums
        if sums == want:
            return
        wrong = sorted(k for k in set(want) | set(sums) if want.get(k) != sums.get(k))
        msg = f"{name}: CHECKSUM MISMATCH in {len(wrong)} tensors {wrong[:3]}"
        self.mismatches.append(msg)
        raise RuntimeError(msg)

    def run_s3_ceiling(self) -> dict:
        size = self.local.stat().st_size
        got = curl_get_ceiling(self.s3.server, self.s3.bucket, self.key, size,
                               self.args.s3_ceiling_streams)
        return {"MBps": harness.Sample(got["MBps"], "MB/s"),
                "load_s": harness.Sample(got["seconds"], "s", False)}

    def run_disk_ceiling(self) -> dict:
        got = self.doctor.run("seqread-1m,seqread-4m")
        best = max(r["value"] for r in got if r["metric"] == "bandwidth") * MIB / MB
        return {"MBps": harness.Sample(best, "MB/s"),
                "load_s": harness.Sample(self.model.nbytes / (best * MB), "s", False)}

    def contenders(self, names: list[str]) -> list[harness.Contender]:
        what = {
            "granary-s3": f"granary.models.load('{self.url}')",
            CACHE_CONTENDER: f"granary.models.load('{self.url}?cache_dir=DIR') after one "
                             f"untimed load",
            "boto3-download+load_file": "s3.download_file(bucket, key, tmp); "
                                        "safetensors.torch.load_file(tmp)",
            "boto3-get+load": "safetensors.torch.load(s3.get_object(Bucket, Key)['Body'].read())",
            "granary-local": f"granary.models.load('{self.local}'), page cache dropped",
        }
        out = [harness.Contender("s3-ceiling", guarded(self, "s3-ceiling",
                                                       lambda p: self.run_s3_ceiling()),
                                 describe=lambda p: f"curl --parallel: "
                                                    f"{self.args.s3_ceiling_streams} ranged GETs "
                                                    f"of the model object"),
               harness.Contender("disk-ceiling", guarded(self, "disk-ceiling",
                                                         lambda p: self.run_disk_ceiling()),
                                 describe=lambda p: self.doctor.describe(
                                     "seqread-1m,seqread-4m") + " (the better one)")]
        for n in names:
            out.append(harness.Contender(n, guarded(self, n, lambda p, n=n: self.run_child(n)),
                                         describe=lambda p, n=n: what[n]))
        return out


# -- checkpoint section ---------------------------------------------------------------------------

class CheckpointSection:
    def __init__(self, args, s3: S3, log):
        import checkpoint_bench as cb
        self.cb = cb
        cb._import_torch()
        self.args = args
        self.s3 = s3
        self.log = log
        self.label = f"{args.s3_checkpoint_gib:g}GiB"
        self.state = cb.make_state(int(args.s3_checkpoint_gib * GIB), self.label, log)
        self.root = f"{PREFIX}/ckpt/{os.getpid()}"
        self.failed: dict[str, str] = {}
        self.ckpt = None
        self.step = 0
        self.first_stall: float | None = None

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()
            self.ckpt = None
        self.s3.delete_prefix(self.root + "/")

    def run_granary_ckpt(self) -> dict:
        import granary
        if self.ckpt is None:
            self.ckpt = granary.Checkpointer(self.s3.url(f"{self.root}/granary"), keep_last=2,
                                             incremental=False)
            t0 = time.perf_counter()
            h = self.ckpt.save(0, self.state.tensors)
            self.first_stall = time.perf_counter() - t0
            h.wait()
        self.step += 1
        t0 = time.perf_counter()
        h = self.ckpt.save(self.step, self.state.tensors)
        stall = time.perf_counter() - t0
        h.wait()
        durable = time.perf_counter() - t0
        if self.step not in self.ckpt.steps():
            raise RuntimeError(f"step {self.step} is not listed after it became durable")
        out = self.samples(stall, durable)
        out["first_stall_s"] = harness.Sample(self.first_stall, "s", False)
        return out

    def run_granary_writer(self) -> dict:
        import granary
        torch = self.cb.torch
        key = "writer/state.pt"
        store = granary.open(self.s3.url(self.root))
        try:
            t0 = time.perf_counter()
            with store.writer(key) as w:
                torch.save(self.state.tensors, w)
            secs = time.perf_counter() - t0
            if store.stat(key).size <= self.state.nbytes:
                raise RuntimeError(f"{key}: {store.stat(key).size} bytes, less than the state")
            store.delete(key)
        finally:
            store.close()
        return self.samples(secs, secs)

    def run_boto3_upload(self) -> dict:
        torch = self.cb.torch
        key = f"{self.root}/boto3/state.pt"
        t0 = time.perf_counter()
        buf = io.BytesIO()
        torch.save(self.state.tensors, buf)
        ser = time.perf_counter() - t0
        n = buf.tell()
        buf.seek(0)
        self.s3.client.upload_fileobj(buf, self.s3.bucket, key)
        secs = time.perf_counter() - t0
        del buf
        self.cb.release_memory()
        size = self.s3.client.head_object(Bucket=self.s3.bucket, Key=key)["ContentLength"]
        if size != n:
            raise RuntimeError(f"{key}: {size} bytes uploaded of {n}")
        self.s3.client.delete_object(Bucket=self.s3.bucket, Key=key)
        out = self.samples(secs, secs)
        out["serialize_s"] = harness.Sample(ser, "s", False)
        return out

    def run_s3_ceiling(self) -> dict:
        got = curl_put_ceiling(self.s3.server, self.s3.bucket, f"{self.root}/ceiling",
                               self.state.nbytes, self.args.s3_ceiling_streams, self.s3)
        return {"durable_s": harness.Sample(self.state.nbytes / (got["MBps"] * MB), "s", False),
                "write_MBps": harness.Sample(got["MBps"], "MB/s")}

    def samples(self, stall: float, durable: float) -> dict:
        return {"stall_s": harness.Sample(stall, "s", False),
                "durable_s": harness.Sample(durable, "s", False),
                "write_MBps": harness.Sample(self.state.nbytes / durable / MB, "MB/s")}

    def contenders(self, names: list[str]) -> list[harness.Contender]:
        a = self.args
        table = {
            "granary-ckpt": (self.run_granary_ckpt,
                             "granary.Checkpointer(s3 url, keep_last=2, incremental=False)"
                             ".save(step, state) then handle.wait(); one Checkpointer per run"),
            "granary-writer": (self.run_granary_writer,
                               "with granary.open(s3 url).writer(key) as w: torch.save(state, w)"),
            "boto3-upload": (self.run_boto3_upload,
                             "buf = io.BytesIO(); torch.save(state, buf); "
                             "s3.upload_fileobj(buf, bucket, key)"),
        }
        out = [harness.Contender("s3-ceiling", guarded(self, "s3-ceiling",
                                                       lambda p: self.run_s3_ceiling()),
                                 describe=lambda p: f"curl --parallel: {a.s3_ceiling_streams} PUTs "
                                                    f"of state bytes / {a.s3_ceiling_streams} "
                                                    f"from /dev/shm")]
        for n in names:
            fn, what = table[n]
            out.append(harness.Contender(n, guarded(self, n, lambda p, fn=fn: fn()),
                                         describe=lambda p, what=what: what))
        return out


# -- results --------------------------------------------------------------------------------------

class _Null:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def _paired(values, ceilings, higher: bool):
    if len(values) != len(ceilings):
        return None
    return harness._round(harness.paired_ratio(values, ceilings, higher))


def finish(results: list[dict], baseline: str | None, out, extra: dict) -> list[dict]:
    """Adds ratio_disk (against disk-ceiling), x_boto3 (against the baseline contender) and
    `extra` to every result, then prints them."""
    by = {(r["contender"], r["what"]): r for r in results}
    for r in results:
        r.update(extra)
        higher = r["higher_is_better"]
        ceiling = r["contender"] in CEILINGS
        disk = by.get(("disk-ceiling", r["what"]))
        if disk and not ceiling:
            r["ceiling_disk"] = disk["value"]
            r["ratio_disk"] = harness._round(harness.ratio(r["value"], disk["value"], higher))
            r["paired_ratio_disk"] = _paired(r["samples"], disk["samples"], higher)
        objects = by.get(("s3-ceiling-objects", r["what"]))
        if objects and not ceiling:
            r["ceiling_objects"] = objects["value"]
            r["ratio_objects"] = harness._round(harness.ratio(r["value"], objects["value"],
                                                              higher))
        base = by.get((baseline, r["what"])) if baseline else None
        if base and not ceiling and r["contender"] != baseline:
            r["x_boto3"] = harness._round(harness.ratio(r["value"], base["value"], higher))
            r["x_boto3_paired"] = _paired(r["samples"], base["samples"], higher)
            r["boto3_baseline"] = baseline
        harness.emit(r, out)
    return results


def _num(v) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if abs(v) < 10 else harness._fmt(v)


def _q(r: dict | None, key: str, paired: str | None = None) -> str:
    if not r or r.get(key) is None:
        return ""
    s = f"{r[key]:.2f}"
    if paired and r.get(paired) is not None:
        s += f" ({r[paired]:.2f})"
    return s


def markdown_table(results: list[dict]) -> str:
    lines: list[str] = []
    specs = [
        (DATASET_BENCH, "samples_per_s",
         [("samples/s", "samples_per_s"), ("MB/s", "MBps"), ("p50 us", "sample_p50_us"),
          ("p99 us", "sample_p99_us"), ("CPU s / 1k", "cpu_s_per_1k")],
         "Dataset: one epoch in a shuffled order, every byte CRC'd. / S3 ceiling: against "
         "curl's parallel ranged GETs (MB/s; samples/s = MB/s / sample bytes); / disk: against "
         "doctor's O_DIRECT 128 KiB QD 32 random reads; / S3 per-object ceiling: against curl "
         "GETting every sample object, 64 at once; x boto3: against one get_object per sample."),
        (MODEL_BENCH, "MBps",
         [("MB/s", "MBps"), ("load s", "load_s"), ("peak RSS MiB", "peak_rss_MiB"),
          ("CPU s / GB", "cpu_s_per_GB")],
         "Model: a fresh process per load, every tensor checksummed (an mmap'ed load pays its "
         "page faults). / S3 ceiling: curl's parallel ranged GETs of the same object; / disk: "
         "doctor's O_DIRECT sequential read; x boto3: against get_object + safetensors.load."),
        (CKPT_BENCH, "write_MBps",
         [("stall s", "stall_s"), ("durable s", "durable_s"), ("write MB/s", "write_MBps"),
          ("first stall s", "first_stall_s"), ("serialize s", "serialize_s")],
         "Checkpoint write: stall = the training loop blocked; durable = until the object(s) "
         "are committed in S3. / S3 ceiling: write MB/s against curl's parallel PUTs; x boto3: "
         "against torch.save to BytesIO + upload_fileobj (durable s)."),
    ]
    for bench, main, cols, note in specs:
        rows: dict[tuple[str, str], dict[str, dict]] = {}
        for r in results:
            if r["bench"] != bench:
                continue
            point, metric = r["what"].split(" ", 1)
            rows.setdefault((point, r["contender"]), {})[metric] = r
        if not rows:
            continue
        if lines:
            lines.append("")
        x_metric = "durable_s" if bench == CKPT_BENCH else main
        head = ["point", "contender"] + [c for c, _ in cols] + ["/ S3 ceiling (paired)"]
        if bench != CKPT_BENCH:
            head.append("/ disk (paired)")
        if bench == DATASET_BENCH:
            head.append("/ S3 per-object ceiling")
        head += ["x boto3 (paired)", "n"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|---|" + "---:|" * (len(head) - 2))
        points = list(dict.fromkeys(p for p, _ in rows))
        for p in points:
            names = [c for q, c in rows if q == p and c not in CEILINGS]
            names += [c for c in CEILINGS if (p, c) in rows]
            for c in names:
                m = rows[(p, c)]
                cells = [_num(m[k]["value"]) if k in m else "" for _, k in cols]
                r = m.get(main)
                ceil = "" if c in CEILINGS else _q(r, "ratio", "paired_ratio")
                cells.append(ceil)
                if bench != CKPT_BENCH:
                    cells.append(_q(r, "ratio_disk", "paired_ratio_disk"))
                if bench == DATASET_BENCH:
                    cells.append(_q(r, "ratio_objects"))
                cells.append(_q(m.get(x_metric), "x_boto3", "x_boto3_paired"))
                n = max(x["median_of"] for x in m.values())
                name = {"s3-ceiling": "ceiling: S3 loopback (curl)",
                        "s3-ceiling-objects": "ceiling: S3, one GET per sample (curl)",
                        "disk-ceiling": "ceiling: local disk (doctor)"}.get(c, c)
                lines.append(f"| {p} | {name} | " + " | ".join(cells) + f" | {n} |")
        lines.append("")
        lines.append(note)
    return "\n".join(lines)


# -- driver ---------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """Options of this benchmark, all spelled --s3-*. With standalone=False the options shared
    with the other benchmarks of run_all.py (--rounds, --granary, --quick, --no-drop-caches) are
    left to the caller."""
    if standalone:
        parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                            help=f"rounds (default {DEFAULT_ROUNDS})")
        parser.add_argument("--granary", default=None, help="path of the granary binary")
        parser.add_argument("--quick", action="store_true",
                            help="tiny sizes (4 MiB dataset, 0.01 GiB model, 0.03 GiB checkpoint)")
        parser.add_argument("--no-drop-caches", action="store_true",
                            help="do not drop the page cache (results then say cold: false)")
        parser.add_argument("--jsonl", default=None, help="also append the JSON lines to FILE")
    p = parser.add_argument
    p("--s3-sections", default=",".join(SECTIONS),
      help=f"comma-separated subset of {','.join(SECTIONS)}")
    p("--s3-contenders", default=None,
      help="comma-separated contenders to run in every section that has them (default all: "
           f"{','.join(dict.fromkeys(DATASET_CONTENDERS + MODEL_CONTENDERS + CKPT_CONTENDERS))})")
    p("--s3-dataset-mib", type=float, default=None, help="dataset size in MiB (1024; 4 quick)")
    p("--s3-sample-kib", type=int, default=100, help="sample size in KiB (100)")
    p("--s3-batch-size", type=int, default=256, help="Loader batch size (256)")
    p("--s3-threads", type=int, default=16, help="threads of boto3-get-tN (16)")
    p("--s3-model-gib", type=float, default=None, help="model size in GiB (1; 0.01 quick)")
    p("--s3-checkpoint-gib", type=float, default=None,
      help="checkpoint state size in GiB (2; 0.03 quick)")
    p("--s3-ceiling-mib", type=int, default=None,
      help="object size of the dataset's S3 GET ceiling in MiB (1024; 32 quick)")
    p("--s3-ceiling-streams", type=int, default=8,
      help="parallel curl transfers of the S3 ceilings (8)")
    p("--s3-cache-bytes-gib", type=float, default=None,
      help="granary node-local cache size for the cache contenders (8; 1 quick)")
    p("--s3-bucket", default="granary-bench", help="bucket (created if missing)")
    p("--s3-data-dir", default=os.environ.get("GRANARY_BENCH_S3_DATA", "/work/bench-data/s3"),
      help="local copies, doctor's file and cache dirs (default: $GRANARY_BENCH_S3_DATA or "
           "/work/bench-data/s3)")
    p("--s3-doctor-size-mib", type=int, default=None,
      help="doctor's test file for the disk ceilings (1024; 16 quick)")
    p("--s3-doctor-runtime-s", type=float, default=None,
      help="seconds of doctor's random-read run (2; 0.3 quick)")
    p("--s3-memstore-gib", type=float, default=12.0,
      help="RAM of the RGW started when GRANARY_TEST_S3_ENDPOINT is unset (12)")
    p("--s3-timeout-s", type=float, default=1800.0, help="seconds a model load may take")


def _names(chosen: list[str] | None, known: list[str]) -> list[str]:
    return list(known) if chosen is None else [c for c in known if c in chosen]


def run(args: argparse.Namespace, out=sys.stdout, log=sys.stderr) -> list[dict]:
    """Runs the benchmark; prints JSON lines to `out` and returns the results."""
    for k, full in FULL.items():
        if getattr(args, k, None) is None:
            setattr(args, k, QUICK[k] if args.quick else full)
    sections = [s for s in args.s3_sections.split(",") if s]
    chosen = None if args.s3_contenders is None else [c for c in args.s3_contenders.split(",")
                                                       if c]
    known = set(DATASET_CONTENDERS + MODEL_CONTENDERS + CKPT_CONTENDERS)
    bad = [s for s in sections if s not in SECTIONS] + [c for c in chosen or [] if c not in known]
    if bad:
        raise SystemExit(f"{BENCH}: unknown sections or contenders {bad}")
    import doctor_vs_fio
    granary_bin = doctor_vs_fio.find_granary(args.granary)
    data_dir = Path(args.s3_data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    args.s3_data_dir = str(data_dir)
    try:
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 2)
    except ImportError:
        pass
    results: list[dict] = []
    notes: list[str] = []
    try:
        server = Server(args, log)
    except (OSError, RuntimeError) as e:  # no Ceph here: the other benchmarks still run
        log_print(log, f"not measured: s3: no S3 server ({e}); set GRANARY_TEST_S3_* to use one")
        return []
    try:
        s3 = S3(server, args.s3_bucket, args.s3_threads, log)
        doctor = Doctor(args, granary_bin)
        log_print(log, f"server {server.describe()}, bucket {args.s3_bucket}, sections "
                       f"{sections}, {args.rounds} rounds, data {data_dir}")
        extra = {"server": server.describe()}
        cache_bytes = int(args.s3_cache_bytes_gib * GIB)
        if "dataset" in sections:
            sec = DatasetSection(args, s3, doctor, log)
            names = _names(chosen, DATASET_CONTENDERS)
            if CACHE_CONTENDER in names or "granary-s3-cache-cold" in names:
                sec.cache_query, why = probe_cache(sec.granary_url, sec.cache_dir, cache_bytes)
                if why:
                    names.remove(CACHE_CONTENDER)
                    notes.append(f"dataset {CACHE_CONTENDER}: {why}")
            sec.generate()
            log_print(log, f"dataset {sec.label}: {sec.point.describe()}, {sec.point.count * sec.point.size / MIB:.0f} MiB")

            def drop() -> bool:
                if args.no_drop_caches or not harness.drop_page_cache(log):
                    sec.cold_ok = False
                    return False
                return True
            got = harness.Harness(DATASET_BENCH, args.rounds, out=_Null(), log=log,
                                  drop_caches=drop).run([sec.label], sec.contenders(names),
                                                        ceiling="s3-ceiling")
            for r in got:
                if "cold" in r:
                    r["cold"] = r["cold"] and sec.cold_ok
            results += finish(got, "boto3-get", out, dict(extra, sample_bytes=sec.point.size,
                                                          dataset_samples=sec.point.count))
            notes += [f"dataset {k}: {v}" for k, v in sec.failed.items()]
        if "model" in sections:
            sec = ModelSection(args, s3, doctor, log)
            names = _names(chosen, MODEL_CONTENDERS)
            if CACHE_CONTENDER in names:
                sec.cache_query, why = probe_cache(sec.url, sec.cache_dir, cache_bytes)
                if why:
                    names.remove(CACHE_CONTENDER)
                    notes.append(f"model {CACHE_CONTENDER}: {why}")
            sec.generate()
            got = harness.Harness(MODEL_BENCH, args.rounds, out=_Null(), log=log).run(
                [sec.label], sec.contenders(names), ceiling="s3-ceiling")
            for r in got:
                if r["contender"] == "granary-local":
                    r["cold"] = sec.cold_ok
            results += finish(got, "boto3-get+load", out, dict(extra,
                                                               model_bytes=sec.model.nbytes))
            notes += [f"model {k}: {v}" for k, v in sec.failed.items()]
            if sec.mismatches:
                raise RuntimeError(f"{BENCH}: checksums disagree:\n" + "\n".join(sec.mismatches))
        if "checkpoint" in sections:
            names = _names(chosen, CKPT_CONTENDERS)
            sec = CheckpointSection(args, s3, log)
            try:
                got = harness.Harness(CKPT_BENCH, args.rounds, out=_Null(), log=log).run(
                    [sec.label], sec.contenders(names), ceiling="s3-ceiling")
            finally:
                sec.close()
            results += finish(got, "boto3-upload", out, dict(extra,
                                                             state_bytes=sec.state.nbytes))
            notes += [f"checkpoint {k}: {v}" for k, v in sec.failed.items()]
            del sec
            gc.collect()
    finally:
        server.close()
    for n in notes:
        log_print(log, f"not measured: {n}")
    return results


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_main(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    started = datetime.datetime.now().astimezone()
    results = run(args)
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            for r in results:
                f.write(json.dumps(dict(r, date=started.isoformat(timespec="seconds"))) + "\n")
    print()
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
