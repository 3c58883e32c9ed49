"""granary: a storage engine for large-model training and inference.

Start with :func:`granary.open`::

    import granary

    store = granary.open("file:///data/store")      # or a plain path, or "mem://name"
    store.put("runs/a.bin", b"hello")
    data = store.get("runs/a.bin")
    with store.writer("runs/big.bin") as w:         # streamed; visible only at commit
        w.write(chunk)
    buf = bytearray(5)
    store.get_into("runs/a.bin", buf)               # zero copy into any writable buffer

Failures raise ordinary exceptions (FileNotFoundError, ValueError, ...); see
:mod:`granary.errors`.
"""

from __future__ import annotations

# errors first: the native extension imports it while it initializes.
from .errors import DataLossError, GranaryError, ResourceExhaustedError, UnavailableError
from ._core import __version__
from .store import ObjectInfo, Store, Writer, open

__all__ = [
    "__version__",
    "Checkpointer",
    "SaveHandle",
    "open",
    "Store",
    "Writer",
    "ObjectInfo",
    "GranaryError",
    "DataLossError",
    "UnavailableError",
    "ResourceExhaustedError",
]


def __getattr__(name: str):  # PEP 562: torch-dependent parts load on first use
    if name in ("Checkpointer", "SaveHandle"):
        from . import checkpoint

        return getattr(checkpoint, name)
    if name in ("checkpoint", "dcp", "models", "data"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'granary' has no attribute {name!r}")
