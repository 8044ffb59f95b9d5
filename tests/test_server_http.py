"""`hitl serve` on raw HTTP (urllib, http.client): bad input of every kind gets the
error envelope with the right status, never a 500, and a refused request changes
nothing; the command's own refusals (no key, no extra, bad scenario) are one line."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import (
    API_KEY,
    HITL,
    LiveServer,
    call,
    needs_serve_stack,
    refused,
    slow_clients_are_cut_off,
)
from hitl_sqlite import SqliteStore

import hitl_core


@pytest.fixture(scope="module")
def url(live_server: LiveServer) -> str:
    return live_server.url


def state(url: str) -> Any:
    """Everything a refused request might have changed. Not a run's `updated_at`: the
    server renews the lease of every run whose agent it plays, which touches it."""
    runs = call(url, "GET", "/runs/?include_end_user_runs=true&limit=100")[2]
    for run in runs["data"]:
        del run["updated_at"]
    policies = call(url, "GET", "/permissions/?limit=100")[2]
    hooks = call(url, "GET", "/webhooks/?limit=100")[2]
    details = [
        (r, call(url, "GET", f"/runs/{r['id']}/permissions")[2])
        for r in runs["data"]
        if r["status"] not in ("completed", "failed", "cancelled")
    ]
    return runs, policies, hooks, details


def waiting_run(url: str, message: str = "tool:db.migrate") -> tuple[int, str]:
    """A run in approval mode that waits on a tool request; its id and the request's."""
    body = {
        "message": message,
        "stream": False,
        "human_in_the_loop": True,
        "permission_mode": "approval",
    }
    status, _, run = call(url, "POST", "/runs/", body)
    assert status == 200, run
    for _ in range(500):
        requests = call(url, "GET", f"/runs/{run['id']}/permissions")[2]
        if requests:
            return run["id"], requests[0]["request_id"]
        time.sleep(0.02)
    raise AssertionError("the agent never asked")


def test_a_missing_or_wrong_key_is_401(url: str) -> None:
    for key, headers in (
        (None, {}),
        ("wrong", {}),
        (API_KEY + "x", {}),
        (None, {"Authorization": f"Basic {API_KEY}"}),
        (None, {"Authorization": API_KEY}),
    ):
        answer = call(url, "GET", "/runs/", key=key, headers=headers)
        refused(answer, 401, "invalid_api_key")
        assert answer[1]["www-authenticate"] == "Bearer"
    refused(call(url, "GET", "/nothing-here", key=None), 401, "invalid_api_key")
    assert call(url, "GET", "/runs/", headers={"Authorization": f"bearer  {API_KEY}"})[0] == 200


def test_unknown_paths_are_404_and_wrong_methods_405(url: str) -> None:
    refused(call(url, "GET", "/nothing-here"), 404, "not_found")
    refused(call(url, "GET", "/runs/1/nothing"), 404, "not_found")
    root = url.rsplit("/api/v2", 1)[0]
    refused(call(root, "GET", "/api/v3/runs/"), 404, "not_found")
    answer = call(url, "PUT", "/runs/", {})
    refused(answer, 405, "method_not_allowed")
    assert "POST" in answer[1]["allow"] and "GET" in answer[1]["allow"]
    refused(call(url, "DELETE", "/runs/5"), 405, "method_not_allowed")
    for path in ("/runs/5", "/runs/abc", "/runs/run_nothing", "/runs/0", "/runs/-1"):
        refused(call(url, "GET", path), 404, "run_not_found")
    refused(call(url, "GET", "/tasks/x"), 404, "task_not_found")
    refused(call(url, "DELETE", "/permissions/x"), 404, "policy_not_found")
    refused(call(url, "GET", "/webhooks/x/deliveries"), 404, "webhook_not_found")


