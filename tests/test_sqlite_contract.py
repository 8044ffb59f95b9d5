"""The shared store contract suite (hitl_core.testing.contract) run against the SQLite
store: once on a file in a temporary directory, once on `sqlite:///:memory:`."""

from __future__ import annotations

from pathlib import Path

import pytest

from hitl_core.testing.contract import HitlContract


class TestSqliteFileStore(HitlContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'hitl.db'}"


class TestSqliteMemoryStore(HitlContract):
    @pytest.fixture
    def store_url(self) -> str:
        return "sqlite:///:memory:"
