"""The approval inbox in a real headless Chromium (Debian's, driven by Playwright) against
the real `hitl inbox` command on an SQLite file: signing in, deciding every kind of request
by clicking and typing, decisions made by other processes leaving the page live, the
second person told who decided first, a keyboard-only pass, hostile text shown as text,
and forms without their CSRF token refused.

One browser and one server for the module; each test makes its own runs under its own
user and opens the page filtered to that user."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from inbox_support import (
    PASSWORD,
    LiveInbox,
    chromium,
    engine,
    hitl,
    missing,
    plan,
    question,
    request,
    sign_in,
    tool_call,
)

import hitl_core

_MISSING = missing()
if _MISSING is not None:
    if os.environ.get("CI"):
        pytest.fail(f"the inbox's browser tests cannot run in CI: {_MISSING}", pytrace=False)
    pytest.skip(f"inbox browser tests skipped: {_MISSING}", allow_module_level=True)

FORMAT = {
    "question": "Which format should the report take?",
    "header": "Format",
    "options": [
        {"label": "Summary", "description": "one page"},
        {"label": "Full report", "description": "every detail"},
    ],
}
CHANNELS = {
    "question": "Which channels?",
    "header": "Channels",
    "options": ["#eng", "#sales", "#ops"],
    "multiSelect": True,
}
DEADLINE = {"question": "When is it due?", "options": ["Today", "Tomorrow"]}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inbox") / "hitl.db"


@pytest.fixture(scope="module")
def server(db: Path) -> Iterator[LiveInbox]:
    hitl_core.connect(f"sqlite:///{db}").close()  # the file exists before the server opens it
    live = LiveInbox(db)
    try:
        yield live
    finally:
        code, err = live.stop()
        assert code == 0, err
        assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def signed_in(browser: Any, server: LiveInbox) -> Any:
    """Alice's cookies, signed in once through the form."""
    context = browser.new_context()
    sign_in(context.new_page(), server.url, "alice")
    state = context.storage_state()
    context.close()
    return state


@pytest.fixture
def page(browser: Any, signed_in: Any) -> Iterator[Any]:
    context = browser.new_context(storage_state=signed_in, viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, errors


@pytest.fixture
def user(request: pytest.FixtureRequest) -> str:
    """A user id of this test's own, so its filtered page shows only its runs."""
    return "u-" + request.node.name.removeprefix("test_")[:40]


def inbox(server: LiveInbox, user: str) -> str:
    return f"{server.url}/?user={quote('u:' + user)}"


def card(page: Any, request_id: str) -> Any:
    return page.locator(f"#c-{request_id}")


def filter_list(page: Any) -> None:
    """Press Filter and let the filtered page load whole (the click returns once the
    navigation commits, while the cards may still be arriving)."""
    page.get_by_role("button", name="Filter").click()
    page.wait_for_load_state("load")


def notice(page: Any) -> str:
    text: str = page.locator("#notice").inner_text()
    return text


# -- signing in ---------------------------------------------------------------------------


def test_the_page_needs_a_sign_in_and_a_wrong_password_is_refused(
    browser: Any, server: LiveInbox, db: Path
) -> None:
    run_id, request_id = tool_call(db, "crm.update", {"id": 7}, user="u-signin")
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url + "/")
    assert page.url == server.url + "/login"  # redirected
    page.get_by_label("Your name").fill("mallory")
    page.get_by_label("Password").fill("not the password")
    with page.expect_response(server.url + "/login") as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    assert page.get_by_role("alert").inner_text() == "Wrong password."
    page.goto(server.url + "/")
    assert page.url == server.url + "/login"
    for path in ("/cards", "/events"):
        assert context.request.get(server.url + path).status == 401
    refused = context.request.post(
        f"{server.url}/decide/{run_id}/{request_id}", form={"decision": "allow"}, max_redirects=0
    )
    assert refused.status == 401
    assert request(db, run_id, request_id).status == "pending"
    context.close()