def test_malformed_bodies_are_422_and_change_nothing(url: str) -> None:
    run_id, request_id = waiting_run(url)
    before = state(url)
    bad: list[tuple[str, str, Any, str]] = [
        ("POST", "/runs/", b"{not json", "invalid_json"),
        ("POST", "/runs/", b"\xff\xfe{}", "invalid_json"),
        ("POST", "/runs/", b'{"message": NaN}', "invalid_json"),
        ("POST", "/runs/", b'{"message": "\\ud800", "stream": false}', "invalid_json"),
        ("POST", "/runs/", b'{"message": "m", "n": 1' + b"0" * 5000 + b"}", "invalid_json"),
        ("POST", "/runs/", b"[" * 100_000, "invalid_json"),
        ("POST", "/runs/", [1, 2], "invalid_request"),
        ("POST", "/runs/", "just text", "invalid_json"),
        ("POST", "/runs/", {}, "invalid_request"),
        ("POST", "/runs/", {"message": 5, "stream": False}, "invalid_request"),
        ("POST", "/runs/", {"message": "m", "stream": "no"}, "invalid_request"),
        (
            "POST",
            "/runs/",
            {"message": "m", "stream": False, "human_in_the_loop": "yes"},
            "invalid_config",
        ),
        ("POST", "/runs/", {"message": "m", "stream": False, "metadata": "x"}, "invalid_config"),
        (
            "POST",
            "/runs/",
            {"message": "m", "stream": False, "input_timeout": -1},
            "invalid_config",
        ),
        ("POST", "/runs/", {"message": "m", "stream": False, "tools": "gmail"}, "invalid_request"),
        ("POST", "/runs/", {"message": "m", "stream": False, "agent_id": "7"}, "invalid_request"),
        ("POST", f"/runs/{run_id}/approve", {"decision": "allow"}, "invalid_request"),
        (
            "POST",
            f"/runs/{run_id}/approve",
            {"request_id": request_id, "remember": "yes"},
            "invalid_request",
        ),
        (
            "POST",
            f"/runs/{run_id}/approve",
            {"request_id": request_id, "decision": 1},
            "invalid_decision",
        ),
        ("POST", f"/runs/{run_id}/answer", {"answers": "x"}, "invalid_answers"),
        ("POST", f"/runs/{run_id}/answer", {}, "invalid_answers"),
        (
            "PATCH",
            f"/runs/{run_id}/permission-mode",
            {"permission_mode": ["plan"]},
            "invalid_permission_mode",
        ),
        ("PATCH", f"/runs/{run_id}/permission-mode", {}, "invalid_permission_mode"),
        ("POST", "/permissions/", {"tool": {"name": "x"}}, "invalid_request"),
        ("POST", "/permissions/", {"tool": "x", "user_id": 5}, "invalid_request"),
        ("POST", "/webhooks/", {"url": 5}, "invalid_url"),
        (
            "POST",
            "/webhooks/",
            {"url": "http://127.0.0.1:9/", "events": "run.completed"},
            "invalid_event_type",
        ),
        (
            "POST",
            "/webhooks/",
            {"url": "http://127.0.0.1:9/", "user_id": "u"},
            "user_webhooks_unsupported",
        ),
        ("POST", "/tasks/", {"name": "no instructions"}, "invalid_request"),
        (
            "POST",
            "/tasks/",
            {"instructions": "x", "permission_mode": "yolo"},
            "invalid_permission_mode",
        ),
        ("GET", "/runs/?limit=abc", None, "invalid_request"),
        ("GET", "/runs/?limit=0", None, "invalid_request"),
        ("GET", "/runs/?limit=101", None, "invalid_request"),
        ("GET", "/runs/?status=done", None, "invalid_request"),
        ("GET", "/runs/?starting_after=zzz", None, "invalid_cursor"),
        ("GET", "/runs/?user_id=", None, "invalid_request"),
        ("GET", "/permissions/?starting_after=12345", None, "invalid_cursor"),
        ("GET", "/runs/?include_end_user_runs=maybe", None, "invalid_request"),
    ]
    for method, path, body, code in bad:
        refused(call(url, method, path, body), 422, code)
    assert state(url) == before


