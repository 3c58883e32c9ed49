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
import uuid
from typing import Iterator

import pytest

import granary

_mem_names = itertools.count()

# The S3 server of make test (scripts/with-rgw.sh exports GRANARY_TEST_S3_*). Its endpoint and
# keys go into the standard AWS_* variables, so test URLs are plain s3://bucket/prefix (and child
# processes such as the CLI find the server the way users' processes do).
S3_ENDPOINT = os.environ.get("GRANARY_TEST_S3_ENDPOINT", "")
S3_BUCKET = "granary-pytest"
if S3_ENDPOINT:
    os.environ["AWS_ENDPOINT_URL"] = S3_ENDPOINT
    os.environ["AWS_ACCESS_KEY_ID"] = os.environ["GRANARY_TEST_S3_ACCESS_KEY"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = os.environ["GRANARY_TEST_S3_SECRET_KEY"]
    os.environ["AWS_REGION"] = os.environ.get("GRANARY_TEST_S3_REGION", "us-east-1")
    os.environ.pop("AWS_PROFILE", None)


def require_s3() -> None:
    """Skips the calling test without an S3 server, unless GRANARY_REQUIRE_S3=1 (make test)."""
    if not S3_ENDPOINT:
        if os.environ.get("GRANARY_REQUIRE_S3") == "1":
            pytest.fail("GRANARY_REQUIRE_S3=1 but GRANARY_TEST_S3_ENDPOINT is unset")
        pytest.skip("no S3 server: run scripts/ceph-rgw.sh start and export its env")


@pytest.fixture
def s3_url() -> Iterator[str]:
    """An empty s3://granary-pytest/<fresh prefix> on the test server; emptied afterwards."""
    require_s3()
    with granary.open(f"s3://{S3_BUCKET}?create_bucket=true"):
        pass
    url = f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex[:16]}"
    try:
        yield url
    finally:
        with granary.open(url) as s:
            for info in s.list(""):
                s.delete(info.key)


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


@pytest.fixture(params=["mem", "file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_dir: pathlib.Path) -> str:
    """The URL of an empty store: a fresh mem:// store, a file:// store in a temp dir, or a fresh
    prefix on the S3 test server."""
    if request.param == "mem":
        return f"mem://pytest-{os.getpid()}-{next(_mem_names)}"
    if request.param == "s3":
        return request.getfixturevalue("s3_url")
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
