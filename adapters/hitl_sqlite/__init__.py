"""The SQLite store behind `sqlite:///path.db` (and `sqlite:///:memory:`): one WAL-mode
file shared safely by threads and processes. See docs/sqlite-store.md."""

from __future__ import annotations

from ._schema import SCHEMA_VERSION
from ._store import SqliteStore, SqliteTransaction, open_store, parse_url

__all__ = ["SCHEMA_VERSION", "SqliteStore", "SqliteTransaction", "open_store", "parse_url"]
