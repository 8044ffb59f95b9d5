"""`hitl serve` driven by the hosted API's own SDK (m8tes), unmodified, against a live
server on 127.0.0.1: runs in every mode, approvals, remembered decisions, policies per
user, mode switches, cancels, tasks, every refusal the SDK maps, signed webhooks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveServer, needs_serve_stack

ROOT = Path(__file__).resolve().parent.parent
FAST = {"poll_interval": 0.05, "poll_timeout": 30}

pytestmark = pytest.mark.usefixtures("_stack")


@pytest.fixture(scope="module")
def _stack() -> None:
    needs_serve_stack()


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Any:
    return live_server.client()


def answer_first(request: Any) -> dict[str, str]:
    """on_question: approve plans, pick each question's first option."""
    if request.is_plan_approval:
        return {"Plan Approval": "Approve"}
    return {q["question"]: q["options"][0]["label"] for q in request.tool_input["questions"]}


class Seen:
    """Callbacks that record what they were asked."""

    def __init__(self, decision: str = "allow") -> None:
        self.questions: list[Any] = []
        self.approvals: list[Any] = []
        self.decision = decision

    def on_question(self, request: Any) -> dict[str, str]:
        self.questions.append(request)
        return answer_first(request)

    def on_approval(self, request: Any) -> str:
        self.approvals.append(request)
        return self.decision


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError("condition not met in time")


def pending(client: Any, run_id: int) -> list[Any]:
    return [r for r in client.runs.permissions(run_id) if r.status == "pending"]


def start_waiting(client: Any, message: str, **config: Any) -> tuple[Any, Any]:
    """Create a run and return it with its first pending request."""
    run = client.runs.create(message=message, stream=False, **config)
    return run, wait_for(lambda: pending(client, run.id))[0]


# -- every mode, driven by create_and_wait ------------------------------------------------


@pytest.mark.parametrize(
    ("config", "questions", "plans", "tools"),
    [
        ({}, 0, 0, 0),
        ({"human_in_the_loop": False, "permission_mode": "autonomous"}, 0, 0, 0),
        ({"human_in_the_loop": True, "permission_mode": "autonomous"}, 1, 0, 0),
        ({"human_in_the_loop": True, "permission_mode": "approval"}, 1, 0, 2),
        ({"human_in_the_loop": True, "permission_mode": "plan"}, 1, 1, 2),
    ],
    ids=["defaults", "off-autonomous", "on-autonomous", "approval", "plan"],
)
def test_create_and_wait_completes_in_every_mode(
    client: Any, config: dict[str, Any], questions: int, plans: int, tools: int
) -> None:
    seen = Seen()
    run = client.runs.create_and_wait(
        message="Which channels? Email the team and post to Slack",
        on_question=seen.on_question,
        on_approval=seen.on_approval,
        **config,
        **FAST,
    )
    assert run.status == "completed", run
    assert isinstance(run.id, int)
    assert run.permission_mode == config.get("permission_mode", "autonomous")
    asked = [r for r in seen.questions if not r.is_plan_approval]
    assert len(asked) == (questions if config.get("human_in_the_loop") else 0)
    assert len([r for r in seen.questions if r.is_plan_approval]) == plans
    assert sorted(r.tool_name for r in seen.approvals) == (
        ["gmail.send", "slack.post"] if tools else []
    )
    assert "gmail.send: allowed" in run.output and "slack.post: allowed" in run.output
    history = client.runs.permissions(run.id)
    assert all(r.status != "pending" for r in history)
    assert len(history) == len(seen.questions) + len(seen.approvals)


def test_plan_feedback_makes_the_agent_propose_again(client: Any) -> None:
    feedback = iter(["Only leads since 2024", "Approve"])
    plans: list[Any] = []

    def on_question(request: Any) -> dict[str, str]:
        assert request.is_plan_approval
        plans.append(request)
        return {"Plan Approval": next(feedback)}

    run = client.runs.create_and_wait(
        message="update the CRM",
        human_in_the_loop=True,
        permission_mode="plan",
        on_question=on_question,
        on_approval=lambda request: "allow",
        **FAST,
    )
    assert run.status == "completed"
    assert [p.tool_input["revision"] for p in plans] == [1, 2]
    assert "Only leads since 2024" in plans[1].plan_text
    first, second = [r for r in client.runs.permissions(run.id) if r.is_plan_approval]
    assert first.tool_input["answers"] == {first.plan_text: "Only leads since 2024"}
    assert second.status == "answered"


