"""The PostgreSQL server the tests use, and a fresh schema per test.

The server is `$HITL_TEST_POSTGRES_URL`, else postgresql://postgres@127.0.0.1:5432/test
if it answers. Tests that need it carry the `postgres` mark. When none answers (or
psycopg is not installed) they are left out with one line saying why (conftest.py),
except when `$CI` is set: then they run and fail."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

LOCAL = "postgresql://postgres@127.0.0.1:5432/test"
ENV = "HITL_TEST_POSTGRES_URL"

_found: tuple[str | None, str] | None = None


def _look() -> tuple[str | None, str]:
    """(the server's URL, "") or (None, why there is none)."""
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed (pip install -e '.[postgres]')"
    url = os.environ.get(ENV) or LOCAL
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        first = " ".join(str(error).split())[:200]
        where = f"${ENV}" if os.environ.get(ENV) else LOCAL
        return None, f"no PostgreSQL server answered at {where} ({first}); set ${ENV}"
    return url, ""


def unavailable() -> str | None:
    """Why there is no server for the tests, or None when there is one."""
    global _found
    if _found is None:
        _found = _look()
    return _found[1] or None


def server_url() -> str:
    """The server's base URL, or skip (fail when $CI is set) saying why there is none."""
    global _found
    if _found is None:
        _found = _look()
    url, why = _found
    if url is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a PostgreSQL server: {why}", pytrace=False)
        pytest.skip(why)
    return url


def with_options(url: str, **options: str) -> str:
    """`url` with query options added (or replaced)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(options)
    return urlunsplit(parts._replace(query=urlencode(query)))


def admin(url: str) -> object:
    """An autocommit psycopg connection to the server (for setting up and cleaning up)."""
    import psycopg

    base = urlsplit(url)
    plain = urlunsplit(base._replace(query=""))
    return psycopg.connect(plain, autocommit=True)


def drop_schema(url: str, schema: str) -> None:
    """Drop a test schema and everything in it."""
    from psycopg import sql

    with admin(url) as conn:  # type: ignore[attr-defined]
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def new_schema_name() -> str:
    return f"hitl_test_{os.getpid()}_{secrets.token_hex(4)}"


@pytest.fixture
def pg_server() -> str:
    """The server's base URL (skips when there is none)."""
    return server_url()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A store URL on a schema of its own, dropped after the test."""
    schema = new_schema_name()
    yield with_options(pg_server, schema=schema)
    drop_schema(pg_server, schema)


# -- restarting the local server ----------------------------------------------------------

CLUSTER = ("15", "main")


def can_restart(url: str) -> str | None:
    """Why this machine's server cannot be restarted by the tests, or None when it can:
    the local Debian cluster, as root, and the tests pointed at it."""
    if os.environ.get(ENV) and urlsplit(os.environ[ENV]).hostname not in ("127.0.0.1", "localhost"):
        return "the test server is not local"
    if os.geteuid() != 0:
        return "restarting the server needs root"
    if subprocess.run(["which", "pg_ctlcluster"], capture_output=True).returncode != 0:
        return "pg_ctlcluster is not installed"
    return None


def restart_server(url: str) -> None:
    """Restart the local cluster and wait until it answers again."""
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *CLUSTER, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    wait_for_server(url)


def ensure_running(url: str) -> None:
    """Start the local cluster if it is down (a test that restarts it must leave it up)."""
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *CLUSTER, "start"],
        capture_output=True,
        timeout=120,
    )
    wait_for_server(url)


def wait_for_server(url: str, seconds: float = 60.0) -> None:
    import psycopg

    url = urlunsplit(urlsplit(url)._replace(query=""))
    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
