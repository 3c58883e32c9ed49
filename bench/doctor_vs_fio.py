#!/usr/bin/env python3
"""granary doctor versus fio, point by point, on the same file system.

For every disk point of `granary doctor --list` (sequential write/read at 1 MiB QD 32 and 4 MiB
QD 16, random read at 4/16/128 KiB with QD 1 and 32), each round runs granary doctor for just
that point and the equivalent fio job, back to back (order alternating between rounds), with
the same file size, block size, queue depth and duration:

  fio --direct=1 --ioengine=io_uring --iodepth=QD --bs=BS --size=SIZE --rw=write --end_fsync=1
  fio ... --rw=read
  fio ... --rw=randread --time_based --runtime=S --lat_percentiles=1

Each tool has its own test file in DIR (doctor: granary-doctor.dat, fio: fio-bench.dat); both
are created fresh by every write point (fio: the file is removed first, so fio fallocates a new
one, as doctor does) and removed at the end. fio is the ceiling: ratio = doctor / fio (fio /
doctor for latencies), so 1.0 means doctor matches fio and the goal is >= 0.9 everywhere.

Usage: doctor_vs_fio.py [--rounds 5] [--size-mib 1024] [--runtime-s 5] [--dir DIR]
                        [--only POINT[,POINT]] [--granary PATH] [--fio PATH] [--quick]
Prints one JSON line per result (see harness.py), then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = "doctor_vs_fio"
MIB = 1 << 20


def find_granary(explicit: str | None) -> str:
    candidates = [explicit, os.environ.get("GRANARY_BIN"),
                  str(Path(sys.prefix) / "bin" / "granary"), shutil.which("granary"),
                  str(REPO / "build" / "release" / "tools" / "granary" / "granary")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise SystemExit("doctor_vs_fio: cannot find the granary binary; build it (make) or pass "
                     "--granary PATH")


def find_fio(explicit: str | None) -> str:
    fio = explicit or shutil.which("fio")
    if not fio:
        raise SystemExit("doctor_vs_fio: fio not found; apt-get install fio (or make deps)")
    return fio


def parse_json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def parse_fio_json(text: str) -> dict:
    # fio may print warnings before its JSON document.
    start = text.find("{")
    if start < 0:
        raise RuntimeError(f"fio printed no JSON: {text[:200]!r}")
    return json.loads(text[start:])


class Setup:
    def __init__(self, args: argparse.Namespace):
        self.granary = find_granary(args.granary)
        self.fio = find_fio(args.fio)
        self.dir = Path(args.dir).resolve()
        self.size_bytes = args.size_mib * MIB
        self.size_mib = args.size_mib
        self.runtime_s = args.runtime_s
        self.fio_file = self.dir / "fio-bench.dat"
        self.doctor_file = self.dir / "granary-doctor.dat"
        listed = parse_json_lines(harness.run_command(
            [self.granary, "doctor", "--list", "--json"], "granary doctor --list"))
        self.points = {p["point"]: p for p in listed if p.get("fio_rw")}
        if args.only:
            wanted = [w for w in args.only.split(",") if w]
            self.points = {k: v for k, v in self.points.items()
                           if any(k == w or k.startswith(w + "-") for w in wanted)}
        if not self.points:
            raise SystemExit("doctor_vs_fio: no points selected")
        version = harness.run_command([self.fio, "--version"], "fio --version").strip()
        self.fio_version = version

    # -- granary doctor -------------------------------------------------------------------------
    def doctor_cmd(self, point: str) -> list[str]:
        return [self.granary, "doctor", str(self.dir), "--json", "--keep-file",
                "--size-mib", str(self.size_mib), "--runtime-s", f"{self.runtime_s:g}",
                "--only", point]

    def run_doctor(self, point: str) -> dict[str, harness.Sample]:
        out = harness.run_command(self.doctor_cmd(point), f"granary doctor ({point})")
        got = {}
        for m in parse_json_lines(out):
            if m["point"] != point:
                continue
            got[m["metric"]] = harness.Sample(m["value"], m["unit"],
                                              not m["metric"].endswith("latency"))
        if not got:
            raise RuntimeError(f"granary doctor printed nothing for {point}")
        return got

    def describe_doctor(self, point: str) -> str:
        return " ".join(["granary"] + self.doctor_cmd(point)[1:])

    # -- fio ------------------------------------------------------------------------------------
    def fio_cmd(self, point: str) -> list[str]:
        p = self.points[point]
        cmd = [self.fio, f"--name={point}", f"--filename={self.fio_file}",
               f"--size={self.size_bytes}", f"--rw={p['fio_rw']}", f"--bs={p['block_bytes']}",
               f"--iodepth={p['queue_depth']}", "--direct=1", "--ioengine=io_uring",
               "--output-format=json"]
        if p["fio_rw"] == "write":
            cmd.append("--end_fsync=1")
        if p["time_based"]:
            cmd += ["--time_based", f"--runtime={int(round(self.runtime_s * 1000))}ms",
                    "--lat_percentiles=1"]
        return cmd

    def run_fio(self, point: str) -> dict[str, harness.Sample]:
        p = self.points[point]
        if p["fio_rw"] == "write":
            # A fresh file each time, as doctor's write points use: fio then fallocates it.
            self.fio_file.unlink(missing_ok=True)
        doc = parse_fio_json(harness.run_command(self.fio_cmd(point), f"fio ({point})"))
        job = doc["jobs"][0]
        if job.get("error"):
            raise RuntimeError(f"fio ({point}) reported error {job['error']}")
        side = job["write" if p["fio_rw"] == "write" else "read"]
        if not p["time_based"]:
            return {"bandwidth": harness.Sample(side["bw_bytes"] / MIB, "MiB/s")}
        pct = side["lat_ns"]["percentile"]
        return {
            "iops": harness.Sample(side["iops"], "IOPS"),
            "p50_latency": harness.Sample(pct["50.000000"] / 1e3, "us", False),
            "p99_latency": harness.Sample(pct["99.000000"] / 1e3, "us", False),
        }

    def describe_fio(self, point: str) -> str:
        cmd = self.fio_cmd(point)
        cmd[0] = f"{self.fio_version}"
        return " ".join(c for c in cmd if not c.startswith(("--output-format", "--filename")))

    def cleanup(self) -> None:
        self.fio_file.unlink(missing_ok=True)
        self.doctor_file.unlink(missing_ok=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS,
                        help="rounds per point (default 5)")
    parser.add_argument("--size-mib", type=int, default=None,
                        help="test file size for both tools (default 1024; 256 with --quick)")
    parser.add_argument("--runtime-s", type=float, default=None,
                        help="seconds per random-read run (default 5; 1 with --quick)")
    parser.add_argument("--dir", default=str(REPO / "build" / "bench"),
                        help="directory for the test files (default: build/bench in the repo)")
    parser.add_argument("--only", default="",
                        help="doctor_vs_fio point ids or prefixes, comma-separated")
    parser.add_argument("--granary", default=None, help="path of the granary binary")
    parser.add_argument("--fio", default=None, help="path of fio")
    parser.add_argument("--quick", action="store_true",
                        help="256 MiB file and 1 s random reads (rounds stay as given); in "
                             "run_all.py also checkpoint_bench.py --quick")


def run(args: argparse.Namespace, out=sys.stdout, log=sys.stderr) -> list[dict]:
    """Runs the comparison; prints JSON lines to `out` and returns the results."""
    if args.size_mib is None:
        args.size_mib = 256 if args.quick else 1024
    if args.runtime_s is None:
        args.runtime_s = 1.0 if args.quick else 5.0
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    setup = Setup(args)
    print(f"[{BENCH}] {setup.granary} vs {setup.fio_version} in {setup.dir}: "
          f"{args.size_mib} MiB files, {args.runtime_s:g} s random reads, {args.rounds} rounds, "
          f"points: {', '.join(setup.points)}", file=log, flush=True)
    contenders = [
        harness.Contender("granary", setup.run_doctor, describe=setup.describe_doctor),
        harness.Contender("fio", setup.run_fio, describe=setup.describe_fio),
    ]
    try:
        return harness.Harness(BENCH, args.rounds, out=out, log=log).run(
            list(setup.points), contenders, ceiling="fio")
    finally:
        setup.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    results = run(args)
    print()
    print(harness.markdown_table(results, ceiling="fio"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