def test_a_denial_and_its_reason_reach_the_agent(client: Any) -> None:
    run, gate = start_waiting(
        client, "tool:db.drop_table", human_in_the_loop=True, permission_mode="approval"
    )
    assert gate.tool_name == "db.drop_table" and gate.timeout_seconds == 75
    denied = client.runs.approve(
        run.id, request_id=gate.request_id, decision="deny", reason="never in production"
    )
    assert denied.status == "denied" and denied.resumed is False and denied.remembered is False
    done = client.runs.poll(run.id, interval=0.05, timeout=20)
    assert done.status == "completed"
    assert "db.drop_table: denied (human: never in production)" in done.output


def test_parallel_tool_requests_are_decided_one_by_one(client: Any) -> None:
    run = client.runs.create(
        message="in parallel: tool:a.one tool:b.two",
        stream=False,
        human_in_the_loop=True,
        permission_mode="approval",
    )
    gates = wait_for(lambda: len(pending(client, run.id)) == 2 and pending(client, run.id))
    assert client.runs.get(run.id).status == "awaiting_approval"
    first = client.runs.approve(run.id, request_id=gates[0].request_id)
    assert first.status == "allowed" and first.remembered is False
    again = client.runs.approve(run.id, request_id=gates[0].request_id, remember=True)
    assert again.status == "allowed" and again.remembered is True  # a repeat may upgrade
    assert client.runs.get(run.id).status == "awaiting_approval"
    client.runs.approve(run.id, request_id=gates[1].request_id, decision="deny")
    assert client.runs.poll(run.id, interval=0.05, timeout=20).status == "completed"


# -- remember and policies ----------------------------------------------------------------


def test_approve_with_remember_allows_the_tool_in_later_runs_of_the_user(client: Any) -> None:
    user = "cust_remember"
    run, gate = start_waiting(
        client,
        "tool:crm.update",
        human_in_the_loop=True,
        permission_mode="approval",
        user_id=user,
    )
    approved = client.runs.approve(run.id, request_id=gate.request_id, remember=True)
    assert approved.remembered is True and approved.status == "allowed"
    assert client.runs.poll(run.id, interval=0.05, timeout=20).status == "completed"

    later = client.runs.create_and_wait(
        message="tool:crm.update",
        human_in_the_loop=True,
        permission_mode="approval",
        user_id=user,
        on_approval=lambda request: pytest.fail("a remembered tool was asked about"),
        **FAST,
    )
    assert later.status == "completed" and "crm.update: allowed (remembered)" in later.output
    policies = list(client.permissions.list(user_id=user).auto_paging_iter())
    assert [(p.tool_name, p.source) for p in policies] == [("crm.update", "run_approval")]
    other = client.runs.create_and_wait(
        message="tool:crm.update",
        human_in_the_loop=True,
        permission_mode="approval",
        user_id="cust_stranger",
        on_approval=lambda request: "allow",
        **FAST,
    )
    assert "crm.update: allowed (human)" in other.output


def test_policies_for_cust_123_page_and_stay_in_their_scope(client: Any) -> None:
    from m8tes import NotFoundError

    tools = ("slack.*", "gmail.send")
    made = [client.permissions.create(tool=t, user_id="cust_123") for t in tools]
    assert client.permissions.create(tool="slack.*", user_id="cust_123").id == made[0].id
    assert all(isinstance(p.id, int) and p.source == "api" for p in made)
    first = client.permissions.list(user_id="cust_123", limit=1)
    assert first.has_more and first.next_starting_after == made[0].id
    assert [p.id for p in first.auto_paging_iter()] == [p.id for p in made]
    assert client.permissions.list(user_id="cust_456").data == []
    assert made[0].id not in [p.id for p in client.permissions.list().data]

    run = client.runs.create_and_wait(
        message="post to slack",
        human_in_the_loop=True,
        permission_mode="approval",
        user_id="cust_123",
        on_approval=lambda request: pytest.fail("a pre-approved tool was asked about"),
        **FAST,
    )
    assert "slack.post: allowed (policy)" in run.output

    with pytest.raises(NotFoundError) as refused:
        client.permissions.delete(made[1].id, user_id="cust_456")
    assert refused.value.code == "policy_not_found" and refused.value.status_code == 404
    with pytest.raises(NotFoundError):
        client.permissions.delete(made[1].id)  # the account scope is another scope
    client.permissions.delete(made[1].id, user_id="cust_123")
    with pytest.raises(NotFoundError):
        client.permissions.delete(made[1].id, user_id="cust_123")
    assert [p.id for p in client.permissions.list(user_id="cust_123").data] == [made[0].id]


