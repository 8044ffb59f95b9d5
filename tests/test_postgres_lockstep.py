"""Lock-step against PostgreSQL: the random programs of test_lockstep.py, driven through
a memory engine and a PostgreSQL engine (a fresh schema per program) at once; every
step must give equal results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from postgres_server import drop_schema, new_schema_name, server_url, with_options
from test_lockstep import LockStepMachine

import hitl_core
from hitl_core.testing.helpers import counter_ids

pytestmark = pytest.mark.postgres


class PostgresLockStep(LockStepMachine):
    def open_engines(self) -> list[Any]:
        self.schema = new_schema_name()
        urls = ["memory://", with_options(server_url(), schema=self.schema)]
        return [
            hitl_core.connect(url, clock=clock, ids=counter_ids())
            for url, clock in zip(urls, self.clocks, strict=True)
        ]

    def teardown(self) -> None:
        super().teardown()
        drop_schema(server_url(), self.schema)


TestPostgresLockStep = PostgresLockStep.TestCase
TestPostgresLockStep.settings = LockStepMachine.TestCase.settings


@pytest.fixture(autouse=True)
def _needs_server() -> Iterator[None]:
    server_url()  # skips (or fails under CI) when there is no server
    yield
