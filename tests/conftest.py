"""Shared test support: a live `hitl serve` in a subprocess (the real command, on a free
port of 127.0.0.1), started and stopped around the tests that use it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class LiveCommand:
    """A long-running `hitl` command (`serve`, `inbox`) in its own process, started with
    `--port 0`: `banner` is the first line it prints, `url` the address in it."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [str(HITL), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
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
            raise RuntimeError(f"hitl {command[0]} did not start: {line!r} {err}")
        self.banner = line.strip()
        self.url = "http://" + line.split("http://", 1)[1].split()[0].rstrip("/")

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


class LiveServer(LiveCommand):
    """`hitl serve --port 0` on a store (a file path or a store URL); `url` is the API's
    base URL. `env` adds environment variables (such as a short lease for tests)."""

    def __init__(
        self, db: Path | str, *args: str, key: str = API_KEY, env: dict[str, str] | None = None
    ) -> None:
        self.db = db
        self.key = key
        command = ["serve", "--port", "0", "--db", str(db), "--webhook-interval", "0.1", *args]
        super().__init__(command, {"HITL_API_KEY": key, **(env or {})})

    def client(self, key: str | None = None) -> object:
        """An SDK client pointed at this server."""
        from m8tes import M8tes

        return M8tes(api_key=key or self.key, base_url=self.url, timeout=30)


def call(
    url: str,
    method: str,
    path: str,
    body: bytes | str | object | None = None,
    *,
    key: str | None = API_KEY,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One raw HTTP request to a live server; returns the status, the headers (names in
    lower case) and the decoded JSON answer."""
    data: bytes | None
    if body is None or isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            found = {k.lower(): v for k, v in answer.headers.items()}
            return answer.status, found, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        found = {k.lower(): v for k, v in error.headers.items()}
        return error.code, found, json.loads(error.read())


def refused(answer: tuple[int, dict[str, str], Any], status: int, code: str) -> dict[str, Any]:
    """Check that `answer` is the error envelope with this status and code; return it."""
    got, _, body = answer
    assert got == status, body
    error = body["error"]
    assert error["code"] == status and error["details"]["error_code"] == code, error
    assert error["error_code"] == code and error["message"] and error["type"]
    assert error["request_id"].startswith("req_")
    return dict(error)


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


def run_together(script: str, *args: str, count: int) -> list[str]:
    """Start `count` copies of `script` (`python -c script *args`, in the repository), let
    each say "ready", release them at once with "go", and return what each printed after;
    each must exit 0."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for _ in range(count)
    ]
    outputs: list[str] = []
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return outputs


def slow_clients_are_cut_off(port: int, keep: socket.socket | None = None) -> None:
    """Two clients that never finish a request's headers on 127.0.0.1:`port` (one sends
    part of them, one nothing) are disconnected by the server, after HEADER_TIMEOUT
    (10 s), not held for ever; `keep` (a connection whose request was whole, such as a
    live stream) stays open."""
    partial = socket.create_connection(("127.0.0.1", port))
    partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    silent = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    for client in (partial, silent):
        client.settimeout(max(1.0, 40 - (time.monotonic() - started)))
        try:
            assert client.recv(100) == b"", "the server answered half a request"
        except TimeoutError:
            raise AssertionError("a client sending no whole request was held 40 s") from None
        finally:
            client.close()
    assert time.monotonic() - started > 5  # by the header timeout, not at once
    if keep is not None:
        keep.setblocking(False)
        try:
            assert keep.recv(1, socket.MSG_PEEK) != b"", "the whole request was cut off too"
        except BlockingIOError:
            pass  # open, nothing to read: as it should be
        finally:
            keep.setblocking(True)


def loop_stall_while_sqlite_is_locked(db: Path, work: Any) -> tuple[float, Any]:
    """Run the coroutine `work()` while another connection holds the SQLite write lock
    for a second; the longest gap between the ticks of a 10 ms ticker in the same loop."""
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(1.0)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    locked.wait(10)

    async def main() -> tuple[float, Any]:
        gaps: list[float] = []
        done = False

        async def tick() -> None:
            last = time.monotonic()
            while not done:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        try:
            result = await work()
        finally:
            done = True
            await ticker
        return max(gaps), result

    try:
        return asyncio.run(main())
    finally:
        release.set()
        holder.join(10)


# The PostgreSQL server and a fresh schema per test (tests/postgres_server.py).
from postgres_server import pg_server, pg_url, unavailable  # noqa: E402, F401


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a PostgreSQL server, leave its tests out, saying why once (under CI they
    stay, and fail)."""
    marked = [item for item in items if item.get_closest_marker("postgres")]
    if not marked or os.environ.get("CI"):
        return
    why = unavailable()
    if why is None:
        return
    config.hook.pytest_deselected(items=marked)
    items[:] = [item for item in items if not item.get_closest_marker("postgres")]
    config.stash[_POSTGRES_LEFT_OUT] = f"{len(marked)} PostgreSQL tests left out: {why}"


_POSTGRES_LEFT_OUT = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    line = config.stash.get(_POSTGRES_LEFT_OUT, None)
    if line is not None:
        terminalreporter.write_line(f"SKIPPED {line}")