def test_one_users_runs_are_invisible_to_another(client: Any) -> None:
    from m8tes import NotFoundError

    run, _ = start_waiting(
        client, "tool:x.y", human_in_the_loop=True, permission_mode="approval", user_id="cust_A"
    )
    for call in (
        lambda: client.runs.get(run.id, user_id="cust_B"),
        lambda: client.runs.cancel(run.id, user_id="cust_B"),
        lambda: client.runs.poll(run.id, user_id="cust_B", timeout=0, interval=0),
    ):
        with pytest.raises((NotFoundError, TimeoutError)) as refused:
            call()
        if isinstance(refused.value, NotFoundError):
            assert refused.value.code == "run_not_found"
    assert client.runs.get(run.id, user_id="cust_A").status == "awaiting_approval"
    assert run.id in [r.id for r in client.runs.list(user_id="cust_A").auto_paging_iter()]
    assert run.id not in [r.id for r in client.runs.list(user_id="cust_B").auto_paging_iter()]
    assert run.id not in [r.id for r in client.runs.list(limit=100).auto_paging_iter()]
    everyone = client.runs.list(include_end_user_runs=True, limit=100).auto_paging_iter()
    assert run.id in [r.id for r in everyone]
    client.runs.cancel(run.id, user_id="cust_A")


# -- mode switch and cancel -------------------------------------------------------------------


def test_switching_to_autonomous_allows_the_pending_tool(client: Any) -> None:
    from m8tes import ValidationError

    run, gate = start_waiting(
        client, "email the board", human_in_the_loop=True, permission_mode="approval"
    )
    switched = client.runs.update_permission_mode(run.id, permission_mode="autonomous")
    assert switched.permission_mode == "autonomous"
    request = next(r for r in client.runs.permissions(run.id) if r.request_id == gate.request_id)
    assert request.status == "allowed"
    done = client.runs.wait(run.id, interval=0.05, timeout=20)  # no callbacks needed now
    assert done.status == "completed" and done.permission_mode == "autonomous"
    assert "gmail.send: allowed (mode_switch)" in done.output

    off = client.runs.create(message="hello sleep:1", stream=False)  # busy for a second
    with pytest.raises(ValidationError) as refused:
        client.runs.update_permission_mode(off.id, permission_mode="approval")
    assert refused.value.code == "hitl_required" and refused.value.status_code == 422
    assert client.runs.get(off.id).permission_mode == "autonomous"
    client.runs.cancel(off.id)


def test_cancel_ends_the_run_and_its_requests(client: Any) -> None:
    from m8tes import ConflictError

    run, gate = start_waiting(
        client, "tool:deploy.prod", human_in_the_loop=True, permission_mode="approval"
    )
    cancelled = client.runs.cancel(run.id)
    assert cancelled.status == "cancelled" and cancelled.id == run.id
    assert [r.status for r in client.runs.permissions(run.id)] == ["cancelled"]
    for call in (
        lambda: client.runs.cancel(run.id),
        lambda: client.runs.approve(run.id, request_id=gate.request_id),
        lambda: client.runs.update_permission_mode(run.id, permission_mode="autonomous"),
    ):
        with pytest.raises(ConflictError) as refused:
            call()
        assert refused.value.code == "run_not_active" and refused.value.status_code == 409
    assert client.runs.wait(run.id, timeout=5, interval=0.05).status == "cancelled"


# -- every refusal the SDK maps ------------------------------------------------------------


