"""Exceptions raised by granary.

Failures map to the built-in exception a Python user already catches:

=====================  =================================================
granary status         exception
=====================  =================================================
NotFound               FileNotFoundError (errno ENOENT, ``filename`` = key)
AlreadyExists          FileExistsError (errno EEXIST)
PermissionDenied       PermissionError
InvalidArgument        ValueError
OutOfRange             ValueError (IndexError where an index is involved)
Unimplemented          NotImplementedError
ResourceExhausted      ResourceExhaustedError (errno ENOSPC when the disk is full)
DataLoss               DataLossError (checksum mismatch, truncated data)
Unavailable            UnavailableError (transient; retrying may succeed)
anything else          GranaryError
=====================  =================================================

The granary-specific classes derive from :class:`GranaryError`, itself an :class:`OSError`, so
``except OSError`` catches every storage failure. Every exception raised for a failed granary
operation carries the status code's name as ``status_code`` (``"NotFound"``, ``"DataLoss"``, ...),
and its message names the key or path involved.
"""

from __future__ import annotations

__all__ = [
    "GranaryError",
    "DataLossError",
    "UnavailableError",
    "ResourceExhaustedError",
]


class GranaryError(OSError):
    """A granary storage operation failed (base of granary's own exception classes)."""

    status_code: str

    def __str__(self) -> str:
        # OSError prints "[Errno None] None: 'key'" when there is no errno; the message already
        # names the key, so print just the message then.
        if self.errno is None and len(self.args) == 1:
            return str(self.args[0])
        return super().__str__()


class DataLossError(GranaryError):
    """Stored bytes failed their checksum or are truncated or corrupt."""


class UnavailableError(GranaryError):
    """A transient failure (a timeout, an S3 503); retrying may succeed."""


class ResourceExhaustedError(GranaryError):
    """A budget or the disk is full; ``errno`` is ENOSPC or EDQUOT when the OS said so."""
