"""How psycopg's errors become hitl-core's: every driver exception the store meets ends
here as a HitlError with a stable code (docs/postgres-store.md lists them)."""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from hitl_core.adapter import (
    ConflictError,
    HitlError,
    StoreError,
    UnavailableError,
    ValidationError,
)

__all__ = ["connect_error", "is_connection_error", "statement_error"]

# Unique constraints whose violation means a concurrent transaction stored the same thing
# first: the engine runs the call again and finds it.
_RACES = frozenset({"policies_scope_tool", "idempotency_keys_pkey"})

_LOGIN = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # a role; a missing database is told apart below
    "not permitted to log in",
    "authentication failed",
    "server requested a password",
    "no password supplied",
    "Kerberos",
    "certificate",
)


def _text(error: BaseException) -> str:
    return " ".join(str(error).split())


def connect_error(error: BaseException, where: str) -> HitlError:
    """The HitlError for a failed attempt to connect to the server at `where`."""
    text = _text(error)
    if isinstance(error, PoolClosed):
        return StoreError("store_closed", f"the PostgreSQL store at {where} is closed")
    if "database" in text and "does not exist" in text:
        return StoreError("database_not_found", f"PostgreSQL at {where}: {text}")
    if any(marker in text for marker in _LOGIN):
        return StoreError("login_refused", f"PostgreSQL at {where} refused the login: {text}")
    if "too many" in text and "connections" in text:
        return UnavailableError("store_unavailable", f"PostgreSQL at {where}: {text}; try again")
    return UnavailableError(
        "store_unavailable", f"cannot reach PostgreSQL at {where}: {text}; try again"
    )


def is_connection_error(error: BaseException, conn: psycopg.Connection[object] | None) -> bool:
    """True when `error` means the connection is gone (server restart, network, a killed
    backend), as opposed to a refusal of one statement."""
    if conn is not None and conn.broken:
        return True
    state = getattr(error, "sqlstate", None)
    if state is not None:
        return state.startswith("08") or state in ("57P01", "57P02", "57P03")
    return isinstance(error, psycopg.OperationalError)


def statement_error(
    error: BaseException,
    conn: psycopg.Connection[object] | None,
    where: str,
    *,
    committing: bool,
) -> HitlError:
    """The HitlError for `error`, met running a statement at `where`; `committing` says
    whether the statement could have committed (then a lost connection leaves the outcome
    unknown)."""
    if isinstance(error, HitlError):
        return error
    if isinstance(error, PoolTimeout):
        return UnavailableError("store_busy", f"PostgreSQL at {where}: {_text(error)}")
    if isinstance(error, PoolClosed):
        return StoreError("store_closed", f"the PostgreSQL store at {where} is closed")
    if isinstance(error, UnicodeEncodeError):
        return ValidationError("invalid_request", f"text that cannot be stored as UTF-8: {error}")
    text = _text(error)
    state = getattr(error, "sqlstate", None) or ""
    if state == "22P05" or (isinstance(error, psycopg.DataError) and "NUL" in text):
        return ValidationError(
            "invalid_request", "PostgreSQL cannot store text holding NUL (\\x00) characters"
        )
    if is_connection_error(error, conn):
        if committing:
            return UnavailableError(
                "commit_unknown",
                f"the connection to PostgreSQL at {where} was lost while committing; the "
                f"call may or may not have happened ({text})",
            )
        return UnavailableError(
            "connection_lost",
            f"the connection to PostgreSQL at {where} was lost; nothing was committed, "
            f"try again ({text})",
        )
    if state in ("HL409", "40P01"):
        return ConflictError("concurrent_update", f"a concurrent transaction won: {text}")
    if state == "23505":
        diag = getattr(error, "diag", None)
        constraint = getattr(diag, "constraint_name", None)
        if constraint in _RACES:
            return ConflictError("concurrent_update", f"a concurrent transaction won: {text}")
        return StoreError("store_constraint", f"PostgreSQL at {where}: {text}")
    if state == "HL500" or state.startswith("23"):
        return StoreError("store_constraint", f"PostgreSQL at {where}: {text}")
    if state in ("57014", "55P03"):
        return UnavailableError("store_timeout", f"PostgreSQL at {where}: {text}; try again")
    if state in ("40001",):
        return UnavailableError("serialization_failure", f"PostgreSQL at {where}: {text}")
    if state in ("53300", "53400"):
        return UnavailableError("store_unavailable", f"PostgreSQL at {where}: {text}")
    if state == "53100":
        return StoreError("store_full", f"PostgreSQL at {where}: {text}")
    if state == "25006":
        return StoreError("store_read_only", f"PostgreSQL at {where}: {text}")
    if state == "42501":
        return StoreError("permission_denied", f"PostgreSQL at {where}: {text}")
    if state in ("42P01", "42703", "42883", "3F000"):
        return StoreError(
            "store_corrupt",
            f"PostgreSQL at {where}: hitl-core's tables were changed or dropped ({text})",
        )
    return StoreError("store_error", f"PostgreSQL at {where}: {text}")
