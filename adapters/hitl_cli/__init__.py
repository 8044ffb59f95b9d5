"""The `hitl` command: a demo of every mode, deterministic scenario simulation, and
operator commands on a store (list, approve, answer, cancel, policies, events, tick).
Standard-library argparse: a dozen subcommands need no framework."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
from hitl_sqlite import SqliteStore

import hitl_core
from hitl_core import HitlError, ValidationError

from .scenario import ScenarioError, load, play

__all__ = ["main"]

DEFAULT_DB = "hitl.db"
PASSWORD_ENV = "HITL_INBOX_PASSWORD"  # hitl_inbox.PASSWORD_ENV, known without the extra


def open_store(db: str | None) -> tuple[str | hitl_core.Store, str]:
    """The store `--db` names (else $HITL_DB, else ./hitl.db), as `hitl_core.connect`
    takes it, and how to show it. A value holding `://` is a store URL, of any scheme the
    `hitl_core.stores` entry points register; anything else is an SQLite file path, taken
    as written (never read as a URL, so `?` and `#` belong to the file name)."""
    chosen = db or os.environ.get("HITL_DB") or DEFAULT_DB
    if "://" in chosen:
        return chosen, chosen
    return SqliteStore(chosen), f"sqlite:///{chosen}"


LAST_MOMENT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
"""The last second a date can show (year 9999)."""


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a clock's reading no date can show
        return f"{seconds!r} s"


def _record(value: Any) -> Any:
    """A JSON-ready form of a record (private dict fields under their public names)."""
    if isinstance(value, list):
        return [_record(item) for item in value]
    if isinstance(value, dict):
        return {key: _record(item) for key, item in value.items()}
    if not attrs.has(type(value)):
        return value
    out: dict[str, Any] = {}
    for field in attrs.fields(type(value)):
        name = field.name.lstrip("_")
        item = getattr(value, name)
        out[name] = _record(item) if attrs.has(type(item)) else item
    if isinstance(value, hitl_core.PermissionRequest):
        out["is_plan_approval"] = value.is_plan_approval
        out["plan_text"] = value.plan_text
        out["questions"] = value.questions
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def emit_json(value: Any) -> None:
    """Print one JSON value on one line (every `--json` output is JSON Lines)."""
    print(json.dumps(_record(value), default=_json_default), flush=True)


def emit_lines(values: Sequence[Any]) -> None:
    """Print a listing as JSON Lines: one object per record per line, nothing when empty."""
    for value in values:
        emit_json(value)


def table(
    rows: Sequence[Sequence[str]],
    header: Sequence[str],
    details: Sequence[Sequence[str]] | None = None,
) -> None:
    """Print rows as aligned columns; `details[i]` are lines printed under row i."""
    if not rows:
        print("(none)")
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        return "  ".join(cells).rstrip()

    print(line(header))
    for index, row in enumerate(rows):
        print(line(row))
        for detail in details[index] if details else ():
            print(detail)


def _summary(request: hitl_core.PermissionRequest) -> str:
    """A request in a few words; question and plan texts follow on their own lines."""
    if request.kind == "tool":
        return _describe(request)[:70]
    if request.is_plan_approval:
        return f"plan revision {request.tool_input.get('revision')}"
    count = len(request.questions)
    return f"{count} question{'s' if count > 1 else ''}"


def _describe(request: hitl_core.PermissionRequest) -> str:
    if request.kind == "tool":
        return f"{request.tool_name} {json.dumps(request.tool_input)}"
    if request.is_plan_approval:
        plan = (request.plan_text or "").replace("\n", " / ")
        return f"plan r{request.tool_input.get('revision')}: {plan}"
    return " | ".join(
        f"{q['question']} [{', '.join(o['label'] for o in q['options'])}]"
        for q in request.questions
    )


# -- subcommands --------------------------------------------------------------------------


def cmd_runs_list(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    page = hitl.runs.list(
        user_id=args.user, status=args.status, limit=args.limit, starting_after=args.after
    )
    if args.json:
        emit_lines(page.data)
        if page.has_more:
            print(f"more: --after {page.next_starting_after}", file=sys.stderr)
        return 0
    table(
        [
            (
                r.id,
                r.status.value + (" (suspended)" if r.suspended else ""),
                f"{r.human_in_the_loop}/{r.permission_mode}",
                r.user_id or "-",
                _when(r.created_at),
            )
            for r in page.data
        ],
        ("RUN", "STATUS", "HITL/MODE", "USER", "CREATED"),
    )
    if page.has_more:
        print(f"... more: --after {page.next_starting_after}")
    return 0


def cmd_runs_show(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    run = hitl.runs.get(args.run)
    requests = hitl.runs.permissions(run.id)
    if args.json:
        emit_json({"run": run, "requests": requests})
        return 0
    print(f"run {run.id}: {run.status.value}" + (" (suspended)" if run.suspended else ""))
    print(
        f"  human_in_the_loop={run.human_in_the_loop} permission_mode={run.permission_mode}"
        f" user={run.user_id or '-'} input_timeout={run.input_timeout:g}s"
    )
    if run.error:
        print(f"  error: {run.error}")
    table(
        [
            (
                r.request_id,
                r.kind,
                r.status.value,
                r.decision or "-",
                r.source or "-",
                _describe(r)[:70],
            )
            for r in requests
        ],
        ("REQUEST", "KIND", "STATUS", "DECISION", "SOURCE", "WHAT"),
    )
    return 0


def _to_answer(request: hitl_core.PermissionRequest) -> list[str]:
    """The lines under a pending question or plan: what `hitl answer` takes, whole."""
    if request.is_plan_approval:
        plan = [f"      {line}" for line in (request.plan_text or "").splitlines()]
        return [*plan, "    Plan Approval  [Approve | or feedback text]"]
    lines = []
    for question in request.questions:
        labels = [option["label"] for option in question["options"]]
        several = f" (several: {', '.join(labels[:2])!r})" if question["multiSelect"] else ""
        lines.append(f"    {question['question']}  [{' | '.join(labels)}]{several}")
    return lines


def cmd_pending(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    pending = hitl.runs.pending(limit=args.limit)
    if args.json:
        emit_lines(pending)
        return 0
    table(
        [(r.run_id, r.request_id, r.kind, _when(r.created_at), _summary(r)) for r in pending],
        ("RUN", "REQUEST", "KIND", "SINCE", "WHAT"),
        [_to_answer(r) for r in pending],
    )
    return 0


def cmd_approve(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    result = hitl.runs.approve(
        args.run,
        request_id=args.request,
        decision="deny" if args.deny else "allow",
        remember=args.remember,
        reason=args.reason,
        actor=args.actor,
    )
    if args.json:
        emit_json(result)
        return 0
    r = result.request
    if not result.applied:  # someone decided first: say who, when and why
        who = f" by {r.actor}" if r.actor else ""
        why = f" ({r.reason})" if r.reason else ""
        print(
            f"{r.request_id} {r.tool_name}: already {r.status.value}{who} at "
            f"{_when(r.resolved_at)} UTC{why}; your decision was not recorded"
            + ("; remembered" if result.remembered and args.remember else "")
        )
        return 0
    extra = [
        word
        for word, on in (
            ("remembered", result.remembered),
            ("resumed: restart the agent", result.resumed),
        )
        if on
    ]
    print(
        f"{r.request_id} {r.tool_name}: {r.status.value}"
        + (f" ({'; '.join(extra)})" if extra else "")
    )
    return 0


def _parse_answers(
    hitl: hitl_core.Hitl, run_id: str, request_id: str | None, pairs: list[str]
) -> dict[str, str]:
    """'question=label' pairs; a question text that itself holds '=' is matched whole."""
    texts: list[str] = []
    for request in hitl.runs.permissions(run_id):
        if request.kind != "tool" and (request_id is None or request.request_id == request_id):
            texts += [q["question"] for q in request.questions] + ["Plan Approval"]
    answers: dict[str, str] = {}
    for pair in pairs:
        known = [t for t in texts if pair.startswith(t + "=")]
        if known:
            question = max(known, key=len)
            answers[question] = pair[len(question) + 1 :]
        elif "=" in pair:
            question, _, label = pair.partition("=")
            answers[question] = label
        else:
            raise ValidationError("invalid_answers", f"expected 'question=answer', got {pair!r}")
    return answers


def cmd_answer(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    answers = _parse_answers(hitl, args.run, args.request, args.answers)
    result = hitl.runs.answer(args.run, answers=answers, request_id=args.request, actor=args.actor)
    if args.json:
        emit_json(result)
        return 0
    r = result.request
    print(
        f"{r.request_id}: {r.status.value} ({r.decision})"
        + (" (resumed: restart the agent)" if result.resumed else "")
    )
    return 0


def cmd_cancel(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    run = hitl.runs.cancel(args.run)
    if args.json:
        emit_json(run)
        return 0
    print(f"{run.id}: {run.status.value}")
    return 0


def cmd_policies(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    if args.policy_command == "add":
        policy = hitl.permissions.create(tool=args.tool, user_id=args.user)
        if args.json:
            emit_json(policy)
        else:
            scope = policy.user_id or "the account"
            print(f"{policy.id}: {policy.tool_name} pre-approved for {scope}")
        return 0
    if args.policy_command == "rm":
        policy = hitl.permissions.delete(args.policy, user_id=args.user)
        if args.json:
            emit_json(policy)
        else:
            print(f"{policy.id}: removed ({policy.tool_name})")
        return 0
    policies: list[hitl_core.PermissionPolicy] = []
    while True:
        page = hitl.permissions.list(
            user_id=args.user, limit=100, starting_after=policies[-1].id if policies else None
        )
        policies += page.data
        if not page.has_more:
            break
    if args.json:
        emit_lines(policies)
        return 0
    table(
        [(p.id, p.tool_name, p.source, _when(p.created_at)) for p in policies],
        ("POLICY", "TOOL", "SOURCE", "CREATED"),
    )
    return 0


def _print_event(event: hitl_core.Event, as_json: bool) -> None:
    if as_json:
        emit_json(event)
        return
    data = " ".join(f"{k}={v}" for k, v in event.data.items() if v is not None)
    print(
        f"{_when(event.created_at)}  {event.id}  {event.type:<20} {event.run_id}  {data}",
        flush=True,
    )


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived while `events --follow` was following."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def cmd_events(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    if not args.follow:
        for event in hitl.events.list(after=args.after, run_id=args.run, limit=1000):
            _print_event(event, args.json)
        return 0
    # Following ends only by a signal: SIGTERM and SIGINT are the normal way out (exit 0,
    # as for `hitl serve`). The loop only reads, so stopping it anywhere is safe.
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, _stop) for sig in handled}
    try:
        after = args.after
        while True:  # events.wait returns as soon as something is recorded (no polling)
            events = hitl.events.wait(
                after=after, run_id=args.run, limit=1000, timeout=args.interval
            )
            for event in events:
                _print_event(event, args.json)
            if events:
                after = events[-1].id
    except _Stopped:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_tick(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    events = hitl.tick()
    for event in events:
        _print_event(event, args.json)
    if not args.json:
        print(f"{len(events)} event(s)")
    return 0


def parse_before(text: str, now: float) -> float:
    """A `--before` moment: an ISO date or date-time (UTC when it names no zone), seconds
    since the epoch, or an age such as `30d`, `12h` or `90m` (that long before `now`);
    one from 1970 to the year 9999, or 422 invalid_request."""
    value = text.strip()
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return _nameable(now - float(value[:-1]) * units[value[-1]], text)
    try:
        return _nameable(float(value), text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            "invalid_request",
            f"--before takes a date (2026-01-31), a date-time, epoch seconds or an age "
            f"(30d, 12h); got {value!r}",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _nameable(moment.timestamp(), text)


def _nameable(seconds: float, text: str) -> float:
    """`seconds` if it is a moment from 1970 to the year 9999 (one a date can show)."""
    if 0.0 <= seconds <= LAST_MOMENT:
        return seconds
    raise ValidationError(
        "invalid_request", f"--before must be a moment from 1970 to the year 9999; got {text!r}"
    )


def cmd_prune(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    before = parse_before(args.before, time.time())
    deleted = hitl.runs.prune(before=before, batch=args.batch)
    if args.json:
        emit_json({"deleted": deleted, "before": before})
    else:
        print(f"deleted {deleted} run(s) that ended before {_when(before)} UTC")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        outcome = play(load(args.scenario))
    except ScenarioError as error:
        if args.json:
            print(json.dumps({"error": error.to_json()}))
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(outcome.to_json()))
    else:
        print(f"scenario {outcome.name}" + (f" (run {outcome.run_id})" if outcome.run_id else ""))
        for entry in outcome.timeline:
            flag = "  [suspended]" if entry.get("suspended") else ""
            state = entry.get("status", "")
            print(
                f"  t={entry['t']:>7g}s  {entry['who']:<5} {entry['action']:<13} "
                f"{entry['result']}  -> {state}{flag}"
            )
        final = outcome.final
        if final:
            print(f"  final: {final['status']}" + (" (suspended)" if final["suspended"] else ""))
    for mismatch in outcome.mismatches:
        print(f"mismatch: {mismatch}", file=sys.stderr)
    if outcome.mismatches:
        return 1
    if not args.json:
        print("  all expectations met")
    return 0


SERVE_HINT = (
    "hitl serve needs the 'serve' extra (Starlette and uvicorn): "
    "pip install 'hitl-core[serve]' (or pip install -e '.[serve]' in a clone)"
)


LEASE_ENV = "HITL_SERVE_LEASE_SECONDS"
"""How long a `hitl serve` lease on a run lasts (default 30 s): shorter in tests, so that
a killed server's agents are taken over quickly."""


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import hitl_server
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(f"error: {SERVE_HINT}", file=sys.stderr)
        return 1
    key = args.api_key or os.environ.get("HITL_API_KEY")
    if not key:
        print("error: no API key: pass --api-key KEY or set HITL_API_KEY", file=sys.stderr)
        return 2
    scenario = None
    if args.scenario:
        try:
            scenario = load(args.scenario)
        except ScenarioError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    lease = os.environ.get(LEASE_ENV) or str(hitl_server.LEASE_SECONDS)
    try:
        lease_seconds = float(lease)
    except ValueError:
        lease_seconds = 0.0
    if not 0 < lease_seconds < float("inf"):
        print(f"error: ${LEASE_ENV} must be a number of seconds above 0", file=sys.stderr)
        return 2
    store, shown = open_store(args.db)
    try:
        hitl_server.serve(
            store,
            shown=shown,
            host=args.host,
            port=args.port,
            api_key=key,
            scenario=scenario,
            webhook_interval=args.webhook_interval,
            lease_seconds=lease_seconds,
        )
    except OSError as error:
        if not isinstance(store, str):
            store.close()  # the server never took it
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    try:
        import hitl_inbox
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(f"error: {SERVE_HINT.replace('hitl serve', 'hitl inbox')}", file=sys.stderr)
        return 1
    password = os.environ.get(hitl_inbox.PASSWORD_ENV)
    if not password:
        print(
            f"error: no password: set {hitl_inbox.PASSWORD_ENV} (people sign in with it)",
            file=sys.stderr,
        )
        return 2
    store, shown = open_store(args.db)
    try:
        hitl_inbox.serve(
            store,
            shown=shown,
            host=args.host,
            port=args.port,
            password=password,
            poll_interval=args.poll_interval,
        )
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    store, shown = open_store(args.db)
    return run_demo(store, shown)