def test_huge_names_and_messages_are_refused_and_the_server_stays_up(url: str) -> None:
    """A ~300 KB tool name once took the server down (a quadratic lookup in the store)."""
    base = {"stream": False, "human_in_the_loop": True, "permission_mode": "approval"}
    for body, field in (
        ({**base, "message": "go", "tools": ["n" * 300_000]}, "tools"),
        ({**base, "message": "tool:" + "n" * 300_000}, "message"),
    ):
        error = refused(call(url, "POST", "/runs/", body), 422, "invalid_request")
        assert field in error["message"]
    long_name = {**base, "message": "tool:" + "n" * 5_000}  # the agent's own call is refused
    status, _, run = call(url, "POST", "/runs/", long_name)
    assert status == 200, run
    for _ in range(300):
        now = call(url, "GET", f"/runs/{run['id']}")[2]
        if now["status"] == "failed":
            break
        time.sleep(0.02)
    assert now["status"] == "failed" and "tool_name" in str(now)
    assert call(url, "GET", "/runs/")[0] == 200  # still serving


def test_a_second_decision_is_told_who_decided_first(url: str) -> None:
    # two tools: after the first decision the agent waits on the second, so the run is
    # still active when the second person decides the first
    run_id, request_id = waiting_run(url, "tool:db.migrate tool:db.backup")
    path = f"/runs/{run_id}/approve"
    first = {"request_id": request_id, "actor": "alice", "reason": "looks fine"}
    status, _, won = call(url, "POST", path, first)
    assert status == 200 and won["applied"] is True and won["actor"] == "alice"
    status, _, lost = call(url, "POST", path, {"request_id": request_id, "actor": "bob"})
    assert status == 200 and lost["applied"] is False
    assert (lost["actor"], lost["reason"], lost["status"]) == ("alice", "looks fine", "allowed")
    error = refused(
        call(url, "POST", path, {"request_id": request_id, "decision": "deny", "actor": "bob"}),
        404,
        "gate_resolved_otherwise",
    )
    assert "allowed by 'alice'" in error["message"]


def test_a_suspended_run_resumes_on_a_late_decision(url: str) -> None:
    body = {
        "message": "tool:ops.restart",
        "stream": False,
        "human_in_the_loop": True,
        "permission_mode": "approval",
        "input_timeout": 0.2,
    }
    run = call(url, "POST", "/runs/", body)[2]
    assert run["input_timeout"] == 0.2
    for _ in range(300):
        now = call(url, "GET", f"/runs/{run['id']}")[2]
        if now["suspended"]:
            break
        time.sleep(0.02)
    assert now["status"] == "awaiting_approval" and now["suspended"] is True
    request = call(url, "GET", f"/runs/{run['id']}/permissions")[2][0]
    assert request["timeout_seconds"] == 1  # 0.2 s, rounded up
    status, _, decided = call(
        url, "POST", f"/runs/{run['id']}/approve", {"request_id": request["request_id"]}
    )
    assert status == 200 and decided["resumed"] is True and decided["status"] == "allowed"
    for _ in range(300):
        now = call(url, "GET", f"/runs/{run['id']}")[2]
        if now["status"] == "completed":
            break
        time.sleep(0.02)
    assert now["status"] == "completed" and now["suspended"] is False


