"""Native I/O runs with the GIL released, so other Python threads keep working meanwhile.

Measured by counter progress, not by timing: with a huge switch interval the main thread never
hands over the GIL on its own, so a background thread can only advance its counter while the
main thread is inside a call that released the GIL. A pure-Python loop (holding the GIL) serves
as the control that shows the measurement can fail.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Iterator

import numpy as np
import pytest

import granary


class Ticker:
    """A background thread counting while it holds the GIL and yielding it at every step."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._started.set()
        while not self._stop.is_set():
            self.count += 1
            time.sleep(0)  # releases the GIL, then waits to get it back

    def __enter__(self) -> "Ticker":
        self._thread.start()
        self._started.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def progress_during(self, call: Callable[[], object], attempts: int = 20) -> int:
        """Most ticks seen across a call (retried: the OS may not schedule the thread at once)."""
        best = 0
        for _ in range(attempts):
            before = self.count
            call()
            best = max(best, self.count - before)
            if best > 0:
                break
        return best


@pytest.fixture
def no_voluntary_switches() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def busy_python() -> int:
    total = 0
    for i in range(200_000):
        total += i
    return total


def test_control_gil_holders_show_no_progress(no_voluntary_switches: None) -> None:
    big = np.ones(32 << 20, dtype=np.uint8)
    with Ticker() as ticker:
        assert ticker.progress_during(busy_python, attempts=3) == 0
        # A native call that keeps the GIL (a 32 MiB copy into a new bytes object) shows none.
        assert ticker.progress_during(lambda: bytes(big), attempts=3) == 0


def test_get_into_releases_the_gil(store: granary.Store, no_voluntary_switches: None) -> None:
    size = 32 << 20
    store.put("big", np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8))
    buf = np.empty(size, dtype=np.uint8)
    with Ticker() as ticker:
        assert ticker.progress_during(lambda: store.get_into("big", buf)) > 0


def test_put_get_many_and_writer_release_the_gil(
    store: granary.Store, no_voluntary_switches: None
) -> None:
    data = os.urandom(1 << 20) * 16
    bufs = [bytearray(1 << 20) for _ in range(16)]

    def write_with_writer() -> None:
        with store.writer("w", part_bytes=4 << 20) as w:
            w.write(data)

    with Ticker() as ticker:
        assert ticker.progress_during(lambda: store.put("p", data)) > 0
        ops = [("p", i << 20, b) for i, b in enumerate(bufs)]
        assert ticker.progress_during(lambda: store.get_many(ops)) > 0
        assert ticker.progress_during(write_with_writer) > 0
    assert b"".join(bufs) == data