def test_refusals_arrive_as_the_sdks_exceptions_with_our_codes(client: Any) -> None:
    from m8tes import ConflictError, NotFoundError, ValidationError

    run, question = start_waiting(
        client,
        "Which one? In parallel: tool:z.z tool:w.w",
        human_in_the_loop=True,
        permission_mode="approval",
    )
    text = question.tool_input["questions"][0]["question"]
    cases: list[tuple[Callable[[], Any], type[Exception], int, str]] = [
        (
            lambda: client.runs.create(message="m", stream=False, permission_mode="approval"),
            ValidationError,
            422,
            "hitl_required",
        ),
        (
            lambda: client.runs.create(
                message="m", stream=False, human_in_the_loop=True, permission_mode="yolo"
            ),
            ValidationError,
            422,
            "invalid_permission_mode",
        ),
        (
            lambda: client.runs.create(message="m", stream=False, human_in_the_loop="yes"),
            ValidationError,
            422,
            "invalid_config",
        ),
        (lambda: client.runs.create(message="m"), ValidationError, 422, "streaming_unsupported"),
        (lambda: client.runs.get(424242), NotFoundError, 404, "run_not_found"),
        (lambda: client.runs.answer(run.id, answers={}), ValidationError, 422, "empty_answers"),
        (
            lambda: client.runs.answer(run.id, answers={"nope": "x"}),
            ValidationError,
            422,
            "invalid_answers",
        ),
        (
            lambda: client.runs.approve(run.id, request_id=question.request_id, decision="maybe"),
            ValidationError,
            422,
            "invalid_decision",
        ),
        (
            lambda: client.runs.approve(run.id, request_id=question.request_id),
            NotFoundError,
            404,
            "gate_not_found",
        ),
        (
            lambda: client.runs.approve(run.id, request_id="req_nothing"),
            NotFoundError,
            404,
            "gate_not_found",
        ),
        (lambda: client.tasks.get(99), NotFoundError, 404, "task_not_found"),
        (lambda: client.permissions.create(tool=""), ValidationError, 422, "invalid_request"),
        (lambda: client.permissions.delete(5), NotFoundError, 404, "policy_not_found"),
        (lambda: client.webhooks.create(url="ftp://x"), ValidationError, 422, "invalid_url"),
        (
            lambda: client.webhooks.create(url="http://127.0.0.1:9/h", events=["run.nope"]),
            ValidationError,
            422,
            "invalid_event_type",
        ),
        (lambda: client.webhooks.get(7), NotFoundError, 404, "webhook_not_found"),
    ]
    for call, kind, status, code in cases:
        with pytest.raises(kind) as refused:
            call()
        assert (refused.value.status_code, refused.value.code) == (status, code), code
        assert refused.value.error_code == code

    client.runs.answer(run.id, answers={text: "Summary"}, request_id=question.request_id)
    # The agent goes on to two tools at once, so the run stays active while we test.
    gate, other = wait_for(lambda: len(pending(client, run.id)) == 2 and pending(client, run.id))
    assert gate.tool_name == "z.z"
    client.runs.answer(run.id, answers={text: "Summary"}, request_id=question.request_id)
    with pytest.raises(ConflictError) as refused:
        client.runs.answer(run.id, answers={text: "Full report"}, request_id=question.request_id)
    assert refused.value.code == "already_answered"
    with pytest.raises(ConflictError) as refused:
        client.runs.answer(run.id, answers={"q": "a"})
    assert refused.value.code == "not_awaiting_input" and refused.value.status_code == 409
    client.runs.approve(run.id, request_id=gate.request_id, decision="deny")
    with pytest.raises(NotFoundError) as refused:
        client.runs.approve(run.id, request_id=gate.request_id, decision="allow")
    assert refused.value.code == "gate_resolved_otherwise"
    client.runs.approve(run.id, request_id=other.request_id)
    done = client.runs.poll(run.id, interval=0.05, timeout=20)
    with pytest.raises(ConflictError) as refused:
        client.runs.answer(done.id, answers={text: "Summary"})
    assert refused.value.code == "run_not_active"


