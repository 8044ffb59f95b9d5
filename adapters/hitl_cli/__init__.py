"""The `hitl` command: a demo of every mode, deterministic scenario simulation, and
operator commands on a store (list, approve, answer, cancel, policies, events, tick).
Standard-library argparse: a dozen subcommands need no framework."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

import hitl_core
from hitl_core import HitlError, ValidationError

from .scenario import ScenarioError, load, play

__all__ = ["main"]

DEFAULT_DB = "hitl.db"
PASSWORD_ENV = "HITL_INBOX_PASSWORD"  # hitl_inbox.PASSWORD_ENV, known without the extra


def store_url(db: str | None) -> str:
    """The store URL for `--db` (a path or a URL), else $HITL_DB, else ./hitl.db."""
    chosen = db or os.environ.get("HITL_DB") or DEFAULT_DB
    return chosen if "://" in chosen else f"sqlite:///{chosen}"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


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
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def emit_json(value: Any) -> None:
    print(json.dumps(_record(value), indent=2, default=_json_default))


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    """Print rows as aligned columns."""
    if not rows:
        print("(none)")
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


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
        emit_json(
            {
                "data": page.data,
                "has_more": page.has_more,
                "next_starting_after": page.next_starting_after,
            }
        )
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


def cmd_pending(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    pending = hitl.runs.pending(limit=args.limit)
    if args.json:
        emit_json(pending)
        return 0
    table(
        [(r.run_id, r.request_id, r.kind, _when(r.created_at), _describe(r)[:70]) for r in pending],
        ("RUN", "REQUEST", "KIND", "SINCE", "WHAT"),
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
        emit_json(policies)
        return 0
    table(
        [(p.id, p.tool_name, p.source, _when(p.created_at)) for p in policies],
        ("POLICY", "TOOL", "SOURCE", "CREATED"),
    )
    return 0


def _print_event(event: hitl_core.Event, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_record(event)), flush=True)
        return
    data = " ".join(f"{k}={v}" for k, v in event.data.items() if v is not None)
    print(
        f"{_when(event.created_at)}  {event.id}  {event.type:<20} {event.run_id}  {data}",
        flush=True,
    )


def cmd_events(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    after = args.after
    while True:
        events = hitl.events.list(after=after, run_id=args.run, limit=1000)
        for event in events:
            _print_event(event, args.json)
        if events:
            after = events[-1].id
        if not args.follow:
            return 0
        if not events:
            time.sleep(args.interval)


def cmd_tick(hitl: hitl_core.Hitl, args: argparse.Namespace) -> int:
    events = hitl.tick()
    for event in events:
        _print_event(event, args.json)
    if not args.json:
        print(f"{len(events)} event(s)")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        outcome = play(load(args.scenario))
    except ScenarioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
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
    try:
        hitl_server.serve(
            store_url(args.db),
            host=args.host,
            port=args.port,
            api_key=key,
            scenario=scenario,
            webhook_interval=args.webhook_interval,
        )
    except OSError as error:
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
    try:
        hitl_inbox.serve(
            store_url(args.db),
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

    return run_demo(store_url(args.db))


# -- the parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hitl", description="Human-in-the-loop control of agent runs (hitl-core)."
    )
    parser.add_argument(
        "--db", help=f"store: a file path or URL (default $HITL_DB or ./{DEFAULT_DB})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[..., int], help_text: str, store: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler, needs_store=store)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON for scripts")

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

    events = command("events", cmd_events, "print events (optionally following new ones)")
    events.add_argument("--follow", "-f", action="store_true")
    events.add_argument("--run")
    events.add_argument("--after", help="start after this event id")
    events.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    json_flag(events)

    tick = command("tick", cmd_tick, "apply every passed deadline now")
    json_flag(tick)

    serve = command(
        "serve",
        cmd_serve,
        "serve the hosted API's HITL endpoints over HTTP with a simulated agent",
        store=False,
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--api-key", help="the bearer key clients send (default $HITL_API_KEY)")
    serve.add_argument("--db", default=argparse.SUPPRESS, help="as hitl --db")
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
    inbox.add_argument("--db", default=argparse.SUPPRESS, help="as hitl --db")
    inbox.add_argument("--poll-interval", type=float, default=0.2, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hitl` command."""
    args = build_parser().parse_args(argv)
    try:
        if not args.needs_store:
            code: int = args.handler(args)
            return code
        with hitl_core.connect(store_url(args.db)) as hitl:
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
