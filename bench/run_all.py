#!/usr/bin/env python3
"""Runs every granary benchmark (`make bench`): JSON lines as results arrive, then one Markdown
table of all of them. Benchmarks: doctor_vs_fio (granary doctor against fio), checkpoint
(checkpoint_bench.py: granary's checkpointer against torch.save and torch.distributed.checkpoint,
plus a training loop that saves while it trains), dataset (dataset_bench.py: granary's Loader and
get_batch against one-file-per-sample readers, WebDataset and the disk's random-read ceiling,
cold; warm get_batch; a 100M-sample index; resume; accelerator utilization), model
(model_bench.py: loading safetensors and torch.save files with safetensors, torch.load and
granary.models against the disk's sequential-read and memcpy ceilings, cold and warm), s3
(s3_bench.py: a packed dataset, a model and a checkpoint over S3 against boto3, the loopback
server's ceiling and the local disk; starts its own Ceph RGW unless GRANARY_TEST_S3_ENDPOINT is
set).

Usage: run_all.py [--rounds 5] [--quick] [--skip BENCH,...] [--bench BENCH,...] [--dir DIR]
                  [--jsonl FILE] [--granary PATH]
                  doctor_vs_fio: [--size-mib N] [--runtime-s S] [--only POINTS] [--fio PATH]
                  checkpoint: [--sizes-gib 2,8] [--contenders ...] [--no-train] ...
                  (see checkpoint_bench.py --help)
                  dataset: [--data-dir DIR] [--ds-sections cold,warm,index,resume,au]
                  [--ds-points 16k:200000,128k:50000] ... (see dataset_bench.py --help)
                  model: [--model-sizes-gib 2,8] [--model-layouts single,sharded]
                  [--model-cache cold,warm] [--model-contenders ...] [--model-data-dir DIR]
                  (see model_bench.py --help)
                  s3: [--s3-sections dataset,model,checkpoint] [--s3-dataset-mib 1024]
                  [--s3-model-gib 1] [--s3-checkpoint-gib 2] [--s3-contenders ...]
                  (see s3_bench.py --help)
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
import checkpoint_bench  # noqa: E402
import dataset_bench  # noqa: E402
import doctor_vs_fio  # noqa: E402
import harness  # noqa: E402
import model_bench  # noqa: E402
import s3_bench  # noqa: E402

BENCHES = {"doctor_vs_fio": doctor_vs_fio, "checkpoint": checkpoint_bench,
           "dataset": dataset_bench, "model": model_bench, "s3": s3_bench}


def goal(result: dict) -> float:
    """The ratio a result should reach: its goal_ratio (checkpoint: granary's contenders only),
    0.9 for doctor_vs_fio, none (0) otherwise."""
    if result.get("goal_ratio") is not None:
        return result["goal_ratio"]
    return 0.9 if result["bench"] == doctor_vs_fio.BENCH else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    doctor_vs_fio.add_arguments(parser)
    checkpoint_bench.add_arguments(parser, standalone=False)
    dataset_bench.add_arguments(parser, standalone=False)
    model_bench.add_arguments(parser, standalone=False)
    s3_bench.add_arguments(parser, standalone=False)
    parser.add_argument("--jsonl", default=None, help="also append the JSON lines to FILE")
    parser.add_argument("--bench", default=",".join(BENCHES),
                        help=f"benchmarks to run, comma-separated (default: {','.join(BENCHES)})")
    parser.add_argument("--skip", default="", help="benchmarks to leave out, comma-separated")
    args = parser.parse_args()
    chosen = [b for b in args.bench.split(",") if b]
    skip = [b for b in args.skip.split(",") if b]
    unknown = [b for b in chosen + skip if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")
    chosen = [b for b in chosen if b not in skip]

    started = datetime.datetime.now().astimezone()
    results: list[dict] = []
    for name in chosen:
        results += BENCHES[name].run(args)

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
    doctor = [r for r in results if r["bench"] == doctor_vs_fio.BENCH]
    if doctor:
        print(harness.markdown_table(doctor))
    ckpt = [r for r in results if r["bench"] in (checkpoint_bench.BENCH,
                                                  checkpoint_bench.TRAIN_BENCH)]
    if ckpt:
        if doctor:
            print()
        print(checkpoint_bench.markdown_table(ckpt))
    ds = [r for r in results if r["bench"].startswith(dataset_bench.BENCH)]
    if ds:
        if doctor or ckpt:
            print()
        print(dataset_bench.markdown_table(ds))
    models = [r for r in results if r["bench"] == model_bench.BENCH]
    if models:
        if doctor or ckpt or ds:
            print()
        print(model_bench.markdown_table(models))
    s3 = [r for r in results if r["bench"].startswith(s3_bench.BENCH + "_")]
    if s3:
        if doctor or ckpt or ds or models:
            print()
        print(s3_bench.markdown_table(s3))
    low = [r for r in results if r.get("paired_ratio") is not None and not r.get("is_ceiling")
           and r["paired_ratio"] < goal(r)]
    if low:
        print()
        print(f"{len(low)} result(s) below their goal (paired ratio to the ceiling): "
              + ", ".join(f"{r['bench']} {r['contender']} {r['what']} ({r['paired_ratio']:.2f} "
                          f"< {goal(r):.2f})" for r in low))
    return 0


if __name__ == "__main__":
    sys.exit(main())
