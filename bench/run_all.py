#!/usr/bin/env python3
"""Runs every granary benchmark (`make bench`): JSON lines as results arrive, then one Markdown
table of all of them. Benchmarks so far: doctor_vs_fio.

Usage: run_all.py [--rounds 5] [--quick] [--size-mib N] [--runtime-s S] [--dir DIR]
                  [--jsonl FILE] [--granary PATH] [--fio PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doctor_vs_fio  # noqa: E402
import harness  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    doctor_vs_fio.add_arguments(parser)
    parser.add_argument("--jsonl", default=None, help="also append the JSON lines to FILE")
    args = parser.parse_args()

    started = datetime.datetime.now().astimezone()
    results: list[dict] = []
    results += doctor_vs_fio.run(args)

    if args.jsonl:
        with open(args.jsonl, "a") as f:
            for r in results:
                f.write(json.dumps(dict(r, date=started.isoformat(timespec="seconds"))) + "\n")
    print()
    print(f"granary benchmarks, {started:%Y-%m-%d %H:%M %Z}, {platform.node()}, "
          f"{os.cpu_count()} cores, kernel {platform.release()}; medians of {args.rounds} "
          f"interleaved rounds; ratio = granary / ceiling of the medians (ceiling / granary for "
          f"latencies); paired ratio = median of the per-round ratios")
    print()
    print(harness.markdown_table(results))
    low = [r for r in results if r.get("paired_ratio") is not None and r["paired_ratio"] < 0.9
           and not r.get("is_ceiling")]
    if low:
        print()
        print(f"{len(low)} result(s) below 0.9 of the ceiling (paired ratio): "
              + ", ".join(f"{r['bench']} {r['what']} ({r['paired_ratio']:.2f})" for r in low))
    return 0


if __name__ == "__main__":
    sys.exit(main())