def test_a_wrong_key_is_an_authentication_error(live_server: LiveServer) -> None:
    from m8tes import AuthenticationError

    with pytest.raises(AuthenticationError) as refused:
        live_server.client(key="wrong").runs.list()
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"


# -- tasks, idempotency ---------------------------------------------------------------------


def test_tasks_create_get_and_run(client: Any) -> None:
    from m8tes import NotFoundError, ValidationError

    task = client.tasks.create(
        instructions="Email the weekly report",
        agent_id=7,
        name="weekly",
        permission_mode="approval",
        user_id="cust_tasks",
    )
    assert isinstance(task.id, int) and task.teammate_id == 7 and task.name == "weekly"
    assert client.tasks.get(task.id).instructions == "Email the weekly report"
    with pytest.raises(NotFoundError):
        client.tasks.get(task.id, user_id="cust_other")
    with pytest.raises(ValidationError) as refused:
        client.tasks.run(task.id, stream=False)  # approval needs human_in_the_loop
    assert refused.value.code == "hitl_required"
    seen = Seen()
    run = client.tasks.run_and_wait(
        task.id, human_in_the_loop=True, on_approval=seen.on_approval, **FAST
    )
    assert run.status == "completed" and run.task_id == task.id
    assert run.user_id == "cust_tasks" and run.permission_mode == "approval"
    assert [r.tool_name for r in seen.approvals] == ["gmail.send"]
    listed = client.runs.list(task_id=task.id, user_id="cust_tasks")
    assert [r.id for r in listed.data] == [run.id]
    with pytest.raises(NotFoundError):
        client.tasks.run(task.id, stream=False, human_in_the_loop=True, user_id="cust_other")


