"""The shared store contract suite (hitl_core.testing.contract) run against the
PostgreSQL store, each test on a schema of its own on the test server."""

from __future__ import annotations

import pytest

from hitl_core.testing.contract import HitlContract

pytestmark = pytest.mark.postgres


class TestPostgresStore(HitlContract):
    @pytest.fixture
    def store_url(self, pg_url: str) -> str:
        return pg_url
