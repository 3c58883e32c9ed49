"""Quick end-to-end tests of bench/model_bench.py (a 0.01 GiB model, 1 round, every contender,
warm only; under a minute): pytest bench/test_model_bench.py.

Everything runs for real: the model is generated into a temporary directory in both layouts
(and as model.pt), every contender loads it in its own subprocess and checksums every byte, and
the checksums must equal those computed while writing. The page cache is not dropped (that
would slow everyone else on the machine down), so the numbers mean nothing. The granary
contenders run when granary.models is installed and are skipped (with a note) otherwise.
"""

import argparse
import io
import json
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doctor_vs_fio  # noqa: E402
import model_bench as mb  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

METRICS = ("GBps", "ttft_ms", "peak_rss_MiB", "rss_over_model_MiB", "cpu_s_per_GB", "load_s",
           "first_touch_ms")


def _granary_bin():
    try:
        return doctor_vs_fio.find_granary(None)
    except SystemExit:
        pytest.skip("no granary binary (make)")


def _args(data_dir, *extra):
    parser = argparse.ArgumentParser()
    mb.add_arguments(parser)
    return parser.parse_args(["--rounds", "1", "--sizes-gib", "0.01", "--data-dir",
                              str(data_dir), "--cache", "warm", "--doctor-size-mib", "16",
                              "--no-drop-caches", *extra])


def _have_granary_models() -> bool:
    return mb.probe("granary.load") is None


def test_every_contender_loads_every_byte(tmp_path):
    _granary_bin()
    out, log = io.StringIO(), io.StringIO()
    results = mb.run(_args(tmp_path / "data"), out=out, log=log)
    text = log.getvalue()
    assert "FAILED" not in text and "MISMATCH" not in text, text
    assert "cross-checked" in text and "not a multiple of their element size" in text
    names = [c for c in mb.CONTENDERS
             if c not in mb.GRANARY_CONTENDERS or _have_granary_models()]
    got = {(r["contender"], r["what"]): r for r in results}
    for layout in mb.LAYOUTS:
        point = f"0.01GiB/{layout}/warm"
        for c in names:
            if c in mb.TORCH_PT_CONTENDERS and layout != "single":
                assert not any(k[0] == c and k[1].startswith(point) for k in got)
                continue
            for m in METRICS:
                r = got.get((c, f"{point} {m}"))
                assert r is not None, (c, point, m, text)
                assert r["median_of"] == 1 and r["layout"] == layout and r["cache"] == "warm"
            assert got[(c, f"{point} GBps")]["value"] > 0
            assert got[(c, f"{point} GBps")]["ratio"] is not None
            assert got[(c, f"{point} GBps")]["ratio_memcpy_reused"] is not None
            assert got[(c, f"{point} peak_rss_MiB")]["value"] > 0
        ceiling = got[("ceiling", f"{point} GBps")]
        assert ceiling["is_ceiling"] and ceiling["value"] > 0
        assert got[("ceiling", f"{point} memcpy_reused_GBps")]["value"] > 0
        if _have_granary_models():
            g = got[("granary.load", f"{point} GBps")]
            assert g["goal_ratio"] == mb.GOAL_WARM_RATIO and "goal_met" in g
            assert got[("granary.load", f"{point} ttft_ms")]["goal_value"] == mb.GOAL_TTFT_MS
    assert len(out.getvalue().splitlines()) == len(results)
    for line in out.getvalue().splitlines():
        json.loads(line)
    table = mb.markdown_table(results)
    for c in names:
        assert f"| 0.01GiB/single/warm | {c} |" in table
    assert "ceiling: doctor memcpy fresh" in table

    # The data is reused by the next run (no regeneration) and only the chosen parts run.
    log2 = io.StringIO()
    again = mb.run(_args(tmp_path / "data", "--layouts", "sharded", "--contenders",
                         "st.safe_open"), out=io.StringIO(), log=log2)
    assert "wrote" not in log2.getvalue(), log2.getvalue()
    assert {r["contender"] for r in again} == {"ceiling", "st.safe_open"}


def test_files_are_spec_exact_and_misaligned(tmp_path):
    from safetensors import safe_open
    model = mb.Model(tmp_path, 0.01)
    model.generate(["single", "sharded"], io.StringIO())
    assert abs(model.nbytes - model.target) < 64 * 1024
    names = [s.name for s in model.specs]
    assert names.count(mb.ODD_NAME) == 1
    for layout in ("single", "sharded"):
        files = model.files(layout)
        for p in files:
            raw = p.read_bytes()
            n = struct.unpack("<Q", raw[:8])[0]
            assert n % 8 == 0
            hdr = json.loads(raw[8:8 + n])
            assert hdr.pop("__metadata__") == {"format": "pt"}
            spans = sorted(tuple(v["data_offsets"]) for v in hdr.values())
            assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no holes, no overlap
            with safe_open(str(p), "pt") as f:
                assert set(f.keys()) == set(hdr)
        bad, total = mb.misaligned(files)
        assert total == model.nbytes
        want = 0.5 if layout == "single" else 0.25
        assert want - 0.15 < bad / total < want + 0.15, (layout, bad / total)
    index = json.loads(model.index_path().read_text())
    assert index["metadata"]["total_size"] == model.nbytes
    assert set(index["weight_map"]) == set(names)
    assert index["weight_map"][mb.ODD_NAME] == mb.shard_name(2, 4)
    # what a reader returns checksums to what the writer computed
    with safe_open(str(model.files("single")[0]), "pt") as f:
        for name in (mb.ODD_NAME, names[-1], names[len(names) // 2 + 1]):
            assert mb.checksum_tensor(f.get_tensor(name)) == model.sums[name]


def test_a_loader_that_returns_wrong_bytes_fails_loudly(tmp_path, monkeypatch):
    _granary_bin()
    real = mb.Bench.run_child

    def corrupt(self, name, point):
        if name == "read+parse":
            key = next(iter(self.model.sums))
            self.model.sums[key] ^= 1
            try:
                return real(self, name, point)
            finally:
                self.model.sums[key] ^= 1
        return real(self, name, point)

    monkeypatch.setattr(mb.Bench, "run_child", corrupt)
    log = io.StringIO()
    with pytest.raises(RuntimeError, match="checksums disagree"):
        mb.run(_args(tmp_path / "data", "--layouts", "single", "--contenders",
                     "read+parse"), out=io.StringIO(), log=log)
    assert "read+parse FAILED" in log.getvalue() and "CHECKSUM MISMATCH" in log.getvalue()


def test_checksum_does_not_depend_on_alignment():
    import numpy as np
    data = np.random.default_rng(0).integers(0, 256, 1003, dtype=np.uint8)
    want = mb.checksum_np(data)
    buf = bytearray(2000)
    for off in range(9):
        buf[off:off + 1003] = data.tobytes()
        t = torch.frombuffer(buf, dtype=torch.uint8, count=1003, offset=off)
        assert mb.checksum_tensor(t) == want
        odd = torch.frombuffer(buf, dtype=torch.uint8, count=1002, offset=off).view(
            torch.bfloat16)
        assert mb.checksum_tensor(odd) == mb.checksum_np(data[:1002])
    summer = mb.Summer()
    summer.add(data[:16])
    summer.add(data[16:])
    assert summer.value == want