def test_a_form_without_its_csrf_token_is_refused(page: Any, server: LiveInbox, db: Path) -> None:
    run_id, request_id = tool_call(db, "crm.update", {"id": 8}, user="u-csrf")
    page.goto(inbox(server, "u-csrf"))
    url = f"{server.url}/decide/{run_id}/{request_id}"
    token = card(page, request_id).locator("input[name=csrf]").get_attribute("value")
    api = page.context.request
    for form, headers in (
        ({"decision": "allow"}, {}),
        ({"decision": "allow", "csrf": "forged"}, {}),
        ({"decision": "allow", "csrf": token}, {"Origin": "http://evil.example"}),
    ):
        refused = api.post(url, form=form, headers=headers, max_redirects=0)
        assert refused.status == 403, form
        assert "Form refused" in refused.text()
    assert request(db, run_id, request_id).status == "pending"
    accepted = api.post(url, form={"decision": "allow", "csrf": token}, max_redirects=0)
    assert accepted.status == 303
    assert request(db, run_id, request_id).status == "allowed"


# -- the list -----------------------------------------------------------------------------


def test_the_list_shows_every_kind_the_oldest_and_suspended_first_and_filters(
    page: Any, server: LiveInbox, db: Path
) -> None:
    with hitl_core.connect(
        f"sqlite:///{db}", clock=hitl_core.ManualClock(start=time.time() - 7200)
    ) as two_hours_ago:
        old = two_hours_ago.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="u-list"
        )
        old_request = two_hours_ago.agent(old.id).request_tool("gmail.send", {"to": "a@b.c"})
    assert old_request.request_id is not None
    _, tool = tool_call(db, "slack.post", {"channel": "#eng", "text": "hi"}, user="u-list")
    _, asked = question(db, [FORMAT, CHANNELS], user="u-list")
    _, planned = plan(db, "1. Read the CRM\n2. Email the team", user="u-list", revise="Shorter")
    _, other = tool_call(db, "crm.update", user="u-list-other")

    from playwright.sync_api import expect  # retries until the page has settled

    page.goto(inbox(server, "u-list"))
    expect(page.locator("#summary")).to_have_text(re.compile(r"^4 of "))
    expect(page.locator("article.card")).to_have_count(4)
    ids = page.locator("article.card").evaluate_all("cards => cards.map(c => c.dataset.request)")
    assert ids == [old_request.request_id, tool, asked, planned]  # oldest first

    oldest = card(page, old_request.request_id)
    assert "is-oldest" in (oldest.get_attribute("class") or "")
    assert "is-suspended" in (oldest.get_attribute("class") or "")
    assert oldest.locator(".badge").all_text_contents() == ["Oldest", "Suspended"]
    assert re.search(r"waiting 2 h", oldest.inner_text())
    assert card(page, tool).locator(".badge").count() == 0

    arguments = card(page, tool).locator("pre.args").inner_text()
    assert '"channel": "#eng"' in arguments and '"text": "hi"' in arguments
    assert card(page, asked).locator("input[type=radio]").count() == 2  # one choice
    assert card(page, asked).locator("input[type=checkbox]").count() == 3  # several
    assert card(page, asked).locator("input[type=text]").count() == 2  # free text
    assert "Which channels?" in card(page, asked).inner_text()
    shown_plan = card(page, planned)
    assert "Plan, revision 2" in shown_plan.locator("h3").inner_text()
    assert "1. Read the CRM\n2. Email the team" in shown_plan.locator("pre.plan").inner_text()
    assert "Shorter" in shown_plan.locator(".previous").inner_text()

    page.select_option("#f-tool", "t:slack.post")
    filter_list(page)
    assert page.locator("article.card").count() == 1 and card(page, tool).is_visible()

    page.goto(server.url + "/")
    page.select_option("#f-user", "u:u-list-other")
    filter_list(page)
    assert [c.get_attribute("data-request") for c in page.locator("article.card").all()] == [other]

    page.select_option("#f-user", "u:u-list")
    page.select_option("#f-tool", "")
    page.select_option("#f-age", "3600")
    filter_list(page)
    assert [c.get_attribute("data-request") for c in page.locator("article.card").all()] == [
        old_request.request_id
    ]
    page.get_by_role("link", name="Show all").click()
    page.wait_for_load_state("load")
    assert page.locator("article.card").count() >= 5


# -- deciding by clicking and typing ------------------------------------------------------


