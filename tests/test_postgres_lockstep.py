"""Lock-step against PostgreSQL: the random programs of test_lockstep.py, driven through
a memory engine and a PostgreSQL engine (a fresh schema per program) at once; every
step must give equal results."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_server import drop_schema, new_schema_name, server_url, with_options
from test_lockstep import LockStepMachine


class PostgresLockStep(LockStepMachine):
    def other_url(self) -> str:
        self.schema = new_schema_name()
        return with_options(server_url(), schema=self.schema)

    def teardown(self) -> None:
        super().teardown()
        drop_schema(server_url(), self.schema)


TestPostgresLockStep = PostgresLockStep.TestCase
TestPostgresLockStep.settings = LockStepMachine.TestCase.settings


@pytest.fixture(autouse=True)
def _needs_server() -> Iterator[None]:
    server_url()  # skips (or fails under CI) when there is no server
    yield
