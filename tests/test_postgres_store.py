"""The PostgreSQL store's own promises (SPEC 13, docs/postgres-store.md), on the real
server: its URL, bad servers and logins, a schema that is not ours or is too new (left
untouched), creation by several processes at once, upgrades, reopening, text PostgreSQL
cannot hold, retention, the change feed and `Agent.wait` across processes, and webhook
claims by several worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_together
from postgres_server import admin, drop_schema, new_schema_name, with_options

import hitl_core
from hitl_core import ManualClock, StoreError, UnavailableError, ValidationError
from hitl_core.testing.contract import refused

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent


def catalog(url: str, schema: str) -> list[Any]:
    """Everything in a schema that a write could change: its relations with their
    columns, and the rows of its tables."""
    from psycopg import sql

    with admin(url) as conn:  # type: ignore[attr-defined]
        relations = conn.execute(
            "SELECT c.relname, c.relkind, "
            "array(SELECT a.attname || ':' || format_type(a.atttypid, a.atttypmod) "
            "      FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
            "      ORDER BY a.attnum) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s ORDER BY c.relname",
            (schema,),
        ).fetchall()
        rows = []
        for name, kind, _ in relations:
            if kind == "r":
                query = sql.SQL("SELECT * FROM {}.{} ORDER BY 1").format(
                    sql.Identifier(schema), sql.Identifier(name)
                )
                rows.append((name, [tuple(map(str, row)) for row in conn.execute(query)]))
        return [relations, rows]


# -- the URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?nosuchoption=1",
        "postgresql://u@h/db?schema=Bad-Name",
        "postgresql://u@h/db?schema=pg_catalog",
        "postgresql://u@h/db?pool_max_size=0",
        "postgresql://u@h/db?pool_min_size=5&pool_max_size=2",
        "postgresql://u@h/db?pool_timeout=soon",
        "postgresql://u@h/db?pool_timeout=nan",
        "postgresql://u@h/db?synchronous_commit=maybe",
        "postgresql://u:secret@h:notaport/db",
    ],
)
def test_bad_urls_are_refused_before_connecting(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        hitl_core.connect(url)
    assert caught.value.code == "invalid_url"
    assert "secret" not in str(caught.value)  # a password never shows in a message


def test_postgres_scheme_and_libpq_options_pass_through(pg_url: str) -> None:
    alias = "postgres://" + pg_url.split("://", 1)[1]
    url = with_options(alias, sslmode="disable", connect_timeout="5", pool_max_size="3")
    with hitl_core.connect(url) as hitl:
        run = hitl.runs.create()
    with hitl_core.connect(pg_url) as hitl:
        assert hitl.runs.get(run.id) == run


# -- servers and logins that do not work ----------------------------------------------


def test_an_unreachable_server_is_a_503_at_once() -> None:
    for url in (
        "postgresql://postgres@127.0.0.1:1/test",  # nothing listens there
        "postgresql://postgres@no-such-host.invalid/test",  # no such name
    ):
        started = time.monotonic()
        with pytest.raises(UnavailableError) as caught:
            hitl_core.connect(url)
        assert (caught.value.code, caught.value.status) == ("store_unavailable", 503)
        assert time.monotonic() - started < 15


def test_a_refused_login_and_a_missing_database(pg_server: str) -> None:
    role = f"hitl_nologin_{os.getpid()}"
    with admin(pg_server) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        for user in ("hitl_no_such_role", role):
            url = pg_server.replace("postgres@", f"{user}:wrong@", 1)
            with pytest.raises(StoreError) as caught:
                hitl_core.connect(url)
            assert (caught.value.code, caught.value.status) == ("login_refused", 500)
            assert "wrong" not in str(caught.value)
    finally:
        with admin(pg_server) as conn:  # type: ignore[attr-defined]
            conn.execute(f"DROP ROLE {role}")
    missing = pg_server.rsplit("/", 1)[0] + "/hitl_no_such_database"
    with pytest.raises(StoreError) as caught:
        hitl_core.connect(missing)
    assert caught.value.code == "database_not_found"


# -- schemas that are not ours, or too new --------------------------------------------


def test_tables_of_another_application_are_left_untouched(pg_server: str) -> None:
    schema = new_schema_name()
    url = with_options(pg_server, schema=schema)
    with admin(pg_server) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.runs (id text PRIMARY KEY, owner text)")
        conn.execute(f"INSERT INTO {schema}.runs VALUES ('r1', 'billing')")
        conn.execute(f"CREATE TABLE {schema}.events (n int)")
    try:
        before = catalog(pg_server, schema)
        with pytest.raises(StoreError) as caught:
            hitl_core.connect(url)
        assert caught.value.code == "foreign_database"
        assert "runs" in str(caught.value) and "?schema=" in str(caught.value)
        assert catalog(pg_server, schema) == before
        # a marker table of another application is not ours either
        with admin(pg_server) as conn:  # type: ignore[attr-defined]
            conn.execute(f"CREATE TABLE {schema}.hitl_meta (key text, value text)")
            conn.execute(f"INSERT INTO {schema}.hitl_meta VALUES ('application', 'other')")
        before = catalog(pg_server, schema)
        with pytest.raises(StoreError) as caught:
            hitl_core.connect(url)
        assert caught.value.code == "foreign_database"
        assert catalog(pg_server, schema) == before
    finally:
        drop_schema(pg_server, schema)


def test_our_tables_never_meet_same_named_tables_in_other_schemas(pg_url: str) -> None:
    schema = new_schema_name()
    other = with_options(pg_url, schema=schema)
    with admin(pg_url) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.runs (id text PRIMARY KEY)")
        conn.execute(f"CREATE TABLE {schema}.requests (id text PRIMARY KEY)")
    try:
        before = catalog(pg_url, schema)
        with hitl_core.connect(pg_url) as hitl:  # its own schema, beside the other one
            hitl.runs.create()
        assert catalog(pg_url, schema) == before
        with pytest.raises(StoreError):
            hitl_core.connect(other)
    finally:
        drop_schema(pg_url, schema)


def test_a_newer_schema_is_refused_and_left_untouched(pg_url: str) -> None:
    schema = dict(p.split("=") for p in pg_url.split("?", 1)[1].split("&"))["schema"]
    with hitl_core.connect(pg_url) as hitl:
        hitl.runs.create()
    with admin(pg_url) as conn:  # type: ignore[attr-defined]
        conn.execute(f"UPDATE {schema}.hitl_meta SET value = '99' WHERE key = 'schema_version'")
    before = catalog(pg_url, schema)
    for _ in range(2):
        with pytest.raises(StoreError) as caught:
            hitl_core.connect(pg_url)
        assert caught.value.code == "schema_too_new"
        assert "99" in str(caught.value)
    assert catalog(pg_url, schema) == before


OPENER = """
import sys
import hitl_core