def test_allow_a_tool_call_with_a_reason_and_remember(
    page: Any, server: LiveInbox, db: Path, user: str
) -> None:
    run_id, request_id = tool_call(db, "gmail.send", {"to": "team@example.com"}, user=user)
    page.goto(inbox(server, user))
    shown = card(page, request_id)
    shown.get_by_label(re.compile("^Reason")).fill("fine for the weekly report")
    shown.get_by_label("Remember for later calls").check()
    shown.get_by_role("button", name="Allow").click()
    assert notice(page) == "Allowed gmail.send."
    assert card(page, request_id).count() == 0
    decided = request(db, run_id, request_id)
    assert (decided.status, decided.actor, decided.reason, decided.remember) == (
        "allowed",
        "alice",
        "fine for the weekly report",
        True,
    )
    with engine(db) as h:  # remembered for the user's later runs
        later = h.runs.create(human_in_the_loop=True, permission_mode="approval", user_id=user)
        assert h.agent(later.id).request_tool("gmail.send").source == "remembered"


def test_deny_a_tool_call(page: Any, server: LiveInbox, db: Path, user: str) -> None:
    run_id, request_id = tool_call(db, "crm.delete", {"all": True}, user=user)
    page.goto(inbox(server, user))
    card(page, request_id).get_by_label(re.compile("^Reason")).fill("never delete everything")
    card(page, request_id).get_by_role("button", name="Deny").click()
    assert notice(page) == "Denied crm.delete."
    decided = request(db, run_id, request_id)
    assert (decided.status, decided.actor, decided.reason, decided.remember) == (
        "denied",
        "alice",
        "never delete everything",
        False,
    )


def test_answer_one_choice_several_choices_and_free_text(
    page: Any, server: LiveInbox, db: Path, user: str
) -> None:
    run_id, request_id = question(db, [FORMAT, CHANNELS, DEADLINE], user=user)
    page.goto(inbox(server, user))
    shown = card(page, request_id)
    shown.get_by_label("Full report").check()
    shown.get_by_label("#eng").check()
    shown.get_by_label("#ops").check()
    shown.get_by_label("Or add your own answer").fill("#random")
    shown.locator("fieldset").nth(2).get_by_label("Or type your own answer instead").fill(
        "Friday noon"
    )
    shown.get_by_role("button", name="Send answers").click()
    assert notice(page).startswith("Answered the question")
    decided = request(db, run_id, request_id)
    assert decided.actor == "alice"
    assert decided.answers == {
        FORMAT["question"]: "Full report",
        CHANNELS["question"]: ["#eng", "#ops", "#random"],
        DEADLINE["question"]: "Friday noon",
    }


def test_a_refused_answer_is_explained_next_to_its_form(
    page: Any, server: LiveInbox, db: Path, user: str
) -> None:
    run_id, request_id = question(db, [FORMAT, CHANNELS], user=user)
    page.goto(inbox(server, user))
    shown = card(page, request_id)
    shown.get_by_label("#sales").check()
    with page.expect_response(re.compile(r"/decide/")) as answer:
        shown.get_by_role("button", name="Send answers").click()
    assert answer.value.status == 422
    shown = card(page, request_id)
    error = shown.get_by_role("alert")
    assert error.inner_text() == f"Choose or type an answer to \u201c{FORMAT['question']}\u201d"
    assert shown.get_by_label("#sales").is_checked()  # what was chosen is kept
    assert page.evaluate("document.activeElement.closest('article')?.id") == f"c-{request_id}"
    assert request(db, run_id, request_id).status == "pending"


def test_a_text_the_store_refuses_is_explained_next_to_its_form(
    page: Any, server: LiveInbox, db: Path, user: str
) -> None:
    run_id, request_id = tool_call(db, "gmail.send", user=user)
    page.goto(inbox(server, user))
    too_long = "why " * 1001  # the store keeps reasons of up to 4,000 characters
    card(page, request_id).get_by_label(re.compile("^Reason")).fill(too_long)
    with page.expect_response(re.compile(r"/decide/")) as answer:
        card(page, request_id).get_by_role("button", name="Deny").click()
    assert answer.value.status == 422
    shown = card(page, request_id)
    assert shown.get_by_role("alert").inner_text() == "Reason is longer than 4,000 characters"
    assert shown.get_by_label(re.compile("^Reason")).input_value() == too_long
    assert request(db, run_id, request_id).status == "pending"
    shown.get_by_label(re.compile("^Reason")).fill("too risky")
    shown.get_by_role("button", name="Deny").click()
    assert notice(page) == "Denied gmail.send."
    assert request(db, run_id, request_id).reason == "too risky"


