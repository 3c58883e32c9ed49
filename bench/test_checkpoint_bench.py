"""Quick end-to-end tests of bench/checkpoint_bench.py (a 20 MiB state, 1 round, a tiny training
loop; a few seconds): pytest bench/test_checkpoint_bench.py.

granary.Checkpointer and granary.dcp are replaced by stand-ins built on torch.save and DCP's
FileSystemWriter and DefaultStager, so these tests check the benchmark's code paths whatever
state the real APIs are in. The page cache is not dropped (that would slow everyone else on
the machine down).
"""

import argparse
import io
import sys
import threading
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint_bench as cb  # noqa: E402
import doctor_vs_fio  # noqa: E402
import harness  # noqa: E402

torch = pytest.importorskip("torch")


def _granary_bin():
    try:
        return doctor_vs_fio.find_granary(None)
    except SystemExit:
        pytest.skip("no granary binary (make)")


def _path(url):
    assert url.startswith("file://")
    return Path(url[len("file://"):])


class FakeHandle:
    def __init__(self, thread, errors):
        self.thread, self.errors = thread, errors

    def wait(self):
        self.thread.join()
        if self.errors:
            raise self.errors[0]

    def done(self):
        return not self.thread.is_alive()

    def exception(self):
        return self.errors[0] if self.errors else None


def _copy_into(dst, src):
    if isinstance(dst, dict):
        for k in dst:
            if isinstance(dst[k], torch.Tensor):
                dst[k].copy_(src[k])
            else:
                _copy_into(dst[k], src[k])


class FakeCheckpointer:
    """Snapshot by clone, persist with torch.save in a thread."""
    fail = False

    def __init__(self, url, keep_last=3, incremental=True, persist_nice=19):
        assert 0 <= persist_nice <= 19
        self.persist_nice = persist_nice
        self.dir = _path(url)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.closed = False

    def save(self, step, state):
        if FakeCheckpointer.fail:
            raise OSError(28, "No space left on device (fake)")
        snap = {k: {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in v.items()}
                if k != "optim" else v for k, v in state.items()}
        errors = []

        def persist():
            try:
                with open(self.dir / f"{step}.pt", "wb") as f:
                    torch.save(snap, f)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=persist)
        t.start()
        return FakeHandle(t, errors)

    def load(self, step, into=None):
        got = torch.load(self.dir / f"{step}.pt", weights_only=True)
        _copy_into(into, got)
        return into

    def close(self):
        self.closed = True


@pytest.fixture
def fake_granary(monkeypatch):
    import granary
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    FakeCheckpointer.fail = False
    monkeypatch.setattr(granary, "Checkpointer", FakeCheckpointer, raising=False)
    mod = types.ModuleType("granary.dcp")
    mod.Writer = lambda url: dcp.FileSystemWriter(_path(url))
    mod.Reader = lambda url: dcp.FileSystemReader(_path(url))
    mod.Stager = lambda: DefaultStager(StagingOptions(False, False, False, False))
    monkeypatch.setitem(sys.modules, "granary.dcp", mod)
    monkeypatch.setattr(harness, "drop_page_cache", lambda log=None: True)
    return granary


def _args(tmp_path, **kw):
    parser = argparse.ArgumentParser()
    cb.add_arguments(parser)
    args = parser.parse_args(["--rounds", "1", "--dir", str(tmp_path), "--sizes-gib", "0.02",
                              "--train-save-every", "3", "--train-matmul-n", "128",
                              "--train-matmuls", "1", "--doctor-size-mib", "16"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_every_contender_reports_every_metric(tmp_path, fake_granary):
    _granary_bin()
    out, log = io.StringIO(), io.StringIO()
    results = cb.run(_args(tmp_path), out=out, log=log)
    got = {(r["bench"], r["contender"], r["what"].split(" ", 1)[1]): r for r in results}
    for c in cb.ALL_CONTENDERS:
        for m in ("stall_s", "durable_s", "write_GBps", "peak_rss_MiB", "disk_GB"):
            assert ("checkpoint", c, m) in got, (c, m, log.getvalue())
        if c in ("torch.save", "dcp", "granary", "granary.dcp"):
            assert ("checkpoint", c, "read_GBps") in got, (c, log.getvalue())
    for m in ("stall_s", "write_GBps", "read_GBps", "memcpy_GBps"):
        assert got[("checkpoint", "ceiling", m)]["is_ceiling"]
    r = got[("checkpoint", "granary", "write_GBps")]
    assert r["goal_ratio"] == 0.9 and r["ratio"] is not None and r["state_bytes"] > 20e6
    assert got[("checkpoint", "torch.save", "stall_s")].get("goal_ratio") is None
    for c in ("granary", "granary nice=0", "granary nice=10", "dcp.async", "granary.dcp.async",
              cb.ODIRECT_CEILING):
        for m in ("stall_ms", "durable_s", "steps_persisting"):
            assert ("checkpoint_train", c, m) in got, (c, m, log.getvalue())
        assert got[("checkpoint_train", c, "durable_s")]["value"] > 0
    assert ("checkpoint_train", "no-save", "step_ms") in got
    assert ("checkpoint_train", "no-save", "durable_s") not in got
    assert len(out.getvalue().splitlines()) == len(results)
    table = cb.markdown_table(results)
    assert "| 0.02GiB | granary |" in table and "| 0.02GiB | no-save |" in table
    assert "| 0.02GiB | granary nice=10 |" in table and "durable s while training" in table
    assert f"| 0.02GiB | {cb.ODIRECT_CEILING} |" in table
    assert "FAILED" not in log.getvalue(), log.getvalue()
    assert not (tmp_path / "checkpoint-bench").exists()


def test_missing_api_is_skipped_with_a_reason(tmp_path, monkeypatch):
    import granary
    monkeypatch.setattr(granary, "Checkpointer", None, raising=False)
    monkeypatch.setitem(sys.modules, "granary.dcp", None)
    assert "Checkpointer" in cb.probe("granary")
    assert "granary.dcp" in cb.probe("granary.dcp.async")
    assert cb.probe("torch.save") is None


def test_a_failing_contender_is_dropped_and_the_others_still_run(tmp_path, fake_granary):
    _granary_bin()
    FakeCheckpointer.fail = True
    log = io.StringIO()
    results = cb.run(_args(tmp_path, contenders="granary,torch.save", train=False),
                     out=io.StringIO(), log=log)
    assert "granary FAILED" in log.getvalue() and "No space left" in log.getvalue()
    assert {r["contender"] for r in results} == {"ceiling", "torch.save"}


@pytest.mark.parametrize("tool", ["dd", "fio"])
def test_odirect_ceiling_writes_at_least_the_state(tmp_path, tool):
    import shutil
    if not shutil.which(tool):
        pytest.skip(f"no {tool}")
    n = 3 * (1 << 20) + 12345
    w = cb.WriteProcess(cb.odirect_write_cmd(tool, tmp_path / "f", n))
    w.wait()
    assert w.done() and (tmp_path / "f").stat().st_size >= n
