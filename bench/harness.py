"""Interleaved benchmark runs: medians, a ceiling measured in the same run, and ratios.

A benchmark has measurement *points* (for example "randread-4k-qd1") and *contenders* (for
example granary doctor and fio). For each round, for each point, every contender runs once, so
slow drifts and bursts of noise from other work on the machine hit all contenders alike. The
order of contenders alternates between rounds (A B, B A, A B, ...) so that neither always runs
first, e.g. right after the other one's writes.

Each result is one JSON line:

  {"bench": "doctor_vs_fio", "what": "randread-4k-qd1 iops", "contender": "granary",
   "value": 10234.0, "unit": "IOPS", "median_of": 5, "ceiling": 10400.0,
   "ceiling_what": "fio ...", "ratio": 0.98, ...}

`value` and `ceiling` are medians over rounds. `ratio` is value / ceiling when higher is better
(bandwidth, IOPS) and ceiling / value when lower is better (latency), so a ratio of 1.0 means
"as good as the ceiling" and below 1.0 means worse, for every metric. `paired_ratio` is the
median of the per-round ratios (each contender's run against the ceiling's run of the same
round): on a shared, noisy machine it is the steadier of the two. `samples` lists the values of
every round in order.

Only the standard library and numpy are used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from typing import Callable, Iterable, Sequence, TextIO

try:
    import numpy as _np
except ImportError:  # the harness also works without numpy
    _np = None

MIN_ROUNDS = 5


@dataclasses.dataclass
class Sample:
    """One number from one run of one contender at one point."""

    value: float
    unit: str
    higher_is_better: bool = True


@dataclasses.dataclass
class Contender:
    """Something that is measured.

    run(point) returns {metric: Sample}. cold=True means every run must start with an empty page
    cache; the harness drops it before each run. describe(point) says in words (ideally as a
    command line) what the contender does at that point.
    """

    name: str
    run: Callable[[str], dict[str, Sample]]
    cold: bool = False
    describe: Callable[[str], str] | None = None

    def description(self, point: str) -> str:
        return self.describe(point) if self.describe else self.name


class SkipContender(Exception):
    """The contender cannot run here (its API is missing); the message says why."""


def run_guarded(name: str, call: Callable[[], dict], failed: dict[str, str], log: TextIO,
                tag: str, quiet: tuple[type[BaseException], ...] = (),
                after: Callable[[], object] | None = None) -> dict:
    """One run of contender `name`: call()'s samples, or {} once it has failed. A SkipContender
    or any other error is printed once (with a traceback unless it is one of `quiet`), recorded
    in `failed` and drops the contender for the rest of the run; `after` (e.g. gc.collect) runs
    after a failure so the next contender starts clean."""
    if name in failed:
        return {}
    try:
        return call()
    except SkipContender as e:
        failed[name] = str(e)
        print(f"[{tag}] skipping {name}: {e}", file=log, flush=True)
    except Exception as e:  # noqa: BLE001 - report, keep benchmarking the others
        failed[name] = f"{type(e).__name__}: {e}"
        print(f"[{tag}] {name} FAILED, dropped from this run: {type(e).__name__}: {e}", file=log,
              flush=True)
        if not isinstance(e, quiet):
            traceback.print_exc(file=log)
    if after is not None:
        after()
    return {}


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    if _np is not None:
        return float(_np.median(_np.asarray(values, dtype=float)))
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ratio(value: float, ceiling: float | None, higher_is_better: bool) -> float | None:
    """value relative to the ceiling; 1.0 = as good, < 1.0 = worse, whatever the metric."""
    if ceiling is None or value <= 0 or ceiling <= 0:
        return None
    return value / ceiling if higher_is_better else ceiling / value


def paired_ratio(values: Sequence[float], ceilings: Sequence[float],
                 higher_is_better: bool) -> float | None:
    """Median over rounds of the ratio within each round. The two runs of a round ran back to
    back, so a burst of outside noise tends to hit both; this is steadier than the ratio of the
    medians when the machine is shared."""
    if len(values) != len(ceilings) or not values:
        return None
    per_round = [ratio(v, c, higher_is_better) for v, c in zip(values, ceilings)]
    per_round = [q for q in per_round if q is not None]
    return median(per_round) if per_round else None


_cache_note_printed = False


def drop_page_cache(log: TextIO = sys.stderr) -> bool:
    """sync; echo 3 > /proc/sys/vm/drop_caches. False (and a note, once) if not permitted."""
    global _cache_note_printed
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        if not _cache_note_printed:
            print(f"note: cannot drop the page cache ({e.strerror}); cold numbers are not cold",
                  file=log, flush=True)
            _cache_note_printed = True
        return False


class Harness:
    """Runs contenders interleaved over points and rounds; emits one JSON line per result."""

    def __init__(self, bench: str, rounds: int = MIN_ROUNDS, out: TextIO = sys.stdout,
                 log: TextIO = sys.stderr, drop_caches: Callable[[], bool] | None = None):
        if rounds < 1:
            raise ValueError("rounds must be >= 1")
        if rounds < MIN_ROUNDS:
            print(f"note: {bench}: {rounds} rounds (< {MIN_ROUNDS}): medians are rough",
                  file=log, flush=True)
        self.bench = bench
        self.rounds = rounds
        self.out = out
        self.log = log
        self.drop_caches = drop_caches or (lambda: drop_page_cache(log))

    def order(self, contenders: Sequence[Contender], round_index: int) -> list[Contender]:
        """A B in even rounds, B A in odd ones (for two contenders; rotation for more)."""
        n = len(contenders)
        shift = round_index % n if n else 0
        if n == 2:
            return list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
        return list(contenders[shift:]) + list(contenders[:shift])

    def run(self, points: Sequence[str], contenders: Sequence[Contender],
            ceiling: str | None = None) -> list[dict]:
        """Measures every (point, contender) `rounds` times and returns the result dicts."""
        names = [c.name for c in contenders]
        if len(set(names)) != len(names):
            raise ValueError(f"contender names must be unique: {names}")
        if ceiling is not None and ceiling not in names:
            raise ValueError(f"ceiling {ceiling!r} is not a contender: {names}")
        # samples[point][contender][metric] = [Sample, ...]
        samples: dict[str, dict[str, dict[str, list[Sample]]]] = {
            p: {c.name: {} for c in contenders} for p in points}
        cold_ok: dict[str, bool] = {c.name: True for c in contenders}
        for r in range(self.rounds):
            for point in points:
                for c in self.order(contenders, r):
                    if c.cold and not self.drop_caches():
                        cold_ok[c.name] = False
                    start = time.monotonic()
                    got = c.run(point)
                    took = time.monotonic() - start
                    for metric, s in got.items():
                        samples[point][c.name].setdefault(metric, []).append(s)
                    shown = ", ".join(f"{m}={s.value:.6g}{s.unit}" for m, s in got.items())
                    print(f"[{self.bench}] round {r + 1}/{self.rounds} {point} {c.name}: "
                          f"{shown} ({took:.1f}s)", file=self.log, flush=True)
        results = []
        by_name = {c.name: c for c in contenders}
        for point in points:
            metrics: list[str] = []
            for c in contenders:
                for m in samples[point][c.name]:
                    if m not in metrics:
                        metrics.append(m)
            for metric in metrics:
                ceil_value = None
                ceil_what = None
                ceil_values: list[float] = []
                if ceiling is not None and samples[point][ceiling].get(metric):
                    ceil_values = [s.value for s in samples[point][ceiling][metric]]
                    ceil_value = median(ceil_values)
                    ceil_what = by_name[ceiling].description(point)
                for c in contenders:
                    got = samples[point][c.name].get(metric)
                    if not got:
                        continue
                    values = [s.value for s in got]
                    value = median(values)
                    result = {
                        "bench": self.bench,
                        "what": f"{point} {metric}",
                        "contender": c.name,
                        "value": round(value, 3),
                        "unit": got[0].unit,
                        "median_of": len(values),
                        "ceiling": None if ceil_value is None else round(ceil_value, 3),
                        "ceiling_what": ceil_what,
                        "ratio": _round(ratio(value, ceil_value, got[0].higher_is_better)),
                        "paired_ratio": _round(paired_ratio(values, ceil_values,
                                                            got[0].higher_is_better)),
                        "higher_is_better": got[0].higher_is_better,
                        "is_ceiling": c.name == ceiling,
                        "samples": [round(v, 3) for v in values],
                    }
                    if c.cold:
                        result["cold"] = cold_ok[c.name]
                    results.append(result)
                    emit(result, self.out)
        return results


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def emit(result: dict, out: TextIO = sys.stdout) -> None:
    print(json.dumps(result, sort_keys=False), file=out, flush=True)


def markdown_table(results: Iterable[dict], ceiling: str | None = None,
                   low_ratio: float = 0.9) -> str:
    """One row per (bench, what): every contender's median, the ceiling last, then for each
    non-ceiling contender its ratio and paired ratio. Ratios below `low_ratio` are bold."""
    results = list(results)
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    contenders: list[str] = []
    for r in results:
        rows.setdefault((r["bench"], r["what"]), {})[r["contender"]] = r
        if r["contender"] not in contenders:
            contenders.append(r["contender"])
    if ceiling is None:
        for r in results:
            if r.get("is_ceiling"):
                ceiling = r["contender"]
                break
    if ceiling in contenders:
        contenders.remove(ceiling)
        contenders.append(ceiling)
    others = [c for c in contenders if c != ceiling]
    ratio_columns = []
    for c in others:
        suffix = "" if len(others) == 1 else f" {c}"
        ratio_columns += [f"ratio{suffix}", f"paired ratio{suffix}"]
    header = ["bench", "what", "unit"] + contenders + ratio_columns + ["n"]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for (bench, what), by_contender in rows.items():
        any_r = next(iter(by_contender.values()))
        cells = [bench, what, any_r["unit"]]
        for c in contenders:
            r = by_contender.get(c)
            cells.append(_fmt(r["value"]) if r else "")
        for c in others:
            r = by_contender.get(c)
            for key in ("ratio", "paired_ratio"):
                q = r.get(key) if r else None
                if q is None:
                    cells.append("")
                else:
                    cells.append(f"**{q:.2f}**" if q < low_ratio else f"{q:.2f}")
        cells.append(str(any_r["median_of"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.2f}"


def run_command(cmd: Sequence[str], what: str, timeout_s: float | None = None) -> str:
    """Runs cmd and returns its stdout; raises RuntimeError with its stderr if it fails."""
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        tail = err[-1] if err else "(no output)"
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}\n"
                           f"command: {' '.join(cmd)}")
    return proc.stdout