def test_ask_for_a_plan_revision_then_approve_it_live(
    page: Any, server: LiveInbox, db: Path, user: str
) -> None:
    run_id, first = plan(db, "1. Export every lead\n2. Email them", user=user)
    page.goto(inbox(server, user))
    shown = card(page, first)
    assert "Plan, revision 1" in shown.inner_text()
    shown.get_by_label("Or say what should change").fill("Only leads from 2024")
    shown.get_by_role("button", name="Ask for a revision").click()
    assert notice(page) == "Asked for a revision of the plan (revision 1)."
    revised = request(db, run_id, first)
    assert (revised.decision, revised.reason, revised.actor) == (
        "revise",
        "Only leads from 2024",
        "alice",
    )
    with engine(db) as h:  # the agent reads the feedback and proposes again
        second = h.agent(run_id).propose_plan("1. Export leads from 2024\n2. Email them")
    shown = card(page, second.request_id)
    shown.wait_for()  # arrives without a reload
    assert "Plan, revision 2" in shown.inner_text()
    assert "Only leads from 2024" in shown.locator(".previous").inner_text()
    shown.get_by_role("button", name="Approve plan").click()
    assert notice(page) == "Approved the plan (revision 2)."
    approved = request(db, run_id, second.request_id)
    assert (approved.decision, approved.actor) == ("approve", "alice")


# -- decisions made elsewhere ---------------------------------------------------------------


def test_decisions_made_elsewhere_leave_the_page_live(
    browser: Any, page: Any, server: LiveInbox, db: Path, user: str
) -> None:
    tool_run, tool = tool_call(db, "slack.post", {"text": "deploy done"}, user=user)
    asked_run, asked = question(db, [FORMAT], user=user)
    page.goto(inbox(server, user))
    card(page, asked).get_by_label("Summary").check()  # someone is busy on the page

    started = time.monotonic()
    done = hitl(db, "approve", tool_run, tool, "--actor", "bob")
    assert done.returncode == 0, done.stderr
    card(page, tool).wait_for(state="detached", timeout=5000)
    latency = time.monotonic() - started
    print(f"a CLI decision left the page {latency:.2f} s after the command started")
    log = page.locator("#live")
    assert "Tool call slack.post (run " in log.inner_text()
    assert "was allowed by bob" in log.inner_text()
    assert card(page, asked).get_by_label("Summary").is_checked()  # untouched

    done = hitl(db, "answer", asked_run, f"{FORMAT['question']}=Full report", "--actor", "carol")
    assert done.returncode == 0, done.stderr
    card(page, asked).wait_for(state="detached", timeout=5000)
    assert "was answered by carol" in log.inner_text()

    with engine(db) as h:  # the SDK, in this process, opens a new request
        run = h.runs.create(human_in_the_loop=True, permission_mode="approval", user_id=user)
        fresh = h.agent(run.id).request_tool("linear.create_issue", {"title": "Bug"})
    assert fresh.request_id is not None
    card(page, fresh.request_id).wait_for(timeout=5000)
    assert "New: Tool call linear.create_issue" in log.inner_text()
    assert page.locator("article.card").count() == 1

    with engine(db) as h:  # the SDK decides it
        h.runs.approve(run.id, request_id=fresh.request_id, decision="deny", actor="dave")
    card(page, fresh.request_id).wait_for(state="detached", timeout=5000)
    assert "Tool call linear.create_issue (run " in log.inner_text()
    assert "was denied by dave" in log.inner_text()

    # Bob, in his own browser tab, decides what alice is looking at.
    run_id, last = tool_call(db, "calendar.create_event", {"title": "Standup"}, user=user)
    card(page, last).wait_for(timeout=5000)
    bobs = browser.new_context()
    bob = bobs.new_page()
    sign_in(bob, server.url, "bob")
    bob.goto(inbox(server, user))
    card(bob, last).get_by_role("button", name="Allow").click()
    assert notice(bob) == "Allowed calendar.create_event."
    card(page, last).wait_for(state="detached", timeout=5000)
    assert "Tool call calendar.create_event (run " in log.inner_text()
    assert "was allowed by bob" in log.inner_text()
    assert request(db, run_id, last).actor == "bob"
    bobs.close()


