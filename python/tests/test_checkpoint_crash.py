"""A checkpointing process killed with SIGKILL at random moments never leaves a torn checkpoint.

Issue 3, section 4. Writers come from ckpt_crash_writer.py (forked from a zygote that imported
torch once); each trial kills one at a random moment, then a fresh Checkpointer in this process
checks that the newest committed step is at least the last one the writer reported durable and
that every committed step loads bit-exactly as what the writer saved. Reproduce a run with
GRANARY_CRASH_SEED=<the printed seed>; set GRANARY_CRASH_TRIALS to run more or fewer trials.
"""

from __future__ import annotations

import os
import pathlib
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Tuple

import pytest

torch = pytest.importorskip("torch")

import granary  # noqa: E402
from ckpt_crash_writer import KEEP_LAST, make_state  # noqa: E402
from test_checkpoint import assert_same  # noqa: E402

WRITER = pathlib.Path(__file__).with_name("ckpt_crash_writer.py")


class Zygote:
    """The writer zygote subprocess and the lines it (and its forked writers) print."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="2")
        self.proc = subprocess.Popen([sys.executable, str(WRITER), "--zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next_line(120) == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = 60) -> str:
        line = self.lines.get(timeout=timeout)
        assert line is not None, f"the writer zygote exited ({self.proc.poll()})"
        return line

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def start(self, directory: pathlib.Path, incremental: bool, budget_mib: int,
              steps: int = 10**9) -> int:
        self.send(f"run {directory} {int(incremental)} {budget_mib} {steps}")
        line = self.next_line()
        assert line.startswith("started "), line
        return int(line.split()[1])

    def reap(self, pid: int, timeout: float = 60) -> Tuple[int, List[int], bool]:
        """Waits for writer `pid`; returns its wait status, the steps it reported durable and
        whether it got as far as saving."""
        self.send(f"reap {pid}")
        durable: List[int] = []
        started = False
        while True:
            line = self.next_line(timeout)
            words = line.split()
            if words[:2] == ["reaped", str(pid)]:
                return int(words[2]), durable, started
            assert words[0] == str(pid), line
            assert words[1] != "error", f"writer {pid} failed: {line}"
            if words[1] == "durable":
                durable.append(int(words[2]))
            elif words[1] == "start":
                started = True
                self.last_start = line

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


def check_directory(directory: pathlib.Path, last_durable: Optional[int]) -> Optional[int]:
    """What a restarting job sees: the newest committed step is at least `last_durable`, and
    every committed step verifies and loads bit-exactly as the writer saved it."""
    ckpt = granary.Checkpointer(directory, keep_last=KEEP_LAST)
    steps = ckpt.steps()
    latest = ckpt.latest()
    if latest != (steps[-1] if steps else None):
        again = []
        for _ in range(5):
            time.sleep(0.1)
            again.append((ckpt.steps(), ckpt.latest()))
        raise AssertionError(f"steps() {steps} but latest() {latest}; then {again}; "
                             f"files {_listing(directory)}")
    if last_durable is not None:
        assert latest is not None and latest >= last_durable, (latest, last_durable)
    if latest is None:
        with pytest.raises(FileNotFoundError):
            ckpt.load()
        return None
    for step in steps:
        ckpt.verify(step)
    assert_same(ckpt.load(), make_state(latest))
    assert ckpt.loaded_step == latest
    for step in steps[:-1]:
        assert_same(ckpt.load(step), make_state(step))
    return latest


def _listing(directory: pathlib.Path) -> List[str]:
    return sorted(f"{p.relative_to(directory)}:{p.stat().st_size}" for p in directory.rglob("*")
                  if p.is_file())


def _step_dirs(directory: pathlib.Path) -> List[int]:
    return sorted(int(p.name.removeprefix("step-")) for p in directory.glob("step-*"))


def test_sigkill_at_random_moments_never_leaves_a_torn_checkpoint(tmp_dir: pathlib.Path) -> None:
    seed = int(os.environ.get("GRANARY_CRASH_SEED", random.randrange(1 << 32)))
    trials = int(os.environ.get("GRANARY_CRASH_TRIALS", "36"))
    print(f"GRANARY_CRASH_SEED={seed} GRANARY_CRASH_TRIALS={trials}")
    rng = random.Random(seed)
    directory = tmp_dir / "ckpt"
    zygote = Zygote()
    try:
        last_durable: Optional[int] = None
        latest: Optional[int] = None
        killed_while_saving = 0
        history: List[str] = []
        for trial in range(trials):
            incremental = rng.random() < 0.6
            budget_mib = rng.choice([0, 0, 16])
            delay = rng.uniform(0.0, 1.0)
            pid = zygote.start(directory, incremental, budget_mib)
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            status, durable, started = zygote.reap(pid)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
            where = (f"trial {trial} (seed {seed}): {zygote.last_start if started else ''} incremental={incremental} budget={budget_mib} MiB, "
                     f"killed after {delay:.3f} s, reported durable {durable}")
            if durable:
                assert durable == list(range(durable[0], durable[0] + len(durable))), where
                assert latest is None or durable[0] == latest + 1, where
                last_durable = durable[-1]
            killed_while_saving += started
            try:
                latest = check_directory(directory, last_durable)
            except BaseException as e:
                raise AssertionError(f"{where}: {e}\nfiles: {_listing(directory)}\n"
                                     + "\n".join(history)) from e
            history.append(f"{where}; then committed {granary.Checkpointer(directory).steps()}")
        assert latest is not None and latest >= min(10, trials), f"too few steps saved ({latest})"
        assert killed_while_saving >= trials // 2, killed_while_saving

        # The next run continues from the newest step, and retention removes the leftovers of the
        # killed saves: only the kept committed steps remain (and data they reference).
        pid = zygote.start(directory, True, 0, steps=KEEP_LAST + 1)
        status, durable, _ = zygote.reap(pid, timeout=120)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert durable == list(range(latest + 1, latest + KEEP_LAST + 2)), durable
        final = check_directory(directory, durable[-1])
        assert final == durable[-1]
        ckpt = granary.Checkpointer(directory, keep_last=KEEP_LAST)
        assert ckpt.steps() == durable[-KEEP_LAST:]
        committed = set(ckpt.steps())
        for step in _step_dirs(directory):
            step_dir = directory / f"step-{step:012d}"
            if step not in committed:  # only data files a kept step references
                # (an empty directory may remain: a save killed between creating the directory
                # and publishing its first object leaves it, and it holds no object)
                names = sorted(p.name for p in step_dir.iterdir())
                assert all(".data-" in n for n in names), (step, names)
        ckpt.collect_garbage()
        assert ckpt.steps() == durable[-KEEP_LAST:]
        check_directory(directory, durable[-1])
    finally:
        zygote.close()
