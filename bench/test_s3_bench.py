"""Quick end-to-end test of bench/s3_bench.py (--quick: a 4 MiB dataset, a 0.01 GiB model, a
0.03 GiB checkpoint, 1 round; under a minute): pytest bench/test_s3_bench.py.

Runs against the S3 server named by GRANARY_TEST_S3_* (scripts/with-rgw.sh, or
`set -a; . DIR/env; set +a` after scripts/ceph-rgw.sh start DIR); skips without one unless
GRANARY_REQUIRE_S3=1. Everything runs for real: objects are uploaded, every contender reads or
writes them, dataset CRC sums and model checksums must match. The page cache is not dropped
(that would slow everyone else on the machine down), so the numbers mean nothing.
"""

import argparse
import io
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doctor_vs_fio  # noqa: E402
import s3_bench as sb  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("boto3")


@pytest.fixture
def s3_server():
    if not os.environ.get("GRANARY_TEST_S3_ENDPOINT"):
        if os.environ.get("GRANARY_REQUIRE_S3") == "1":
            pytest.fail("GRANARY_REQUIRE_S3=1 but GRANARY_TEST_S3_ENDPOINT is unset")
        pytest.skip("no S3 server (GRANARY_TEST_S3_ENDPOINT unset)")
    try:
        doctor_vs_fio.find_granary(None)
    except SystemExit:
        pytest.skip("no granary binary (make)")


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    sb.add_arguments(parser)
    return parser.parse_args(["--quick", "--rounds", "1", "--no-drop-caches",
                              "--s3-data-dir", str(tmp_path / "data"), "--s3-bucket",
                              "granary-bench-test", *extra])


def test_every_section_and_contender_reports(s3_server, tmp_path):
    out, log = io.StringIO(), io.StringIO()
    before = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")}
    results = sb.run(_args(tmp_path), out=out, log=log)
    text = log.getvalue()
    assert "FAILED" not in text and "MISMATCH" not in text, text
    # the AWS_* variables the run exported are restored
    assert {k: os.environ.get(k) for k in before} == before
    got = {(r["bench"], r["contender"], r["what"].split(" ", 1)[1]): r for r in results}

    def names(known, cache_why):
        return [c for c in known if c != sb.CACHE_CONTENDER or cache_why not in text]

    ds = [c if c != "boto3-get-tN" else "boto3-get-t16" for c in sb.DATASET_CONTENDERS]
    cache_note = "granary-s3-cache: not available"
    for c in names(ds, "dataset " + cache_note):
        for m in ("samples_per_s", "MBps", "sample_p99_us", "cpu_s_per_1k"):
            r = got.get((sb.DATASET_BENCH, c, m))
            assert r is not None, (c, m, text)
            assert r["value"] > 0 and r["median_of"] == 1 and r["dataset_samples"] == 40
        r = got[(sb.DATASET_BENCH, c, "MBps")]
        assert r["ceiling"] > 0 and r["ratio"] is not None and r["ratio_disk"] is not None
        if c != "boto3-get":
            assert r["x_boto3"] is not None and r["boto3_baseline"] == "boto3-get"
    assert got[(sb.DATASET_BENCH, "granary-local", "MBps")]["cold"] is False  # not dropped
    for c in names(sb.MODEL_CONTENDERS, "model " + cache_note):
        for m in ("MBps", "load_s", "peak_rss_MiB", "cpu_s_per_GB"):
            assert (sb.MODEL_BENCH, c, m) in got, (c, m, text)
        r = got[(sb.MODEL_BENCH, c, "MBps")]
        assert r["value"] > 0 and r["ratio"] is not None and r["ratio_disk"] is not None
    for c in sb.CKPT_CONTENDERS:
        for m in ("stall_s", "durable_s", "write_MBps"):
            assert (sb.CKPT_BENCH, c, m) in got, (c, m, text)
        assert got[(sb.CKPT_BENCH, c, "write_MBps")]["ratio"] is not None
    ck = got[(sb.CKPT_BENCH, "granary-ckpt", "stall_s")]
    assert ck["value"] <= got[(sb.CKPT_BENCH, "granary-ckpt", "durable_s")]["value"]
    assert (sb.CKPT_BENCH, "granary-ckpt", "first_stall_s") in got
    assert (sb.CKPT_BENCH, "boto3-upload", "serialize_s") in got
    for bench in (sb.DATASET_BENCH, sb.MODEL_BENCH, sb.CKPT_BENCH):
        assert got[(bench, "s3-ceiling", "MBps" if bench != sb.CKPT_BENCH else
                    "write_MBps")]["is_ceiling"]
    # Without granary's node-local cache the cache contender is skipped with a note, not failed.
    if cache_note in text:
        assert not any(r["contender"] == sb.CACHE_CONTENDER for r in results)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(results)
    for line in lines:
        json.loads(line)
    table = sb.markdown_table(results)
    assert "| 100KiBx40 | granary-s3 |" in table and "| 0.01GiB | boto3-get+load |" in table
    assert "ceiling: S3 loopback (curl)" in table and "| 0.03GiB | granary-ckpt |" in table

    # The uploaded data is reused by the next run, and only the chosen parts run.
    log2 = io.StringIO()
    again = sb.run(_args(tmp_path, "--s3-sections", "dataset", "--s3-contenders",
                         "granary-s3"), out=io.StringIO(), log=log2)
    assert "uploaded" not in log2.getvalue() and "wrote" not in log2.getvalue(), log2.getvalue()
    assert {r["contender"] for r in again} == {"s3-ceiling", "s3-ceiling-objects", "disk-ceiling",
                                               "granary-s3"}


def test_a_failing_contender_is_dropped_and_the_others_still_run(s3_server, tmp_path,
                                                                 monkeypatch):
    def broken(self, seed):
        raise OSError(5, "Input/output error (fake)")

    monkeypatch.setattr(sb.DatasetSection, "run_boto3_get", broken)
    log = io.StringIO()
    results = sb.run(_args(tmp_path, "--s3-sections", "dataset", "--s3-contenders",
                           "boto3-get,granary-s3"), out=io.StringIO(), log=log)
    assert "boto3-get FAILED" in log.getvalue() and "Input/output error" in log.getvalue()
    assert {r["contender"] for r in results} == {"s3-ceiling", "s3-ceiling-objects",
                                                 "disk-ceiling", "granary-s3"}


def test_cache_url_adds_the_query():
    assert sb.cache_url("s3://b/p", {"cache_dir": "/c"}) == "s3://b/p?cache_dir=/c"
    assert sb.cache_url("s3://b/p?region=x", {"cache_dir": "/c", "cache_bytes": "5"}) == \
        "s3://b/p?region=x&cache_dir=/c&cache_bytes=5"
