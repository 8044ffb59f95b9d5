"""The `hitl` command, run for real in subprocesses: demo, simulate, and the operator
commands on a SQLite file, including an agent process waiting while another approves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hitl_sqlite import SqliteStore

import hitl_core

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "docs" / "scenarios").iterdir())
HITL = str(Path(sys.executable).parent / "hitl")


def hitl(
    *args: str, db: Path | None = None, env: dict[str, str] | None = None, check: int | None = 0
) -> subprocess.CompletedProcess[str]:
    command = [HITL, *(["--db", str(db)] if db else []), *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(autouse=True)
def _installed() -> None:
    if not Path(HITL).exists():
        pytest.skip("the hitl command is not installed (pip install -e .)")


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    out = hitl("demo", db=tmp_path / "demo.db").stdout
    for line in (
        "human_in_the_loop=False, permission_mode=autonomous",
        "refused 409 hitl_disabled",
        "refused 422 hitl_required",
        "allowed (source: policy)",
        "allowed (source: remembered)",
        "run.suspended",
        "resumed=True",
        "denied (source: plan_not_approved)",
        "revise: 'Skip leads older than 2024'",
        "gmail.send (run_approval)",
    ):
        assert line in out, line
    with hitl_core.connect(f"sqlite:///{tmp_path / 'demo.db'}") as engine:
        statuses = [r.status for r in engine.runs.list(limit=100).data]
    assert statuses.count("completed") == 4 and statuses.count("cancelled") == 1


def test_demo_uses_hitl_db_from_the_environment(tmp_path: Path) -> None:
    hitl("demo", env={"HITL_DB": str(tmp_path / "env.db")})
    assert (tmp_path / "env.db").exists()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_shipped_scenarios_pass(scenario: Path) -> None:
    out = hitl("simulate", str(scenario)).stdout
    assert "all expectations met" in out


def test_simulation_is_deterministic_json() -> None:
    first = hitl("simulate", str(ROOT / "docs/scenarios/approval.toml"), "--json").stdout
    second = hitl("simulate", str(ROOT / "docs/scenarios/approval.toml"), "--json").stdout
    assert first == second
    data = json.loads(first)
    assert data["passed"] is True and data["final"]["status"] == "completed"
    assert data["timeline"][5]["suspended"] is True


def test_a_scenario_mismatch_fails_clearly(tmp_path: Path) -> None:
    scenario = tmp_path / "wrong.toml"
    scenario.write_text(
        textwrap.dedent("""
        [run]
        human_in_the_loop = true
        permission_mode = "approval"
        [[steps]]
        agent = "request_tool"
        tool = "gmail.send"
        expect = { status = "allowed" }
        [expect]
        status = "completed"
    """)
    )
    result = hitl("simulate", str(scenario), check=1)
    assert "mismatch: steps[0].expect.status: expected 'allowed', got 'pending'" in result.stderr
    assert "mismatch: expect.status: expected 'completed', got 'awaiting_approval'" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[run]\nhuman_in_the_loop = tru\n[[steps]]\ntick = true\n", "line 2"),
        ('[run]\n[[steps]]\nagent = "dance"\n', "steps[0].agent: unknown action 'dance'"),
        ("[run]\ncolour = 1\n[[steps]]\ntick = true\n", "run.colour: unknown key 'colour'"),
        (
            "[[steps]]\nat = 5\ntick = true\n[[steps]]\nat = 1\ntick = true\n",
            "steps[1].at: must be a number of seconds >= 5",
        ),
        ('[[steps]]\nagent = "complete"\nhuman = "cancel"\n', "steps[0]: needs exactly one"),
    ],
)
def test_a_broken_scenario_names_the_line_or_key(tmp_path: Path, text: str, message: str) -> None:
    scenario = tmp_path / "broken.toml"
    scenario.write_text(text)
    result = hitl("simulate", str(scenario), check=2)
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_a_broken_json_scenario_names_the_line(tmp_path: Path) -> None:
    scenario = tmp_path / "broken.json"
    scenario.write_text('{\n  "run": {},\n  "steps": [\n}\n')
    assert "line 4" in hitl("simulate", str(scenario), check=2).stderr


def _waiting_run(db: Path) -> tuple[str, str, str]:
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        run = engine.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_1"
        )
        gate = engine.agent(run.id).request_tool("gmail.send", {"to": "x"})
        question = engine.agent(run.id).ask(
            [{"question": "Tone = formal?", "header": "", "options": ["yes", "no"]}]
        )
        assert gate.request_id is not None
        return run.id, gate.request_id, question.request_id


def test_operator_commands(tmp_path: Path) -> None:
    db = tmp_path / "ops.db"
    run_id, gate_id, question_id = _waiting_run(db)
    listed = json_lines(hitl("runs", "list", "--json", db=db).stdout)
    assert [r["id"] for r in listed] == [run_id]
    assert run_id in hitl("runs", "list", db=db).stdout
    shown = hitl("runs", "show", run_id, db=db).stdout
    assert gate_id in shown and "gmail.send" in shown and "Tone = formal?" in shown
    pending = json_lines(hitl("pending", "--json", db=db).stdout)
    assert [p["request_id"] for p in pending] == [gate_id, question_id]
    approved = hitl("approve", run_id, gate_id, "--remember", "--reason", "ok", db=db).stdout
    assert "allowed (remembered)" in approved
    refused = hitl("approve", run_id, gate_id, "--deny", db=db, check=1)
    assert refused.stderr.startswith("error: gate_resolved_otherwise:")
    answered = hitl("answer", run_id, "Tone = formal?=no", db=db).stdout
    assert f"{question_id}: answered" in answered
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        assert engine.runs.get(run_id).status == "running"
        assert engine.agent(run_id).result(question_id).answers == {"Tone = formal?": "no"}
    policy = json.loads(
        hitl("policies", "add", "slack.*", "--user", "cust_1", "--json", db=db).stdout
    )
    tools = hitl("policies", "list", "--user", "cust_1", db=db).stdout
    assert "slack.*" in tools and "gmail.send" in tools and "run_approval" in tools
    hitl("policies", "rm", policy["id"], "--user", "cust_1", db=db)
    assert hitl(
        "policies", "rm", policy["id"], "--user", "cust_1", db=db, check=1
    ).stderr.startswith("error: policy_not_found:")
    events = hitl("events", "--run", run_id, db=db).stdout
    assert "run.awaiting_input" in events and "request.resolved" in events
    assert hitl("tick", db=db).stdout.strip() == "0 event(s)"
    assert "cancelled" in hitl("cancel", run_id, db=db).stdout
    assert hitl("cancel", run_id, db=db, check=1).stderr.startswith("error: run_not_active:")


def json_lines(out: str) -> list[dict[str, Any]]:
    """JSON Lines: every line one JSON object (an empty listing prints nothing)."""
    assert out == "" or out.endswith("\n"), out
    records = [json.loads(line) for line in out.splitlines()]
    assert all(isinstance(record, dict) for record in records), out
    return records


def test_every_json_output_is_json_lines(tmp_path: Path) -> None:
    """Listings print one object per record per line; single results one line."""
    db = tmp_path / "j.db"
    for command in (["runs", "list"], ["pending"], ["policies", "list"], ["events"], ["tick"]):
        assert hitl(*command, "--json", db=db).stdout == "", command  # empty: no output
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        first = engine.runs.create(
            human_in_the_loop=True, permission_mode="approval", input_timeout=0.05
        )
        second = engine.runs.create(human_in_the_loop=True, permission_mode="approval")
        gates = [engine.agent(r.id).request_tool("gmail.send") for r in (first, second)]
        question = engine.agent(second.id).ask(
            [{"question": "Which?", "header": "", "options": ["a", "b"]}]
        )
        engine.permissions.create(tool="slack.*")
        engine.permissions.create(tool="crm.*")
    time.sleep(0.1)  # real time must pass for the first run's deadline; not a timing assertion

    ticked = json_lines(hitl("tick", "--json", db=db).stdout)  # the first call to see it
    assert [(e["type"], e["run_id"]) for e in ticked] == [("run.suspended", first.id)]
    runs = json_lines(hitl("runs", "list", "--json", db=db).stdout)
    assert [r["id"] for r in runs] == [first.id, second.id]
    paged = hitl("runs", "list", "--json", "--limit", "1", db=db)
    assert [r["id"] for r in json_lines(paged.stdout)] == [first.id]
    assert paged.stderr == f"more: --after {first.id}\n"
    after = json_lines(hitl("runs", "list", "--json", "--after", first.id, db=db).stdout)
    assert [r["id"] for r in after] == [second.id]
    pending = json_lines(hitl("pending", "--json", db=db).stdout)
    assert [p["request_id"] for p in pending] == [
        gates[0].request_id,
        gates[1].request_id,
        question.request_id,
    ]
    policies = json_lines(hitl("policies", "list", "--json", db=db).stdout)
    assert [p["tool_name"] for p in policies] == ["slack.*", "crm.*"]
    listed = json_lines(hitl("events", "--json", db=db).stdout)
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        assert [e["id"] for e in listed] == [e.id for e in engine.events.list()]
    assert len(listed) == 6  # two starts, three requests opened, one suspension

    single = [
        ["runs", "show", first.id],
        ["approve", second.id, str(gates[1].request_id)],
        ["answer", second.id, "Which?=a"],
        ["cancel", first.id],
        ["policies", "add", "docs.*"],
        ["policies", "rm", policies[0]["id"]],
        ["simulate", str(ROOT / "docs/scenarios/approval.toml")],
    ]
    for command in single:
        (record,) = json_lines(hitl(*command, "--json", db=db).stdout)
        assert record, command
    assert (
        json_lines(hitl("runs", "show", first.id, "--json", db=db).stdout)[0]["run"]["status"]
        == "cancelled"
    )


LONG = "Which format should the quarterly report for the board take, given the audit?"


def test_pending_shows_what_answer_needs(tmp_path: Path) -> None:
    """Question texts (whole), their options and the plan, plain and JSON."""
    db = tmp_path / "q.db"
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        run = engine.runs.create(human_in_the_loop=True, permission_mode="plan")
        agent = engine.agent(run.id)
        asked = agent.ask(
            [
                {"question": LONG, "header": "Format", "options": ["PDF", "Slide deck"]},
                {
                    "question": "Regions?",
                    "header": "Regions",
                    "options": [{"label": "eu", "description": "Europe"}, "us"],
                    "multiSelect": True,
                },
            ]
        )
        plan = agent.propose_plan("1. Export leads\n2. Update the CRM")
    out = hitl("pending", db=db).stdout
    lines = out.splitlines()
    assert f"    {LONG}  [PDF | Slide deck]" in lines
    assert "    Regions?  [eu | us] (several: 'eu, us')" in lines
    assert "      1. Export leads" in lines and "      2. Update the CRM" in lines
    assert "    Plan Approval  [Approve | or feedback text]" in lines
    by_id = {r["request_id"]: r for r in json_lines(hitl("pending", "--json", db=db).stdout)}
    questions = by_id[asked.request_id]["questions"]
    assert [q["question"] for q in questions] == [LONG, "Regions?"]
    assert [o["label"] for o in questions[1]["options"]] == ["eu", "us"]
    assert questions[1]["multiSelect"] is True
    assert by_id[plan.request_id]["plan_text"] == "1. Export leads\n2. Update the CRM"
    assert [o["label"] for o in by_id[plan.request_id]["questions"][0]["options"]] == [
        "Approve",
        "Revise",
    ]
    # what the listing shows is what `hitl answer` takes
    hitl("answer", run.id, f"{LONG}=Slide deck", "Regions?=eu, us", db=db)
    hitl("answer", run.id, "Plan Approval=Approve", db=db)
    assert hitl("pending", db=db).stdout == "(none)\n"


STORE_COMMANDS = [
    ["runs", "list"],
    ["pending"],
    ["policies", "list"],
    ["events"],
    ["tick"],
]


def test_db_takes_a_store_url(tmp_path: Path) -> None:
    """`--db` (before or after the command) and $HITL_DB: a value with :// is a store URL;
    sqlite:/// is followed by a relative path, or an absolute one with a fourth slash."""
    absolute = tmp_path / "abs.db"
    run_id, gate_id, _ = _waiting_run(absolute)
    url = f"sqlite:///{absolute}"  # the path starts with /: four slashes
    assert url.startswith("sqlite:////")
    for command in STORE_COMMANDS:
        hitl("--db", url, *command)
        hitl(*command, "--db", url)
        hitl(*command, env={"HITL_DB": url})
    assert gate_id in hitl("--db", url, "pending").stdout
    assert gate_id in hitl("pending", "--db", url).stdout
    assert gate_id in hitl("pending", env={"HITL_DB": url}).stdout
    hitl("approve", run_id, gate_id, "--db", url)
    assert "allowed" in hitl("runs", "show", run_id, env={"HITL_DB": url}).stdout
    relative = subprocess.run(
        [HITL, "--db", "sqlite:///rel.db", "runs", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert relative.returncode == 0 and (tmp_path / "rel.db").exists()
    assert hitl("runs", "list", "--db", "memory://").stdout == "(none)\n"
    unknown = hitl("runs", "list", "--db", "nosuch://x", check=1)
    assert unknown.stderr.startswith("error: invalid_url: no store is registered for nosuch://")
    assert hitl("pending", "--db", "sqlite:///", check=1).stderr.startswith("error: invalid_url:")


def test_db_without_a_scheme_is_always_a_file_path(tmp_path: Path) -> None:
    """Characters a URL would read as options or fragments belong to the file name."""
    for name in ("odd?name.db", "a?synchronous=NORMAL", "hash#tag.db", "per%20cent.db"):
        path = tmp_path / name
        added = json_lines(hitl("policies", "add", "slack.*", "--json", db=path).stdout)
        listed = json_lines(hitl("policies", "list", "--json", env={"HITL_DB": str(path)}).stdout)
        assert [p["id"] for p in listed] == [added[0]["id"]]
        with hitl_core.connect(SqliteStore(str(path))) as engine:  # that very file
            assert [p.id for p in engine.permissions.list().data] == [added[0]["id"]]
    assert not (tmp_path / "odd").exists() and not (tmp_path / "a").exists()


def test_db_takes_a_third_party_scheme(tmp_path: Path) -> None:
    """Any scheme of the hitl_core.stores entry points works, here the adapter guide's
    jsonfile store registered for the `hitl` subprocess as an installed package would be."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from register import entry_point
    finally:
        sys.path.remove(str(ROOT / "tests"))
    spec = "jsonfile = jsonfile_store:open_store"
    with entry_point("hitl_core.stores", spec, import_from=ROOT / "docs" / "examples"):
        env = {"PYTHONPATH": os.pathsep.join(sys.path)}
        url = f"jsonfile:///{tmp_path / 'state.json'}"
        added = json_lines(
            hitl("policies", "add", "slack.*", "--json", "--db", url, env=env).stdout
        )
        listed = json_lines(hitl("--db", url, "policies", "list", "--json", env=env).stdout)
    assert [p["id"] for p in listed] == [added[0]["id"]]
    assert (tmp_path / "state.json").exists()


def test_errors_are_one_line(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    result = hitl("runs", "show", "run_missing", db=db, check=1)
    assert result.stderr == "error: run_not_found: no run 'run_missing'\n"
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 10)
    result = hitl("runs", "list", db=text, check=1)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert text.read_text() == "not a database\n" * 10
    result = hitl("answer", "run_x", "no-equals-sign", db=db, check=1)
    assert result.stderr == "error: run_not_found: no run 'run_x'\n"  # the run comes first


def test_tick_reports_suspensions(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        run = engine.runs.create(
            human_in_the_loop=True, permission_mode="approval", input_timeout=0.05
        )
        engine.agent(run.id).request_tool("x")
    time.sleep(0.1)  # real time must pass for a real SystemClock deadline; not a timing assertion
    out = hitl("tick", db=db).stdout
    assert "run.suspended" in out and "1 event(s)" in out


def test_events_follow_prints_new_events(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        engine.runs.create()
    follower = subprocess.Popen(
        [HITL, "--db", str(db), "events", "--follow"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None
        assert "run.started" in follower.stdout.readline()
        with hitl_core.connect(f"sqlite:///{db}") as engine:
            later = engine.runs.create()
        line = follower.stdout.readline()
        assert "run.started" in line and later.id in line
    finally:
        follower.kill()
        follower.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_events_follow_stops_cleanly_on_a_signal(tmp_path: Path, signum: int) -> None:
    db = tmp_path / "s.db"
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        run = engine.runs.create()
    follower = subprocess.Popen(
        [HITL, "--db", str(db), "events", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["run_id"] == run.id  # it is following
        follower.send_signal(signum)
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert (follower.returncode, out, err) == (0, "", "")
    with hitl_core.connect(f"sqlite:///{db}") as engine:  # the file is fine afterwards
        assert engine.runs.get(run.id).status == "running"


AGENT = """
import sys, time, hitl_core
with hitl_core.connect(sys.argv[1]) as hitl:
    run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
    agent = hitl.agent(run.id)
    gate = agent.request_tool("payments.refund", {"amount": 40})
    print(run.id, gate.request_id, flush=True)
    deadline = time.monotonic() + 30
    while agent.result(gate.request_id).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    decided = agent.result(gate.request_id)
    print(decided.status, decided.reason, decided.actor, flush=True)
    agent.complete()
"""


def test_an_agent_process_waits_while_another_process_approves(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        run_id, request_id = agent.stdout.readline().split()
        assert request_id in hitl("pending", db=db).stdout
        hitl("approve", run_id, request_id, "--reason", "refund ok", "--actor", "ops", db=db)
        assert agent.stdout.readline().split() == ["allowed", "refund", "ok", "ops"]
        assert agent.wait(timeout=30) == 0
    finally:
        agent.kill()
    assert "completed" in hitl("runs", "show", run_id, db=db).stdout


def test_prune_deletes_runs_that_ended_before_a_date(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    with hitl_core.connect(f"sqlite:///{db}", clock=hitl_core.ManualClock(start=1000.0)) as h:
        old = h.runs.create()
        h.agent(old.id).complete()
        active = h.runs.create()
    assert hitl("prune", "--before", "1970-01-01T00:10:00", db=db).stdout.startswith(
        "deleted 0 run(s)"
    )
    out = hitl("prune", "--before", "1970-01-01T00:20:00", "--json", db=db).stdout
    assert json.loads(out) == {"deleted": 1, "before": 1200.0}
    listed = hitl("runs", "list", "--json", db=db).stdout.splitlines()
    assert [json.loads(line)["id"] for line in listed] == [active.id]
    refused = hitl("prune", "--before", "yesterday-ish", db=db, check=1)
    assert "invalid_request" in refused.stderr and "--before" in refused.stderr
    assert hitl("prune", "--before", "30d", db=db).stdout.startswith("deleted 0 run(s)")
    last = hitl("prune", "--before", "9999-12-31T23:59:59", db=db).stdout
    assert last.startswith("deleted 0 run(s) that ended before 9999-12-31 23:59:59 UTC"), last


@pytest.mark.parametrize("before", ["1e300", "inf", "nan", "99999999999d", "10000-01-01"])
def test_prune_refuses_a_moment_it_cannot_name_before_deleting(tmp_path: Path, before: str) -> None:
    # A moment past year 9999 deleted the runs, then crashed printing the date (a
    # traceback, exit 1); an age reaching before 1970 was refused as "before must be ...
    # >= 0; got -8639998203832618.0".
    db = tmp_path / "h.db"
    with hitl_core.connect(f"sqlite:///{db}") as h:
        ended = h.runs.create()
        h.agent(ended.id).complete()
    refused = hitl("prune", "--before", before, db=db, check=1)
    assert refused.stderr.startswith("error: invalid_request: --before"), refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert json.loads(hitl("runs", "list", "--json", db=db).stdout)["id"] == ended.id


def test_a_second_approval_says_who_decided_first(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    with hitl_core.connect(f"sqlite:///{db}") as engine:
        run = engine.runs.create(human_in_the_loop=True, permission_mode="approval")
        gate = engine.agent(run.id).request_tool("deploy")
        assert gate.request_id is not None
        engine.runs.approve(run.id, request_id=gate.request_id, actor="alice", reason="ok")
    out = hitl("approve", run.id, gate.request_id, "--actor", "bob", db=db).stdout
    assert "already allowed by alice at" in out and "(ok)" in out
    assert "your decision was not recorded" in out
    denied = hitl("approve", run.id, gate.request_id, "--deny", db=db, check=1)
    assert "gate_resolved_otherwise" in denied.stderr and "by 'alice'" in denied.stderr
