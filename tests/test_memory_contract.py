"""The store contract suite applied to the in-memory store."""

import pytest

from hitl_core.testing.contract import HitlContract


class TestMemoryStore(HitlContract):
    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"