print("ready", flush=True)
sys.stdin.readline()
with hitl_core.connect(sys.argv[1]) as hitl:
    hitl.runs.create()
print("done", flush=True)
"""


def test_processes_creating_one_schema_at_once(pg_url: str) -> None:
    outputs = run_together(OPENER, pg_url, count=6)
    assert [out.strip() for out in outputs] == ["done"] * 6
    with hitl_core.connect(pg_url) as hitl:
        assert len(hitl.runs.list(limit=100).data) == 6


def test_an_older_schema_is_upgraded_in_one_transaction(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hitl_postgres import _schema

    schema = dict(p.split("=") for p in pg_url.split("?", 1)[1].split("&"))["schema"]
    with hitl_core.connect(pg_url) as hitl:
        run = hitl.runs.create(metadata={"kept": True})
    monkeypatch.setattr(_schema, "SCHEMA_VERSION", 2)
    # an upgrade that fails half-way changes nothing
    monkeypatch.setattr(
        _schema,
        "UPGRADES",
        {2: ("CREATE INDEX runs_by_task ON {s}.runs (task_id)", "SELECT no_such_function()")},
    )
    before = catalog(pg_url, schema)
    with pytest.raises(StoreError):
        hitl_core.connect(pg_url)
    assert catalog(pg_url, schema) == before
    # a good one is applied once, and the version recorded
    monkeypatch.setattr(
        _schema,
        "UPGRADES",
        {
            2: (
                "CREATE INDEX runs_by_task ON {s}.runs (task_id)",
                "ALTER TABLE {s}.runs ADD COLUMN note text",
            )
        },
    )
    for _ in range(2):
        with hitl_core.connect(pg_url) as hitl:
            assert hitl.runs.get(run.id).metadata == {"kept": True}
    with admin(pg_url) as conn:  # type: ignore[attr-defined]
        version = conn.execute(
            f"SELECT value FROM {schema}.hitl_meta WHERE key = 'schema_version'"
        ).fetchone()
        indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
            (schema, "runs_by_task"),
        ).fetchone()
    assert version == ("2",) and indexes == (1,)


def test_the_store_needs_no_rights_beyond_its_schema(pg_server: str) -> None:
    """A role that may only use an existing, empty schema (a DBA made it) works in it."""
    role, schema = f"hitl_user_{os.getpid()}", new_schema_name()
    with admin(pg_server) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    try:
        url = with_options(pg_server.replace("postgres@", f"{role}@", 1), schema=schema)
        with hitl_core.connect(url) as hitl:
            run = hitl.runs.create()
            assert hitl.runs.get(run.id) == run
    finally:
        drop_schema(pg_server, schema)
        with admin(pg_server) as conn:  # type: ignore[attr-defined]
            conn.execute(f"DROP ROLE {role}")


# -- records ------------------------------------------------------------------------------


def test_reopening_gives_everything_back_and_deadlines_keep_counting(pg_url: str) -> None:
    clock = ManualClock(start=0.0)
    with hitl_core.connect(pg_url, clock=clock) as hitl:
        run = hitl.runs.create(
            human_in_the_loop=True,
            permission_mode="approval",
            user_id="cust_1",
            input_timeout=75.0,
            metadata={"b": [1, 2.5, None, "é"], "a": {"z": 1e300, "y": -0.0}},
        )
        gate = hitl.agent(run.id).request_tool("gmail.send", {"to": "x@y.z", "n": 2**63 - 1})
        hitl.permissions.create(tool="slack.*", user_id="cust_1")
        before = (hitl.runs.get(run.id), hitl.runs.permissions(run.id), hitl.events.list())
    clock.advance(80)
    with hitl_core.connect(pg_url, clock=clock) as hitl:
        assert (hitl.runs.get(run.id).version, hitl.runs.permissions(run.id)) == (
            before[0].version + 1,  # the deadline passed meanwhile: suspended on the read
            before[1],
        )
        after = hitl.runs.get(run.id)
        assert after.suspended and after.metadata == before[0].metadata
        assert list(after.metadata) == ["b", "a"]  # key order kept (json, not jsonb)
        assert hitl.events.list()[: len(before[2])] == before[2]
        assert hitl.events.list()[-1].type == "run.suspended"
        assert hitl.agent(run.id).request_tool("slack.post").source == "policy"
        result = hitl.runs.approve(run.id, request_id=gate.request_id)
        assert result.resumed is True


def test_text_postgresql_cannot_hold_is_refused_and_changes_nothing(pg_url: str) -> None:
    with hitl_core.connect(pg_url) as hitl:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        agent = hitl.agent(run.id)
        for code, call in (
            ("invalid_request", lambda: agent.request_tool("nul\x00tool")),
            ("invalid_request", lambda: hitl.permissions.create(tool="a\x00*")),
            ("invalid_config", lambda: hitl.runs.create(user_id="cust\x00")),
        ):
            error = refused(hitl, ValidationError, code, call)
            assert "NUL" in str(error)
        # inside JSON a NUL is an escape (\u0000), which PostgreSQL keeps
        assert hitl.runs.create(metadata={"k": "nul\x00"}).metadata == {"k": "nul\x00"}
        # looking something up by such a string finds nothing
        assert len(hitl.runs.list(user_id=None).data) == 2
        with pytest.raises(hitl_core.NotFoundError):
            hitl.runs.get("run\x00x")


def test_prune_deletes_ended_runs_with_what_belongs_to_them(pg_url: str) -> None:
    clock = ManualClock(start=100.0)
    with hitl_core.connect(pg_url, clock=clock) as hitl:
        old = [hitl.runs.create(human_in_the_loop=True, permission_mode="approval")]
        old.append(hitl.runs.create(idempotency_key="k-old"))
        for run in old:
            agent = hitl.agent(run.id)
            if run.human_in_the_loop:
                gate = agent.request_tool("x")
                hitl.runs.approve(run.id, request_id=gate.request_id)
            agent.complete()
        waiting = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        hitl.agent(waiting.id).request_tool("y")
        clock.advance(10)
        young = hitl.runs.create()
        hitl.agent(young.id).complete()
        assert hitl.runs.prune(before=105.0, batch=1) == 2
        for run in old:
            with pytest.raises(hitl_core.NotFoundError):
                hitl.runs.get(run.id)
            assert hitl.events.list(run_id=run.id) == []
        assert {r.id for r in hitl.runs.list().data} == {waiting.id, young.id}
        assert [e.run_id for e in hitl.events.list()] == [waiting.id] * 2 + [young.id] * 2
        again = hitl.runs.create(idempotency_key="k-old")  # the key went with its run
        assert again.id not in {run.id for run in old}


def test_overlapping_writers_keep_each_runs_events_in_order_and_the_log_whole(pg_url: str) -> None:
    """A run's events come out in the order of its changes, and the whole log never
    shows an event behind one shown before, while writers overlap."""
    with hitl_core.connect(pg_url) as hitl:
        run_ids = [hitl.runs.create(human_in_the_loop=True, permission_mode="approval").id]
        seen: list[str] = []
        stop = threading.Event()

        def follow() -> None:
            with hitl_core.connect(pg_url) as reader:
                while not stop.is_set() or len(seen) < expected[0]:
                    batch = reader.events.list(after=seen[-1] if seen else None, limit=1000)
                    seen.extend(e.id for e in batch)
                    if not batch:
                        time.sleep(0.002)

        expected = [10**9]
        follower = threading.Thread(target=follow)
        follower.start()

        def work(index: int) -> None:
            with hitl_core.connect(pg_url) as mine:
                for step in range(15):
                    run = mine.runs.create(human_in_the_loop=True, permission_mode="approval")
                    gate = mine.agent(run.id).request_tool(f"t{index}.{step}")
                    mine.runs.approve(run.id, request_id=gate.request_id)
                    mine.agent(run.id).complete()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        everything: list[hitl_core.Event] = []
        while batch := hitl.events.list(after=everything[-1].id if everything else None):
            everything.extend(batch)
        expected[0] = len(everything)
        stop.set()
        follower.join(60)
        assert not follower.is_alive()
        assert seen == [e.id for e in everything]  # nothing skipped, nothing repeated
        by_run: dict[str, list[str]] = {}
        for event in everything:
            by_run.setdefault(event.run_id, []).append(event.type)
        for run_id, types in by_run.items():
            if run_id in run_ids:
                continue
            assert types == [
                "run.started",
                "run.awaiting_input",
                "request.resolved",
                "run.completed",
            ]
            assert [e.type for e in hitl.events.list(run_id=run_id)] == types


# -- the change feed and Agent.wait across processes --------------------------------------

DECIDE_LATER = """
import sys, time
import hitl_core

