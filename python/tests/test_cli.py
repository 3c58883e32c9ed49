"""The `granary` CLI's store commands, run as a subprocess."""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Optional

import pytest

import granary


def run(cli: str, *args: str, stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run([cli, *args], input=stdin, capture_output=True, timeout=300)


@pytest.fixture
def store_dir(tmp_dir: pathlib.Path) -> str:
    return str(tmp_dir / "store")


def test_help_for_tool_and_every_command(granary_cli: str) -> None:
    top = run(granary_cli, "--help")
    assert top.returncode == 0
    for command in ["ls", "stat", "cat", "put", "rm", "doctor", "version"]:
        assert command.encode() in top.stdout
    for command in ["ls", "stat", "cat", "put", "rm", "doctor", "version"]:
        done = run(granary_cli, command, "--help")
        assert done.returncode == 0, command
        assert done.stdout.startswith(b"usage: granary " + command.encode()), command


def test_no_arguments_prints_usage_and_fails(granary_cli: str) -> None:
    done = run(granary_cli)
    assert done.returncode == 2
    assert b"usage" in done.stdout


def test_version(granary_cli: str) -> None:
    done = run(granary_cli, "version")
    assert done.returncode == 0
    assert done.stdout.decode().strip() == f"granary {granary.__version__}"


@pytest.fixture(params=["file", "s3"])
def cli_urls(request: pytest.FixtureRequest, store_dir: str) -> tuple[str, str]:
    """(URL, the spelling users may also type): file:// and a plain path, or an s3:// URL twice."""
    if request.param == "s3":
        url = request.getfixturevalue("s3_url")
        return url, url
    return "file://" + store_dir, store_dir


def test_put_cat_ls_stat_rm(
    granary_cli: str, cli_urls: tuple[str, str], tmp_dir: pathlib.Path
) -> None:
    src = tmp_dir / "input.bin"
    payload = os.urandom(100_000)
    src.write_bytes(payload)
    url, store_dir = cli_urls
    assert run(granary_cli, "put", url, "a/one.bin", str(src)).returncode == 0
    assert run(granary_cli, "put", store_dir, "a/two.txt", "-", stdin=b"two").returncode == 0
    assert run(granary_cli, "put", store_dir, "b", stdin=b"").returncode == 0

    cat = run(granary_cli, "cat", url, "a/one.bin")
    assert cat.returncode == 0 and cat.stdout == payload
    assert run(granary_cli, "cat", store_dir, "b").stdout == b""

    ls = run(granary_cli, "ls", url)
    assert ls.returncode == 0
    assert ls.stdout.decode().splitlines() == ["a/one.bin", "a/two.txt", "b"]
    assert run(granary_cli, "ls", url, "a/").stdout.decode().splitlines() == [
        "a/one.bin",
        "a/two.txt",
    ]
    long = run(granary_cli, "ls", "--long", url, "a/").stdout.decode().splitlines()
    assert [line.split()[0] for line in long] == ["100000", "3"]
    assert [line.split()[-1] for line in long] == ["a/one.bin", "a/two.txt"]

    stat = run(granary_cli, "stat", url, "a/one.bin")
    assert stat.returncode == 0
    assert "100000" in stat.stdout.decode() and "a/one.bin" in stat.stdout.decode()

    assert run(granary_cli, "rm", url, "a/one.bin", "b").returncode == 0
    assert run(granary_cli, "ls", url).stdout.decode().splitlines() == ["a/two.txt"]
    # The CLI and the Python API see the same store.
    assert granary.open(url).get("a/two.txt") == b"two"


def test_large_object_streams_through_put_and_cat(
    granary_cli: str, store_dir: str, tmp_dir: pathlib.Path
) -> None:
    payload = os.urandom(1 << 20) * 20 + b"tail"  # several 8 MiB chunks, unaligned end
    assert run(granary_cli, "put", store_dir, "big", stdin=payload).returncode == 0
    cat = run(granary_cli, "cat", store_dir, "big")
    assert cat.returncode == 0
    assert len(cat.stdout) == len(payload) and cat.stdout == payload


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("granary: ")
    return lines[0]


def test_errors_are_one_line_and_nonzero(granary_cli: str, store_dir: str) -> None:
    assert run(granary_cli, "put", store_dir, "present", stdin=b"1").returncode == 0
    line = one_error_line(run(granary_cli, "cat", store_dir, "missing/key"))
    assert "NotFound" in line and "missing/key" in line
    assert run(granary_cli, "cat", store_dir, "missing/key").returncode == 1
    line = one_error_line(run(granary_cli, "stat", store_dir, "../x"))
    assert "InvalidArgument" in line and "../x" in line
    line = one_error_line(run(granary_cli, "rm", store_dir, "nope"))
    assert "NotFound" in line
    line = one_error_line(run(granary_cli, "ls", "s3://bucket/x?endpoint=http://127.0.0.1:1"))
    assert "Unavailable" in line and "127.0.0.1:1" in line
    line = one_error_line(run(granary_cli, "put", store_dir, "k", "/no/such/file"))
    assert "/no/such/file" in line
    assert run(granary_cli, "ls", store_dir).stdout == b"present\n"  # failed put left nothing


def test_reading_commands_do_not_create_the_store(
    granary_cli: str, tmp_dir: pathlib.Path
) -> None:
    missing = tmp_dir / "typo"
    for args in [("ls", str(missing)), ("cat", str(missing), "k"), ("rm", str(missing), "k")]:
        one_error_line(run(granary_cli, *args))
    assert not missing.exists()


def test_usage_errors_exit_2(granary_cli: str, store_dir: str) -> None:
    for args in [("cat", store_dir), ("ls",), ("ls", store_dir, "--bogus"), ("frobnicate",)]:
        done = run(granary_cli, *args)
        assert done.returncode == 2, args
        assert len(done.stderr.decode().splitlines()) == 1, args


def test_double_dash_allows_keys_starting_with_dash(granary_cli: str, store_dir: str) -> None:
    assert run(granary_cli, "put", store_dir, "--", "-odd", stdin=b"x").returncode == 0
    assert run(granary_cli, "cat", store_dir, "--", "-odd").stdout == b"x"