def test_the_second_person_is_told_who_decided_first(
    browser: Any, signed_in: Any, server: LiveInbox, db: Path, user: str
) -> None:
    tool_run, tool = tool_call(db, "gmail.send", {"to": "all@example.com"}, user=user)
    same_run, same = tool_call(db, "slack.post", user=user)
    asked_run, asked = question(db, [FORMAT], user=user)
    plan_run, planned = plan(db, "1. Do it", user=user)
    # Alice has the inbox open in four tabs (without JavaScript, so the forms stay as
    # they were, as on a slow connection) when bob decides everything from the CLI.
    context = browser.new_context(storage_state=signed_in, java_script_enabled=False)
    tabs = [context.new_page() for _ in range(4)]
    for tab in tabs:
        tab.goto(inbox(server, user))
    text = FORMAT["question"]
    for args in (
        ("approve", tool_run, tool, "--reason", "fine"),
        ("approve", same_run, same),
        ("answer", asked_run, f"{text}=Summary"),
        ("answer", plan_run, "Plan Approval=Approve"),
    ):
        done = hitl(db, *args, "--actor", "bob")
        assert done.returncode == 0, done.stderr

    card(tabs[0], tool).get_by_role("button", name="Deny").click()  # the opposite decision
    card(tabs[1], same).get_by_role("button", name="Allow").click()  # the same one
    card(tabs[2], asked).get_by_label("Full report").check()
    card(tabs[2], asked).get_by_role("button", name="Send answer").click()
    card(tabs[3], planned).get_by_role("button", name="Approve plan").click()
    late = r" by bob at \d\d:\d\d:\d\d UTC; your decision was not recorded\."
    expected = [
        "Too late: gmail.send was already allowed" + late,
        "Too late: slack.post was already allowed" + late,
        f"Too late: the question \u201c{re.escape(text)}\u201d was already answered" + late,
        r"Too late: the plan \(revision 1\) was already approved" + late,
    ]
    for tab, pattern in zip(tabs, expected, strict=True):
        assert re.fullmatch(pattern, notice(tab)), notice(tab)
        assert tab.locator("article.card").count() == 0  # the fresh list has none left
    assert (request(db, tool_run, tool).status, request(db, tool_run, tool).reason) == (
        "allowed",
        "fine",
    )
    assert request(db, same_run, same).actor == "bob"
    assert request(db, asked_run, asked).answers == {text: "Summary"}
    assert request(db, plan_run, planned).actor == "bob"
    context.close()


# -- keyboard only --------------------------------------------------------------------------