url, run_id, request_id, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
with hitl_core.connect(url) as hitl:
    hitl.runs.get(run_id)
    print("ready", flush=True)
    time.sleep(pause)
    hitl.runs.approve(run_id, request_id=request_id, reason="from another process")
print("done", flush=True)
"""


def decide_in_another_process(url: str, run_id: str, request_id: str, pause: float) -> Any:
    process = subprocess.Popen(
        [sys.executable, "-c", DECIDE_LATER, url, run_id, request_id, str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_agent_wait_ends_on_a_decision_in_another_process(pg_url: str) -> None:
    with hitl_core.connect(pg_url) as hitl:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        gate = hitl.agent(run.id).request_tool("deploy")
        assert gate.request_id is not None
        process = decide_in_another_process(pg_url, run.id, gate.request_id, 0.5)
        started = time.monotonic()
        request = hitl.agent(run.id).wait(gate.request_id, timeout=60)
        waited = time.monotonic() - started
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert (request.status, request.reason) == ("allowed", "from another process")
        assert waited < 30  # woken by the decision, long before the timeout


def test_the_change_feed_survives_a_lost_listen_connection(pg_url: str) -> None:
    with hitl_core.connect(pg_url) as hitl:
        store = hitl._store  # the port itself: the feed is the store's promise
        told: list[Any] = []
        arrived = threading.Condition()

        def listener(run_ids: Any) -> None:
            with arrived:
                told.append(None if run_ids is None else set(run_ids))
                arrived.notify_all()

        def wait_for(check: Any) -> None:
            with arrived:
                assert arrived.wait_for(lambda: check(told), timeout=30), told

        stop = store.subscribe(listener)
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        wait_for(lambda seen: {run.id} in seen)
        gate = hitl.agent(run.id).request_tool("x")
        assert gate.request_id is not None
        process = decide_in_another_process(pg_url, run.id, gate.request_id, 0.0)
        process.communicate(timeout=60)
        wait_for(lambda seen: seen.count({run.id}) >= 3)
        # kill the LISTEN connection: the feed reconnects and says "look at everything"
        told.clear()
        with admin(pg_url) as conn:  # type: ignore[attr-defined]
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN %%' AND query LIKE %s",
                (f"%{store.channel}%",),
            ).fetchone()
        assert killed == (1,)
        wait_for(lambda seen: None in seen)
        other = hitl.runs.create()
        wait_for(lambda seen: {other.id} in seen)
        stop()
        told.clear()
        hitl.runs.create()
        time.sleep(0.5)
        assert told == []


def test_a_tick_that_suspends_many_runs_tells_about_each(pg_url: str) -> None:
    clock = ManualClock(start=0.0)
    with hitl_core.connect(pg_url, clock=clock) as hitl:
        runs = []
        for index in range(250):
            run = hitl.runs.create(
                human_in_the_loop=True, permission_mode="approval", user_id="x" * 60 + str(index)
            )
            hitl.agent(run.id).request_tool("t")
            runs.append(run.id)
        told: set[str] = set()
        done, live = threading.Event(), threading.Event()

        def listener(run_ids: Any) -> None:
            live.set()  # anything told: the feed is listening, commits are told from now on
            told.update(run_ids or ())
            if told >= set(runs):
                done.set()

        hitl._store.subscribe(listener)
        for _ in range(300):  # a commit before LISTEN is in place would be told only as None
            if live.wait(0.1):
                break
            hitl.runs.create()  # a probe, told once the feed listens
        assert live.is_set()
        clock.advance(100)
        assert len(hitl.tick()) == 250
        assert done.wait(30), len(told)


# -- webhook workers on several processes -----------------------------------------------

CLAIMER = """
import json, sys
import hitl_core


