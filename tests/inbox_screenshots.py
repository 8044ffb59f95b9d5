"""Take the screenshots of docs/inbox.md: the real `hitl inbox` on a fresh SQLite file with
a mix of requests, in Debian's headless Chromium. Run it from the repository root:

    .venv/bin/python tests/inbox_screenshots.py

It writes docs/images/inbox-*.png (and needs what the browser tests need)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from inbox_support import LiveInbox, chromium, hitl, missing, plan, question, sign_in, tool_call

import hitl_core

OUT = Path(__file__).resolve().parent.parent / "docs" / "images"


def seed(db: Path) -> dict[str, tuple[str, str]]:
    """A morning's inbox: an old suspended tool call, questions, a revised plan, more calls."""
    made: dict[str, tuple[str, str]] = {}
    with hitl_core.connect(
        f"sqlite:///{db}", clock=hitl_core.ManualClock(start=time.time() - 5400)
    ) as earlier:
        run = earlier.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_123"
        )
        gate = earlier.agent(run.id).request_tool(
            "crm.update", {"lead": "ACME Corp", "stage": "closed-won", "amount": 48000}
        )
        assert gate.request_id is not None
        made["old"] = (run.id, gate.request_id)
    made["questions"] = question(
        db,
        [
            {
                "question": "Which format should the weekly report take?",
                "header": "Format",
                "options": [
                    {"label": "Summary", "description": "one page, the headlines"},
                    {"label": "Full report", "description": "every account, every number"},
                ],
            },
            {
                "question": "Which channels should get it?",
                "header": "Channels",
                "options": ["#sales", "#leadership", "#ops"],
                "multiSelect": True,
            },
        ],
        user="cust_456",
    )
    made["plan"] = plan(
        db,
        "1. Read the open leads from the CRM (2024 only)\n"
        "2. Draft one follow-up email per lead\n"
        "3. Call gmail.send for each draft\n"
        "4. Report what was sent",
        user="cust_123",
        revise="Only leads from 2024, and no more than 20 emails",
    )
    made["mail"] = tool_call(
        db,
        "gmail.send",
        {
            "to": ["team@example.com"],
            "subject": "Weekly pipeline",
            "body": "Hi all,\n\nThe pipeline grew 12% this week.",
        },
        user="cust_456",
    )
    return made


def main() -> int:
    reason = missing()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "hitl.db"
        made = seed(db)
        server = LiveInbox(db)
        try:
            with chromium() as browser:
                size = {"width": 1000, "height": 760}
                context = browser.new_context(viewport=size, device_scale_factor=1)
                page = context.new_page()
                page.goto(server.url + "/login")
                page.get_by_label("Your name").fill("alice")
                page.screenshot(path=OUT / "inbox-login.png")
                context.close()

                context = browser.new_context(viewport=size)
                page = context.new_page()
                sign_in(page, server.url, "alice")
                page.screenshot(path=OUT / "inbox-list.png", full_page=True)

                questions = page.locator(f"#c-{made['questions'][1]}")
                questions.get_by_label("#sales").check()
                questions.get_by_role("button", name="Send answers").click()
                page.locator(f"#c-{made['questions'][1]}").screenshot(
                    path=OUT / "inbox-refused-answer.png"
                )

                page.goto(server.url + "/")
                stale = browser.new_context(
                    viewport=size, java_script_enabled=False, storage_state=context.storage_state()
                ).new_page()
                stale.goto(server.url + "/")
                run_id, request_id = made["mail"]
                hitl(db, "approve", run_id, request_id, "--actor", "bob", "--reason", "looks good")
                page.locator(f"#c-{request_id}").wait_for(state="detached")
                page.screenshot(path=OUT / "inbox-decided-elsewhere.png")

                stale.locator(f"#c-{request_id}").get_by_role("button", name="Deny").click()
                stale.screenshot(path=OUT / "inbox-too-late.png")
        finally:
            server.stop()
    for shot in sorted(OUT.glob("inbox-*.png")):
        print(shot.relative_to(OUT.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
