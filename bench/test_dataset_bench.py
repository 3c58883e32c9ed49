"""Quick end-to-end tests of bench/dataset_bench.py (tiny data sets, 1 round, every section; well
under a minute): pytest bench/test_dataset_bench.py.

Everything runs for real, granary.data included: the data is generated into a temporary
directory, every contender reads it, and the CRC check of each epoch holds. The page cache is not
dropped (that would slow everyone else on the machine down), so the numbers mean nothing.
"""

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dataset_bench as db  # noqa: E402
import doctor_vs_fio  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("webdataset")

METRICS = ("samples_per_s", "MBps", "sample_p50_us", "sample_p99_us", "cpu_s_per_1k")


def _granary_bin():
    try:
        return doctor_vs_fio.find_granary(None)
    except SystemExit:
        pytest.skip("no granary binary (make)")


def _perfile_bin():
    try:
        return db.find_perfile(None)
    except db.SkipContender:
        pytest.skip("no granary_bench_perfile (make build)")


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    db.add_arguments(parser)
    return parser.parse_args(
        ["--quick", "--rounds", "1", "--data-dir", str(tmp_path / "data"), "--no-drop-caches",
         "--ds-points", "16k:600,128k:120", "--ds-perfile-threads", "1,4",
         "--ds-batch-size", "64", "--ds-wds-shard-mib", "1", "--ds-doctor-size-mib", "16",
         "--ds-doctor-runtime-s", "0.3", "--ds-index-samples", "20000", "--ds-au-batch", "20",
         "--ds-au-compute-s", "0.002", "--ds-au-max", "2", *extra])


def test_every_contender_and_section_reports(tmp_path):
    _granary_bin()
    _perfile_bin()
    out, log = io.StringIO(), io.StringIO()
    results = db.run(_args(tmp_path), out=out, log=log)
    text = log.getvalue()
    assert "FAILED" not in text and "skipping" not in text, text
    got = {(r["bench"], r["contender"], r["what"]): r for r in results}
    names = [c for c in db.CONTENDERS if c != "cpp-perfile"] + ["cpp-perfile-t1",
                                                                "cpp-perfile-t4"]
    for point in ("16k", "128k"):
        for c in names:
            for m in METRICS:
                assert ("dataset", c, f"{point} {m}") in got, (c, point, m, text)
        ceiling = got[("dataset", "ceiling", f"{point} samples_per_s")]
        assert ceiling["is_ceiling"] and ceiling["value"] > 0
        loader = got[("dataset", "granary-loader", f"{point} samples_per_s")]
        assert loader["goal_ratio"] == db.GOAL_RATIO and loader["ratio"] is not None
        assert loader["x_python"] > 0 and loader["goal_x_python"] == db.GOAL_X_PYTHON
        assert loader["cold"] is False  # --no-drop-caches says so
    warm = got[("dataset_warm", "granary-get_batch", "16k samples_per_s")]
    assert warm["goal_value"] == db.GOAL_WARM_SAMPLES_PER_S and warm["ratio"] is not None
    assert ("dataset_warm", "granary-get_batch", "16k read_samples_per_s") in got
    assert ("dataset_warm", "python-perfile", "16k read_samples_per_s") in got
    index = got[("dataset_index", "granary", "20000 samples index_bytes_per_sample")]
    assert 0 < index["value"] <= 64 and index["index_disk_bytes_per_sample"] > 0
    assert got[("dataset_index", "granary", "20000 samples open_s cold")]["value"] > 0
    assert got[("dataset_resume", "granary-loader", "16k resume_ms cold")]["value"] > 0
    for c in db.AU_CONTENDERS:
        r = got[("dataset_au", c, "128k max_accelerators")]
        assert r["value"] >= 0
        assert ("dataset_au", c, "128k N=1 au_mean") in got
    assert got[("dataset_au", "ceiling", "128k max_accelerators")]["value"] > 0
    assert len(out.getvalue().splitlines()) == len(results)
    for line in out.getvalue().splitlines():
        json.loads(line)
    table = db.markdown_table(results)
    for c in names:
        assert f"| 16k | {c} |" in table and f"| 128k | {c} |" in table
    assert "ceiling: doctor randread QD32" in table and "accelerator utilization" in table
    assert "resume_ms cold" in table and "index_bytes_per_sample" in table

    # The data is reused by the next run (no regeneration) and only the chosen parts run.
    log2 = io.StringIO()
    again = db.run(_args(tmp_path, "--ds-sections", "cold", "--ds-contenders",
                         "python-perfile,granary-get_batch"), out=io.StringIO(), log=log2)
    assert "wrote" not in log2.getvalue(), log2.getvalue()
    assert {r["contender"] for r in again} == {"ceiling", "python-perfile", "granary-get_batch"}


def test_a_failing_contender_is_dropped_and_the_others_still_run(tmp_path, monkeypatch):
    _granary_bin()

    def broken(self, point, seed):
        raise OSError(5, "Input/output error (fake)")

    monkeypatch.setattr(db.Bench, "run_webdataset", broken)
    log = io.StringIO()
    results = db.run(_args(tmp_path, "--ds-sections", "cold", "--ds-contenders",
                           "python-perfile,webdataset"), out=io.StringIO(), log=log)
    assert "webdataset FAILED" in log.getvalue() and "Input/output error" in log.getvalue()
    assert {r["contender"] for r in results} == {"ceiling", "python-perfile"}


def test_an_epoch_that_misses_or_repeats_a_sample_fails(tmp_path):
    p = db.Point(tmp_path, "16k", 16 * 1024, 10)
    db.generate(p, [], 1, io.StringIO())
    crc = db.crc32c()
    total = sum(crc(db.sample_bytes(i, p.size)) for i in range(10))
    db.check_epoch(p, "ok", 10, total % (1 << 64))
    with pytest.raises(RuntimeError, match="missed or repeated"):
        db.check_epoch(p, "short", 9, (total - crc(db.sample_bytes(3, p.size))) % (1 << 64))
    with pytest.raises(RuntimeError, match="missed or repeated"):
        repeated = total - crc(db.sample_bytes(3, p.size)) + crc(db.sample_bytes(4, p.size))
        db.check_epoch(p, "repeat", 10, repeated % (1 << 64))


def test_perfile_reader_reads_every_file_in_order_with_threads(tmp_path):
    binary = _perfile_bin()
    crc = db.crc32c()
    paths, want = [], 0
    for i in range(50):
        f = tmp_path / f"{i}.bin"
        data = db.sample_bytes(i, 1000 + 37 * i)
        f.write_bytes(data)
        paths.append(str(f))
        want += crc(data)
    lst = tmp_path / "list"
    lst.write_text("\n".join(paths) + "\n")
    for threads in (1, 3):
        got = json.loads(subprocess.run([binary, "--list", str(lst), "--threads", str(threads)],
                                        check=True, capture_output=True, text=True).stdout)
        assert got["samples"] == 50 and got["crc_sum"] == want % (1 << 64)
        assert got["bytes"] == sum(1000 + 37 * i for i in range(50)) and got["p99_us"] > 0
    got = json.loads(subprocess.run([binary, "--threads", "2"], input="\n".join(paths[:5]),
                                    check=True, capture_output=True, text=True).stdout)
    assert got["samples"] == 5
    bad = subprocess.run([binary, "--list", "-"], input=str(tmp_path / "missing"),
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "missing" in bad.stderr