def test_huge_bodies_are_413_declared_or_chunked(url: str) -> None:
    before = state(url)
    huge = json.dumps({"message": "x" * (2 << 20), "stream": False})
    refused(call(url, "POST", "/runs/", huge), 413, "payload_too_large")
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    chunks = (b"x" * 65536 for _ in range(40))
    connection.request(
        "POST",
        parts.path + "/runs/",
        body=chunks,
        headers={"Authorization": f"Bearer {API_KEY}", "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    answer = connection.getresponse()
    body = json.loads(answer.read())
    assert answer.status == 413 and body["error"]["details"]["error_code"] == "payload_too_large"
    connection.close()
    assert state(url) == before


def test_no_junk_makes_the_server_fail(url: str) -> None:
    run_id, request_id = waiting_run(url)
    paths = [
        ("POST", "/runs/"),
        ("GET", "/runs/"),
        ("GET", f"/runs/{run_id}"),
        ("POST", f"/runs/{run_id}/cancel"),
        ("GET", f"/runs/{run_id}/permissions"),
        ("POST", f"/runs/{run_id}/answer"),
        ("POST", f"/runs/{run_id}/approve"),
        ("PATCH", f"/runs/{run_id}/permission-mode"),
        ("POST", "/permissions/"),
        ("GET", "/permissions/"),
        ("DELETE", "/permissions/1"),
        ("POST", "/tasks/"),
        ("GET", "/tasks/1"),
        ("POST", "/tasks/1/runs"),
        ("POST", "/webhooks/"),
        ("GET", "/webhooks/"),
        ("GET", "/webhooks/1"),
        ("PATCH", "/webhooks/1"),
        ("DELETE", "/webhooks/1"),
        ("GET", "/webhooks/1/deliveries"),
    ]
    junk: list[Any] = [
        None,
        [],
        "s",
        0,
        True,
        {"x": None},
        {"request_id": [request_id], "decision": {"a": 1}, "remember": 2, "reason": 5},
        {"answers": {"q": [1, {}]}, "request_id": 7, "actor": []},
        {"permission_mode": None, "message": "", "tool": None, "url": None, "events": [None]},
        {"message": "m", "stream": False, "user_id": "", "metadata": {"k": float("1e308")}},
        {"active": "no", "rotate_secret": "yes", "url": "http://[::1", "events": [1]},
    ]
    for method, path in paths:
        for body in junk:
            status, _, answer = call(url, method, path + "?limit=5&starting_after=x", body)
            assert status < 500, (method, path, body, answer)
            if status >= 400:
                assert answer["error"]["details"]["error_code"], answer
    refused(call(url, "POST", f"/runs/{run_id}/cancel"), 409, "run_not_active")


# -- the command itself ------------------------------------------------------------------


def hitl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "HITL_API_KEY"}
    return subprocess.run(
        [str(HITL), *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )


def test_clients_that_never_finish_their_headers_are_cut_off(url: str) -> None:
    # uvicorn alone held them for ever: 20,000 of them used up the process's files and
    # every other client waited
    slow_clients_are_cut_off(urlsplit(url).port or 80)
    assert call(url, "GET", "/runs/")[0] == 200  # the server goes on serving


def test_serve_without_a_key_says_so(tmp_path: Path) -> None:
    needs_serve_stack()
    result = hitl("serve", "--port", "0", "--db", str(tmp_path / "x.db"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: no API key: pass --api-key KEY or set HITL_API_KEY"
    assert not (tmp_path / "x.db").exists()


def test_serve_with_a_broken_scenario_names_the_key(tmp_path: Path) -> None:
    needs_serve_stack()
    broken = tmp_path / "broken.toml"
    broken.write_text('[[steps]]\nagent = "fly"\n')
    result = hitl("serve", "--api-key", "k", "--scenario", str(broken))
    assert result.returncode == 2 and "steps[0].agent: unknown action 'fly'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_without_the_extra_prints_how_to_install_it() -> None:
    if not HITL.exists():
        pytest.skip("the hitl command is not installed (pip install -e .)")
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from hitl_cli import main; sys.exit(main(['serve', '--api-key', 'k']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "pip install 'hitl-core[serve]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("form", ["url", "odd path"])
def test_serve_db_takes_a_url_or_any_file_path(tmp_path: Path, form: str) -> None:
    needs_serve_stack()
    path = tmp_path / ("hitl.db" if form == "url" else "odd?name#1.db")
    server = LiveServer(f"sqlite:///{path}" if form == "url" else path)
    try:
        assert server.banner.endswith(f"(store sqlite:///{path})")
        status, _, run = call(server.url, "POST", "/runs/", {"message": "hi", "stream": False})
        assert status == 200
        assert not Path(f"{path}.serve").exists()  # runs need nothing beside the store
        assert call(server.url, "POST", "/tasks/", {"instructions": "hi"})[0] == 200
    finally:
        code, err = server.stop()
    assert (code, err) == (0, "")
    assert path.exists() and Path(f"{path}.serve").exists()  # a task's wire-only fields
    with hitl_core.connect(SqliteStore(str(path))) as engine:  # the run is in that very file
        (stored,) = engine.runs.list(limit=100).data
    assert int(stored.id.split("_")[1], 16) == run["id"]  # the wire id is the core id's hex