# -- the parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hitl", description="Human-in-the-loop control of agent runs (hitl-core)."
    )
    db_help = (
        "the store: an SQLite file path, or a store URL such as sqlite:///hitl.db, "
        f"memory:// or postgresql://... (default $HITL_DB or ./{DEFAULT_DB})"
    )
    parser.add_argument("--db", help=db_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def db_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", default=argparse.SUPPRESS, help=db_help)

    def command(
        name: str, handler: Callable[..., int], help_text: str, store: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler, needs_store=store)
        if name not in ("simulate", "runs", "policies"):
            db_flag(p)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON Lines for scripts")

    command("demo", cmd_demo, "run a scripted agent and person through every mode", store=False)
    simulate = command("simulate", cmd_simulate, "play a scenario file (TOML or JSON)", store=False)
    simulate.add_argument("scenario")
    json_flag(simulate)

    runs = command("runs", lambda h, a: 0, "list or show runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="SUBCOMMAND")
    listing = runs_sub.add_parser("list", help="list runs, oldest first")
    listing.set_defaults(handler=cmd_runs_list)
    listing.add_argument("--user")
    listing.add_argument("--status")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--after", help="page after this run id")
    json_flag(listing)
    show = runs_sub.add_parser("show", help="a run and its requests")
    show.set_defaults(handler=cmd_runs_show)
    show.add_argument("run")
    json_flag(show)
    for p in (listing, show):
        db_flag(p)

    pending = command("pending", cmd_pending, "every pending request across runs")
    pending.add_argument("--limit", type=int, default=100)
    json_flag(pending)

    approve = command("approve", cmd_approve, "allow (or --deny) a pending tool request")
    approve.add_argument("run")
    approve.add_argument("request")
    approve.add_argument("--deny", action="store_true")
    approve.add_argument("--remember", action="store_true")
    approve.add_argument("--reason")
    approve.add_argument("--actor", default=os.environ.get("USER"))
    json_flag(approve)

    answer = command("answer", cmd_answer, "answer a pending question or plan")
    answer.add_argument("run")
    answer.add_argument("answers", nargs="+", metavar="'question=answer'")
    answer.add_argument("--request", help="the request to answer (default: the oldest)")
    answer.add_argument("--actor", default=os.environ.get("USER"))
    json_flag(answer)

    cancel = command("cancel", cmd_cancel, "cancel a run")
    cancel.add_argument("run")
    json_flag(cancel)

    policies = command("policies", cmd_policies, "pre-approval policies: add, list, rm")
    policy_sub = policies.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    add = policy_sub.add_parser("add", help="pre-approve a tool name or pattern")
    add.add_argument("tool")
    listed = policy_sub.add_parser("list", help="list a scope's policies")
    remove = policy_sub.add_parser("rm", help="remove a policy")
    remove.add_argument("policy")
    for p in (add, listed, remove):
        p.add_argument("--user", help="the user scope (default: the account)")
        json_flag(p)
        db_flag(p)

    events = command("events", cmd_events, "print events (optionally following new ones)")
    events.add_argument("--follow", "-f", action="store_true")
    events.add_argument("--run")
    events.add_argument("--after", help="start after this event id")
    events.add_argument("--interval", type=float, default=60.0, help=argparse.SUPPRESS)
    json_flag(events)

    tick = command("tick", cmd_tick, "apply every passed deadline now")
    json_flag(tick)

    prune = command(
        "prune", cmd_prune, "delete runs that ended before a date, with their requests and events"
    )
    prune.add_argument(
        "--before", required=True, help="a date, a date-time (UTC), epoch seconds or an age (30d)"
    )
    prune.add_argument("--batch", type=int, default=500, help="runs deleted per transaction")
    json_flag(prune)

    serve = command(
        "serve",
        cmd_serve,
        "serve the hosted API's HITL endpoints over HTTP with a simulated agent",
        store=False,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--api-key", help="the bearer key clients send (default $HITL_API_KEY)")
    serve.add_argument("--scenario", help="a scenario file every run's agent follows")
    serve.add_argument("--webhook-interval", type=float, default=0.5, help=argparse.SUPPRESS)

    inbox = command(
        "inbox",
        cmd_inbox,
        f"serve the approval inbox web page (password from ${PASSWORD_ENV})",
        store=False,
    )
    inbox.add_argument("--host", default="127.0.0.1")
    inbox.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    inbox.add_argument("--poll-interval", type=float, default=0.2, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hitl` command."""
    args = build_parser().parse_args(argv)
    try:
        if not args.needs_store:
            code: int = args.handler(args)
            return code
        with hitl_core.connect(open_store(args.db)[0]) as hitl:
            code = args.handler(hitl, args)
            return code
    except HitlError as error:
        print(f"error: {error.code}: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
