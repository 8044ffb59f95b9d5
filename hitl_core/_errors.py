"""The error tree: every refusal of the public API is a HitlError with an HTTP-like
status and a stable code."""

from __future__ import annotations


class HitlError(Exception):
    """Base of every error hitl-core raises for bad input or a refused operation."""

    status: int = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ValidationError(HitlError, ValueError):
    """422: the input is malformed or not allowed (also a ``ValueError``)."""

    status = 422


class NotFoundError(HitlError, LookupError):
    """404: the thing named does not exist in the caller's scope (also a ``LookupError``)."""

    status = 404


class ConflictError(HitlError):
    """409: the operation is not possible in the current state."""

    status = 409


class StoreError(HitlError):
    """500-like: the store cannot be opened or used (corrupt file, newer schema, I/O)."""

    status = 500


class UnavailableError(StoreError):
    """503-like: the store cannot answer now but may soon (busy, unreachable, connection
    lost); the call did not happen and may be retried."""

    status = 503