def tab_to(page: Any, check: str, limit: int = 80) -> None:
    """Press Tab until `check` (a JavaScript expression on `el`, the focused element) holds."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return {check}; }})()"):
            return
    raise AssertionError(f"Tab never reached an element where {check}")


def test_keyboard_only(page: Any, server: LiveInbox, db: Path, user: str) -> None:
    tool_run, tool = tool_call(db, "calendar.create_event", {"title": "Retro"}, user=user)
    asked_run, asked = question(db, [FORMAT, CHANNELS], user=user)
    plan_run, planned = plan(db, "1. Book the room\n2. Invite everyone", user=user)
    page.goto(inbox(server, user))

    # The skip link comes first and jumps to the requests.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the requests"

    # A tool call: type a reason (Enter there must not submit), tick remember, Allow.
    tab_to(page, "el.name === 'reason'")
    page.keyboard.type("ok for the retro")
    page.keyboard.press("Enter")
    assert request(db, tool_run, tool).status == "pending"
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    tab_to(page, "el.textContent === 'Allow'")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("#c-" + asked))
    assert request(db, tool_run, tool).status == "allowed"
    assert request(db, tool_run, tool).remember is True
    # Focus lands on the next card.
    assert page.evaluate("document.activeElement.id") == f"c-{asked}"

    # A question: arrow keys pick a radio, Space ticks boxes, Enter sends.
    tab_to(page, "el.type === 'radio'")
    page.keyboard.press("ArrowDown")  # the second option: Full report
    tab_to(page, "el.type === 'checkbox'")
    page.keyboard.press("Space")  # #eng
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Space")  # #ops
    tab_to(page, "el.textContent === 'Send answers'")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("#c-" + planned))
    assert request(db, asked_run, asked).answers == {
        FORMAT["question"]: "Full report",
        CHANNELS["question"]: ["#eng", "#ops"],
    }

    # j / k move between cards; a plan is approved with Enter.
    page.keyboard.press("k")
    assert page.evaluate("document.activeElement.id") == f"c-{planned}"
    tab_to(page, "el.textContent === 'Approve plan'")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(re.escape(inbox(server, user)) + "$"))
    assert request(db, plan_run, planned).decision == "approve"
    assert page.locator("article.card").count() == 0


# -- hostile text ---------------------------------------------------------------------------

TRAPS = [
    '<img src=x onerror="window.__pwned=1">',
    "</pre><script>window.__pwned=2</script>",
    '"><svg onload="window.__pwned=3">',
    "<iframe src=javascript:window.__pwned=4>",
]


def test_hostile_names_arguments_and_questions_render_as_text(
    page: Any, server: LiveInbox, db: Path
) -> None:
    user = '<b>u-"hostile"</b>'
    run_id, tool = tool_call(db, TRAPS[0], {TRAPS[1]: TRAPS[2], "x": [TRAPS[3]]}, user=user)
    _, asked = question(
        db,
        [
            {
                "question": TRAPS[1] + "?",
                "header": TRAPS[3],
                "options": [{"label": TRAPS[2], "description": TRAPS[0]}, "plain"],
            }
        ],
        user=user,
    )
    plan_run, planned = plan(db, TRAPS[1] + "\n" + TRAPS[3], user=user)
    _, sneaky = tool_call(db, "gmail.send\u202eexe.txt", user=user)
    page.goto(inbox(server, user))

    assert page.evaluate("window.__pwned") is None
    assert (
        page.locator("main img, main svg, main iframe, main b, body script:not([src])").count() == 0
    )
    assert card(page, tool).locator("h3 code").inner_text() == TRAPS[0]
    arguments = card(page, tool).locator("pre.args").inner_text()
    assert TRAPS[1] in arguments and TRAPS[2].replace('"', '\\"') in arguments
    shown_question = card(page, asked)
    assert TRAPS[1] + "?" in shown_question.locator("legend").inner_text()
    assert shown_question.get_by_label(TRAPS[2]).count() == 1
    assert TRAPS[0] in shown_question.inner_text()
    assert user in card(page, tool).locator(".facts").inner_text()
    assert card(page, planned).locator("pre.plan").inner_text() == TRAPS[1] + "\n" + TRAPS[3]
    # A right-to-left override cannot make a name read as something else.
    assert card(page, sneaky).locator("h3 code").inner_text() == "gmail.send<U+202E>exe.txt"

    # Deciding it, and hearing of a decision made elsewhere by a hostile actor, stay text too.
    card(page, tool).get_by_role("button", name="Deny").click()
    assert notice(page) == f"Denied {TRAPS[0]}."
    assert request(db, run_id, tool).status == "denied"
    done = hitl(db, "answer", plan_run, "Plan Approval=Approve", "--actor", TRAPS[0])
    assert done.returncode == 0, done.stderr
    card(page, planned).wait_for(state="detached", timeout=5000)
    assert f"was approved by {TRAPS[0]}" in page.locator("#live").inner_text()
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img, main svg, main iframe, #live *:not(p)").count() == 0


def test_a_hostile_name_at_sign_in_is_text(browser: Any, server: LiveInbox, db: Path) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, server.url, TRAPS[0], PASSWORD)
    assert page.locator(".who strong").inner_text() == TRAPS[0]
    run_id, request_id = tool_call(db, "crm.update", user="u-hostile-name")
    page.goto(inbox(server, "u-hostile-name"))
    card(page, request_id).get_by_role("button", name="Allow").click()
    assert request(db, run_id, request_id).actor == TRAPS[0]
    assert page.evaluate("window.__pwned") is None
    context.close()
