"""The PostgreSQL store behind `postgresql://` and `postgres://` URLs: one schema shared
safely by any number of processes on any number of hosts. See docs/postgres-store.md.
Needs the `postgres` extra (psycopg 3 and psycopg_pool)."""

from __future__ import annotations

from ._config import Config, parse_url
from ._schema import SCHEMA_VERSION
from ._store import PostgresStore, PostgresTransaction, open_store

__all__ = [
    "SCHEMA_VERSION",
    "Config",
    "PostgresStore",
    "PostgresTransaction",
    "open_store",
    "parse_url",
]
