"""Support for the inbox's browser tests and screenshots: the real `hitl inbox` in a
subprocess on a free port of 127.0.0.1, Debian's Chromium driven by Playwright, and an
SQLite file filled with the kinds of requests a person meets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import LiveCommand

import hitl_core

HITL = Path(sys.executable).parent / "hitl"
PASSWORD = "correct horse battery staple"
CHROMIUM = os.environ.get("HITL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "apt-get install chromium (Debian/Ubuntu), or set HITL_CHROMIUM to a Chromium binary"


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for name, how in (
        ("starlette", "pip install -e '.[serve]'"),
        ("uvicorn", "pip install -e '.[serve]'"),
        ("playwright", "pip install -e '.[test]'"),
    ):
        try:
            __import__(name)
        except ImportError:
            return f"{name} is not installed ({how})"
    if not HITL.exists():
        return "the hitl command is not installed (pip install -e .)"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"Chromium is not installed at {CHROMIUM} ({INSTALL_HINT})"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's, never Playwright's download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class LiveInbox(LiveCommand):
    """`hitl inbox --port 0` on an SQLite file; `url` is the page's address."""

    def __init__(self, db: Path, *, password: str = PASSWORD) -> None:
        self.db = db
        command = ["inbox", "--port", "0", "--db", str(db), "--poll-interval", "0.1"]
        super().__init__(command, {"HITL_INBOX_PASSWORD": password})


def hitl(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `hitl` command on `db`, in its own process (a decision made elsewhere)."""
    return subprocess.run(
        [str(HITL), "--db", str(db), *args], capture_output=True, text=True, timeout=60
    )


def sign_in(page: Any, url: str, name: str, password: str = PASSWORD) -> None:
    """Sign in through the login form."""
    page.goto(url + "/login")
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/")


# -- what a person finds in the inbox -----------------------------------------------------


def engine(db: Path) -> hitl_core.Hitl:
    return hitl_core.connect(f"sqlite:///{db}")


def tool_call(
    db: Path, tool: str, arguments: dict[str, Any] | None = None, *, user: str | None = None
) -> tuple[str, str]:
    """A run in approval mode waiting on one tool call: (run id, request id)."""
    with engine(db) as h:
        run = h.runs.create(human_in_the_loop=True, permission_mode="approval", user_id=user)
        gate = h.agent(run.id).request_tool(tool, arguments or {})
        assert gate.request_id is not None
        return run.id, gate.request_id


def question(
    db: Path, questions: list[dict[str, Any]], *, user: str | None = None, timeout: float = 75.0
) -> tuple[str, str]:
    """A run waiting on a question request: (run id, request id)."""
    with engine(db) as h:
        run = h.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id=user, input_timeout=timeout
        )
        return run.id, h.agent(run.id).ask(questions).request_id


def plan(
    db: Path, text: str, *, user: str | None = None, revise: str | None = None
) -> tuple[str, str]:
    """A plan-mode run waiting on a plan (revision 2 after `revise` feedback on a first)."""
    with engine(db) as h:
        run = h.runs.create(human_in_the_loop=True, permission_mode="plan", user_id=user)
        agent = h.agent(run.id)
        if revise is not None:
            first = agent.propose_plan("1. Draft\n2. Send")
            h.runs.answer(run.id, answers={"Plan Approval": revise}, actor="carol")
            assert agent.result(first.request_id).decision == "revise"
        return run.id, agent.propose_plan(text).request_id


def request(db: Path, run_id: str, request_id: str) -> hitl_core.PermissionRequest:
    """A request as stored now."""
    with engine(db) as h:
        return next(r for r in h.runs.permissions(run_id) if r.request_id == request_id)


def wait_until(check: Any, timeout: float = 10.0) -> Any:
    """Poll `check()` until it returns something truthy (or fail after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {check}")
        time.sleep(0.05)
