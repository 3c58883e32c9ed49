"""Tests of the benchmark harness with fake contenders (no disk, no fio): pytest bench/."""

import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def make(name, calls, values, unit="MiB/s", higher=True, cold=False):
    it = iter(values)

    def run(point):
        calls.append((name, point))
        return {"bandwidth": harness.Sample(next(it), unit, higher)}

    return harness.Contender(name, run, cold=cold, describe=lambda p: f"{name} at {p}")


def test_interleaves_alternating_order_and_reports_medians_and_ratios():
    calls = []
    a = make("a", calls, [90, 80, 100, 85, 95])
    b = make("b", calls, [100, 100, 100, 100, 200])
    out = io.StringIO()
    h = harness.Harness("t", rounds=5, out=out, log=io.StringIO(), drop_caches=lambda: True)
    results = h.run(["p"], [a, b], ceiling="b")
    assert calls == [("a", "p"), ("b", "p"), ("b", "p"), ("a", "p"), ("a", "p"), ("b", "p"),
                     ("b", "p"), ("a", "p"), ("a", "p"), ("b", "p")]
    by = {r["contender"]: r for r in results}
    assert by["a"]["value"] == 90 and by["b"]["value"] == 100
    assert by["a"]["ratio"] == 0.9 and by["b"]["ratio"] == 1.0
    assert by["a"]["median_of"] == 5 and by["a"]["ceiling_what"] == "b at p"
    # per round: 0.9, 0.8, 1.0, 0.85, 0.475 -> median 0.85
    assert by["a"]["paired_ratio"] == 0.85
    assert by["a"]["samples"] == [90, 80, 100, 85, 95]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["contender"] for line in lines] == ["a", "b"]
    for key in ("bench", "what", "contender", "value", "unit", "median_of", "ceiling",
                "ceiling_what", "ratio"):
        assert key in lines[0]


def test_lower_is_better_ratio_is_inverted():
    assert harness.ratio(200.0, 100.0, higher_is_better=False) == 0.5
    assert harness.ratio(50.0, 100.0, higher_is_better=True) == 0.5
    assert harness.ratio(0.0, 100.0, higher_is_better=True) is None


def test_cold_contenders_drop_the_cache_before_every_run_and_report_failure():
    drops = []
    calls = []
    a = make("a", calls, [1] * 5, cold=True)
    b = make("b", calls, [1] * 5)

    def drop():
        drops.append(len(calls))
        return False

    h = harness.Harness("t", rounds=5, out=io.StringIO(), log=io.StringIO(), drop_caches=drop)
    results = h.run(["p"], [a, b], ceiling="b")
    assert len(drops) == 5
    assert {r["contender"]: r.get("cold") for r in results} == {"a": False, "b": None}


def test_markdown_table_puts_ceiling_last_and_marks_low_ratios():
    calls = []
    a = make("a", calls, [50] * 5)
    b = make("b", calls, [100] * 5)
    h = harness.Harness("t", rounds=5, out=io.StringIO(), log=io.StringIO())
    table = harness.markdown_table(h.run(["p"], [b, a], ceiling="b"))
    header, _, row = table.splitlines()
    assert header.split("|")[4:8] == [" a ", " b ", " ratio ", " paired ratio "]
    assert row.count("**0.50**") == 2


def test_median_even_and_odd():
    assert harness.median([3, 1, 2]) == 2
    assert harness.median([4, 1, 3, 2]) == 2.5
