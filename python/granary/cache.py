"""The node-local cache directory as a whole (``granary cache stat|evict|verify`` in Python).

Stores read through the cache when opened with ``cache_dir=`` (see :func:`granary.open`); these
functions look at or tidy a cache directory without opening a store.
"""

from __future__ import annotations

import os
from typing import Dict, Union

from . import _core

StrPath = Union[str, "os.PathLike[str]"]


def stat(cache_dir: StrPath) -> Dict[str, int]:
    """Pages, bytes, distinct objects, free disk space, and the hit/miss counters summed over
    the store handles that used the directory and closed."""
    return _core.cache_inspect(os.fsdecode(os.fspath(cache_dir)))


def evict(cache_dir: StrPath, keep_bytes: int = 0) -> int:
    """Removes the oldest pages until at most ``keep_bytes`` remain; returns bytes removed."""
    return _core.cache_evict(os.fsdecode(os.fspath(cache_dir)), int(keep_bytes))


def verify(cache_dir: StrPath) -> Dict[str, int]:
    """Reads every page and checks every CRC; removes damaged pages. Returns pages, bytes and
    removed."""
    return _core.cache_verify(os.fsdecode(os.fspath(cache_dir)))