def _raw(server: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST over raw HTTP (urllib), as a client without the SDK would."""
    import urllib.request

    request = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def test_sdk_and_raw_http_differ_as_serve_md_says(client: Any, live_server: LiveServer) -> None:
    """docs/serve.md, "The SDK and raw HTTP": agent_id, input_timeout, stream."""
    import inspect

    from m8tes import ValidationError

    # tasks.create: the SDK refuses to send it without agent_id (the server needs none)
    with pytest.raises(ValueError, match="agent_id"):
        client.tasks.create(instructions="Email the report")
    assert client.tasks.create(instructions="Email the report", agent_id=1).teammate_id == 1
    assert _raw(live_server, "/tasks/", {"instructions": "Email the report"})["teammate_id"] is None
    # ... and it has no human_in_the_loop argument; raw HTTP takes one
    assert "human_in_the_loop" not in inspect.signature(client.tasks.create).parameters
    task = _raw(
        live_server,
        "/tasks/",
        {"instructions": "Email", "human_in_the_loop": True, "permission_mode": "approval"},
    )
    assert task["human_in_the_loop"] is True
    # input_timeout: no SDK call takes it; raw HTTP runs (and task runs) do
    for call in (client.runs.create, client.runs.create_and_wait, client.tasks.run):
        assert "input_timeout" not in inspect.signature(call).parameters
    timed = {"message": "hello", "input_timeout": 30}
    assert _raw(live_server, "/runs/", timed)["input_timeout"] == 30.0
    assert (
        _raw(live_server, f"/tasks/{task['id']}/runs", {"input_timeout": 12})["input_timeout"]
        == 12.0
    )
    # stream: the SDK defaults to True (refused here); raw HTTP without it is a JSON run
    for call in (client.runs.create, client.tasks.run):
        assert inspect.signature(call).parameters["stream"].default is True
    with pytest.raises(ValidationError) as refused:
        client.runs.create(message="hello")
    assert refused.value.code == "streaming_unsupported"
    assert _raw(live_server, "/runs/", {"message": "hello"})["status"] == "running"


def test_an_idempotency_key_replays_the_same_run(client: Any) -> None:
    first = client.runs.create(message="hello", stream=False, idempotency_key="job-42")
    second = client.runs.create(message="hello", stream=False, idempotency_key="job-42")
    assert first.id == second.id
    assert client.runs.create(message="hello", stream=False).id != first.id


# -- webhooks -----------------------------------------------------------------------------


class Receiver:
    """A local webhook receiver that keeps every POST it gets."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((body, dict(self.headers.items())))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def test_webhooks_are_signed_so_the_sdk_verifies_them(client: Any, receiver: Receiver) -> None:
    from m8tes import NotFoundError
    from m8tes._resources.webhooks import Webhooks

    endpoint = client.webhooks.create(
        url=receiver.url, events=["run.awaiting_input", "run.completed"]
    )
    secret = endpoint.secret
    assert isinstance(endpoint.id, int) and len(secret) >= 32
    assert client.webhooks.get(endpoint.id).secret == secret[:4] + "..."
    assert endpoint.id in [w.id for w in client.webhooks.list().data]

    run = client.runs.create_and_wait(
        message="email them",
        human_in_the_loop=True,
        permission_mode="approval",
        on_approval=lambda request: "allow",
        **FAST,
    )

    def mine() -> list[dict[str, Any]]:
        bodies = [json.loads(body) for body, _ in receiver.received]
        return [b for b in bodies if client.runs.get(b["run_id"]).id == run.id]

    events = wait_for(lambda: len(mine()) >= 2 and mine())
    assert [e["event"] for e in events] == ["run.awaiting_input", "run.completed"]
    for body, headers in receiver.received:
        assert Webhooks.verify_signature(body, headers, secret, tolerance_seconds=300)
        assert not Webhooks.verify_signature(body + b" ", headers, secret)
        assert not Webhooks.verify_signature(body, headers, "wrong-secret")

    deliveries = wait_for(
        lambda: [d for d in client.webhooks.list_deliveries(endpoint.id).data if d.run_id == run.id]
    )
    assert {d.status for d in deliveries} == {"delivered"}
    assert all(d.webhook_endpoint_id == endpoint.id and d.attempts == 1 for d in deliveries)

    rotated = client.webhooks.update(endpoint.id, rotate_secret=True, active=False)
    assert rotated.secret != secret and len(rotated.secret) >= 32 and rotated.active is False
    client.webhooks.delete(endpoint.id)
    with pytest.raises(NotFoundError):
        client.webhooks.get(endpoint.id)


# -- scenarios, restarts, the command ------------------------------------------------------


def test_a_scenario_drives_every_run(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "plan.db", "--scenario", str(ROOT / "docs/scenarios/plan.json"))
    try:
        seen = Seen()
        run = server.client().runs.create_and_wait(
            message="anything",
            on_question=seen.on_question,
            on_approval=seen.on_approval,
            **FAST,
        )
        assert run.status == "completed" and run.permission_mode == "plan"
        assert [r.plan_text for r in seen.questions] == ["1. Export leads\n2. Update the CRM"]
        assert [r.tool_name for r in seen.approvals] == ["crm.update"]
        assert run.output.startswith("Done. crm.update: denied (plan_not_approved)")
    finally:
        assert server.stop()[0] == 0


def test_a_restart_keeps_wire_ids_and_the_agents_carry_on(tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    first = LiveServer(db)
    try:
        client = first.client()
        policy = client.permissions.create(tool="slack.*", user_id="cust_r")
        run, gate = start_waiting(
            client, "tool:crm.update", human_in_the_loop=True, permission_mode="approval"
        )
        busy = client.runs.create(
            message="sleep:1 tool:crm.update",
            stream=False,
            human_in_the_loop=True,
            permission_mode="approval",
        )
    finally:
        assert first.stop()[0] == 0  # its leases are released as it stops
    second = LiveServer(db)
    try:
        client = second.client()
        assert "1 unfinished agent(s) resumed" in second.banner  # the busy one
        assert client.runs.get(run.id).status == "awaiting_approval"
        assert [p.id for p in client.permissions.list(user_id="cust_r").data] == [policy.id]
        client.runs.approve(run.id, request_id=gate.request_id)
        (asked,) = wait_for(lambda: pending(client, busy.id))
        client.runs.approve(busy.id, request_id=asked.request_id)
        for finished in (client.runs.poll(r.id, interval=0.05, timeout=20) for r in (run, busy)):
            assert finished.status == "completed"
            assert "crm.update: allowed (human)" in finished.output
        assert [r.tool_name for r in client.runs.permissions(busy.id)] == ["crm.update"]
    finally:
        assert second.stop()[0] == 0
