"""Shared fixtures for granary's Python tests (run against the installed package)."""

from __future__ import annotations

import os

# Keep torch (imported by some tests) to the two cores of the test machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import itertools
import pathlib
import shutil
import sys
import tempfile
from typing import Iterator

import pytest

import granary

_mem_names = itertools.count()


@pytest.fixture
def tmp_dir() -> Iterator[pathlib.Path]:
    """A fresh directory under $GRANARY_TEST_TMPDIR (or the system temp dir), removed after."""
    base = os.environ.get("GRANARY_TEST_TMPDIR")
    if base:
        os.makedirs(base, exist_ok=True)
    path = pathlib.Path(tempfile.mkdtemp(prefix="granary-py-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["mem", "file"])
def store_url(request: pytest.FixtureRequest, tmp_dir: pathlib.Path) -> str:
    """The URL of an empty store: a fresh mem:// store or a file:// store in a temp dir."""
    if request.param == "mem":
        return f"mem://pytest-{os.getpid()}-{next(_mem_names)}"
    return f"file://{tmp_dir / 'store'}"


@pytest.fixture
def store(store_url: str) -> Iterator[granary.Store]:
    with granary.open(store_url) as s:
        yield s


@pytest.fixture(scope="session")
def granary_cli() -> str:
    """Path of the `granary` executable: $GRANARY_CLI, else the one installed next to Python."""
    installed = pathlib.Path(sys.executable).parent / "granary"
    path = pathlib.Path(os.environ.get("GRANARY_CLI") or installed)
    if not path.exists():
        pytest.fail(f"granary CLI not installed at {path}; run `make install-py`")
    return str(path)
