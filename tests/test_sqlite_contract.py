"""The shared store contract suite (hitl_core.testing.contract) run against the SQLite
store: once on a file in a temporary directory, once on `sqlite:///:memory:`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hitl_core import Store
from hitl_core.adapter import open_store
from hitl_core.testing.contract import HitlContract


class TestSqliteFileStore(HitlContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'hitl.db'}"


class TestSqliteMemoryStore(HitlContract):
    durable = False

    @pytest.fixture
    def store_url(self) -> str:
        return "sqlite:///:memory:"

    @pytest.fixture
    def store_factory(self) -> Iterator[Callable[[], Store]]:
        shared = open_store("sqlite:///:memory:")  # each open is a new database: share one
        yield lambda: shared
        shared.close()
