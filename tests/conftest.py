"""Shared test support: a live `hitl serve` in a subprocess (the real command, on a free
port of 127.0.0.1), started and stopped around the tests that use it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

HITL = Path(sys.executable).parent / "hitl"
API_KEY = "test-key-0123456789"


def needs_serve_stack() -> None:
    """Skip unless the `serve` extra and the hosted SDK are importable."""
    for name, how in (
        ("starlette", "pip install -e '.[serve]'"),
        ("uvicorn", "pip install -e '.[serve]'"),
        ("m8tes", "pip install --ignore-requires-python m8tes"),
    ):
        pytest.importorskip(name, reason=f"{name} is not installed ({how})")
    if not HITL.exists():
        pytest.skip("the hitl command is not installed (pip install -e .)")


class LiveServer:
    """`hitl serve --port 0` on a store (a file path or a store URL); `url` is the API's
    base URL."""

    def __init__(self, db: Path | str, *args: str, key: str = API_KEY) -> None:
        self.db = db
        env = {**os.environ, "HITL_API_KEY": key}
        command = [str(HITL), "serve", "--port", "0", "--db", str(db)]
        self.process = subprocess.Popen(
            [*command, "--webhook-interval", "0.1", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        first: list[str] = []
        out = self.process.stdout
        assert out is not None
        reader = threading.Thread(target=lambda: first.append(out.readline()), daemon=True)
        reader.start()
        reader.join(30)
        line = first[0] if first else ""
        if "http://" not in line:
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise RuntimeError(f"hitl serve did not start: {line!r} {err}")
        self.banner = line.strip()
        self.url = "http://" + line.split("http://", 1)[1].split()[0]
        self.key = key

    def client(self, key: str | None = None) -> object:
        """An SDK client pointed at this server."""
        from m8tes import M8tes

        return M8tes(api_key=key or self.key, base_url=self.url, timeout=30)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server per test module, on a fresh SQLite file."""
    needs_serve_stack()
    server = LiveServer(tmp_path_factory.mktemp("serve") / "hitl.db")
    try:
        yield server
    finally:
        code, err = server.stop()
        assert code == 0, err
        assert "Traceback" not in err, err


# The PostgreSQL server and a fresh schema per test (tests/postgres_server.py).
from postgres_server import pg_server, pg_url  # noqa: E402, F401
