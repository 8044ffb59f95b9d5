"""The store contract suite applied to the in-memory store (one shared store object
stands for "the same store opened again": memory keeps nothing once closed)."""

from collections.abc import Callable

import pytest
from hitl_memory import MemoryStore

from hitl_core import Store
from hitl_core.testing.contract import HitlContract


class TestMemoryStore(HitlContract):
    durable = False

    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"

    @pytest.fixture
    def store_factory(self) -> Callable[[], Store]:
        shared = MemoryStore()
        return lambda: shared