url = sys.argv[1]
with hitl_core.connect(url, clock=hitl_core.ManualClock(start=10.0)) as hitl:
    hitl.webhooks.list()
    print("ready", flush=True)
    sys.stdin.readline()
    while True:
        claimed = hitl.webhooks.claim(limit=3, lease_seconds=1000)
        if not claimed:
            break
        for out in claimed:
            print(json.dumps([out.delivery.id, out.delivery.attempts]), flush=True)
            hitl.webhooks.record(out.delivery.id, attempt=out.delivery.attempts, status_code=200)
"""


def test_delivery_workers_on_several_processes_never_send_one_attempt_twice(
    pg_url: str,
) -> None:
    with hitl_core.connect(pg_url, clock=ManualClock(start=10.0)) as hitl:
        endpoint = hitl.webhooks.create(url="https://example.test/hook")
        for _ in range(60):
            hitl.agent(hitl.runs.create().id).complete()
        assert hitl.webhooks.enqueue() == 60
        sent = [
            (str(delivery), int(attempt))
            for out in run_together(CLAIMER, pg_url, count=4)
            for delivery, attempt in map(json.loads, out.splitlines())
        ]
        assert len(sent) == len(set(sent)) == 60  # each delivery sent once, by one worker
        assert {attempt for _, attempt in sent} == {1}
        delivered = hitl.webhooks.list_deliveries(endpoint.id, status="delivered", limit=100)
        assert len(delivered.data) == 60


def test_a_closed_store_refuses_and_closing_twice_is_fine(pg_url: str) -> None:
    store = hitl_core.connect(pg_url)._store
    store.close()
    store.close()
    with pytest.raises(StoreError) as caught, store.transaction(write=False):
        pass
    assert caught.value.code == "store_closed"


def test_json_values_round_trip_exactly(pg_url: str) -> None:
    values: list[Any] = [
        {"text": 'line\nbreak "quoted" \\ é ✓ 𝄞', "ctrl": "\u0001"},
        {"numbers": [0, -1, 2**63 - 1, -(2**63), 0.1, 1e-7, 1.5e300, -0.0]},
        {"nested": {"a": [{"b": None}], "": True}},
    ]
    with hitl_core.connect(pg_url) as hitl:
        for value in values:
            run = hitl.runs.create(metadata=value)
            assert hitl.runs.get(run.id).metadata == value
            out = hitl.agent(run.id).complete(output=json.loads(json.dumps(value)))
            assert hitl.runs.get(run.id).output == value == out.output


def test_the_hitl_command_works_on_a_postgresql_url(pg_url: str) -> None:
    hitl_command = Path(sys.executable).parent / "hitl"
    if not hitl_command.exists():
        pytest.skip("the hitl command is not installed (pip install -e .)")
    with hitl_core.connect(pg_url) as hitl:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        gate = hitl.agent(run.id).request_tool("deploy.prod", {"version": 7})
        assert gate.request_id is not None

        def command(*args: str) -> str:
            done = subprocess.run(
                [str(hitl_command), "--db", pg_url, *args],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        pending = [json.loads(line) for line in command("pending", "--json").splitlines()]
        assert [p["request_id"] for p in pending] == [gate.request_id]
        command("approve", run.id, gate.request_id, "--reason", "from the command line")
        request = hitl.agent(run.id).result(gate.request_id)
        assert (request.status, request.reason) == ("allowed", "from the command line")
        env = {**os.environ, "HITL_DB": pg_url}
        listed = subprocess.run(
            [str(hitl_command), "runs", "list", "--json"], capture_output=True, text=True, env=env
        )
        assert listed.returncode == 0 and run.id in listed.stdout, listed.stderr


def test_a_lease_or_deadline_past_the_largest_float_is_kept(pg_url: str) -> None:
    # now + seconds overflowed to infinity, which the PostgreSQL store's JSON parameters
    # cannot carry: an untyped ValueError escaped (memory and SQLite kept inf). It is
    # kept as the largest float now, a time that never comes, on every store.
    clock = hitl_core.ManualClock(start=1e308)
    with hitl_core.connect(pg_url, clock=clock) as hitl:
        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        lease = hitl.runs.claim(run.id, worker="w", seconds=1e308)
        assert lease.expires_at == sys.float_info.max
        assert hitl.runs.renew(lease, seconds=1e308).expires_at == sys.float_info.max
        forever = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", input_timeout=1e308
        )
        hitl.agent(forever.id).request_tool("t")
        assert hitl.runs.get(forever.id).deadline == sys.float_info.max
