"""The agent side of one run (`hitl.agent(run_id)`): ask, request tools, propose plans,
read and wait for decisions, save a checkpoint, complete or fail. With a lease, every
change is fenced by it: a worker that lost the run cannot act."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _logic
from . import _validate as check
from ._engine import keyed
from ._errors import NotFoundError
from ._logic import Context
from ._records import Lease, PermissionRequest, Run, ToolGate
from ._store import Transaction
from ._validate import shown

if TYPE_CHECKING:
    from ._engine import Hitl

__all__ = ["Agent", "wait_is_over", "wait_timeout"]


def wait_is_over(request: PermissionRequest, run: Run) -> bool:
    """SPEC 14: a wait ends when its request is resolved, or the run is suspended or ended."""
    return not request.is_pending or run.suspended or run.is_terminal


def wait_timeout(timeout: object) -> float | None:
    """None or a number of seconds >= 0 (422 invalid_request otherwise)."""
    if timeout is None:
        return None
    return check.seconds(timeout, "timeout", "invalid_request", allow_zero=True)


class Agent:
    """The agent side of one run: ask, request tools, propose plans, read and wait for
    decisions, save a checkpoint, complete or fail."""

    def __init__(self, engine: Hitl, run_id: str, lease: Lease | None = None) -> None:
        self._engine = engine
        self.run_id = run_id
        self.lease = lease
        """The lease this agent acts under (None: it acts only while nobody holds one)."""

    def __repr__(self) -> str:
        return f"<Agent run_id={self.run_id!r}>"

    def run(self) -> Run:
        """The run as stored now."""
        return self._engine.runs.get(self.run_id)

    def _change(self, work: Callable[[Transaction, Context, Run], Any]) -> Any:
        """Run `work` on this agent's run, loaded and up to date, in a write transaction."""
        engine = self._engine

        def change(tx: Transaction, ctx: Context) -> Any:
            run, ctx = engine._load(tx, ctx, self.run_id)
            return work(tx, ctx, run)

        return engine._write(change)

    def _opened(self, tx: Transaction, run: Run, step: _logic.Step) -> PermissionRequest:
        self._engine._save(tx, step, run)
        assert step.result is not None
        return step.result

    def ask(self, questions: list[dict[str, Any]], *, key: str | None = None) -> PermissionRequest:
        """Open a question request (409 hitl_disabled without human_in_the_loop). With a
        `key`, asking again with the same key returns the request it opened (a host
        replaying its steps after a crash opens nothing twice)."""

        def work(tx: Transaction, ctx: Context, run: Run) -> PermissionRequest:
            _logic.opening(run, self.lease, ctx.now)  # before the key is looked at
            rid = keyed(run.id, key)
            existing = tx.get_request(rid) if rid is not None else None
            step = _logic.ask(ctx, run, self.lease, questions, request_id=rid, existing=existing)
            return self._opened(tx, run, step)

        result: PermissionRequest = self._change(work)
        return result

    def request_tool(
        self,
        tool_name: str,
        tool_input: dict[str, Any] | None = None,
        *,
        safe: bool = False,
        key: str | None = None,
    ) -> ToolGate:
        """Ask whether the agent may call a tool now (SPEC 4.2's rules, in order). With a
        `key`, a request the key already opened is answered from what it is now."""

        def work(tx: Transaction, ctx: Context, run: Run) -> ToolGate:
            name, arguments, is_safe = _logic.tool_call(
                run, self.lease, ctx.now, tool_name, tool_input, safe
            )
            rid = keyed(run.id, key)
            existing = tx.get_request(rid) if rid is not None else None
            policies = (
                tx.candidate_policies(run.user_id, name)
                if existing is None and _logic.asks_policies(run, name, is_safe)
                else []
            )
            gate, step = _logic.request_tool(
                ctx,
                run,
                name,
                arguments,
                safe=is_safe,
                policies=policies,
                request_id=rid,
                existing=existing,
            )
            if step is not None:
                self._engine._save(tx, step, run)
            return gate

        result: ToolGate = self._change(work)
        return result

    def propose_plan(self, plan_text: str, *, key: str | None = None) -> PermissionRequest:
        """Open a plan request (plan mode only; 409 not_plan_mode otherwise)."""

        def work(tx: Transaction, ctx: Context, run: Run) -> PermissionRequest:
            _logic.opening(run, self.lease, ctx.now)  # before the key is looked at
            rid = keyed(run.id, key)
            existing = tx.get_request(rid) if rid is not None else None
            step = _logic.propose_plan(
                ctx, run, self.lease, plan_text, request_id=rid, existing=existing
            )
            return self._opened(tx, run, step)

        result: PermissionRequest = self._change(work)
        return result

    def _look(self, request_id: object) -> tuple[PermissionRequest, Run]:
        """The request and its run as stored now (deadlines applied)."""
        engine = self._engine
        named = check.identifier(request_id, "request_id")

        def work(tx: Transaction, ctx: Context) -> tuple[PermissionRequest, Run]:
            run, _ = engine._load(tx, ctx, self.run_id)
            request = tx.get_request(named)
            if request is None or request.run_id != run.id:
                raise NotFoundError("gate_not_found", f"no request {shown(request_id)} on this run")
            return request, run

        return engine._read(work)

    def result(self, request_id: str) -> PermissionRequest:
        """The request as it stands now: pending, or resolved with its decision."""
        return self._look(request_id)[0]

    def wait(self, request_id: str, *, timeout: float | None = None) -> PermissionRequest:
        """Block until the request is resolved, the run is suspended (SPEC 6) or ends, or
        `timeout` seconds of the engine's clock pass; return the request as stored then.
        A decision made in another thread or process ends the wait at once (the store's
        change feed wakes it); with a `ManualClock`, `advance` past the run's deadline or
        the timeout ends it too, and no real time is waited."""
        limit = wait_timeout(timeout)
        self._engine._check_open()

        def look() -> tuple[PermissionRequest, bool, float | None]:
            request, run = self._look(request_id)
            return request, wait_is_over(request, run), run.deadline

        return self._engine._waiters.wait(self.run_id, limit, look)

    def save_checkpoint(self, checkpoint: Any) -> Run:
        """Store the host's own JSON record of where this agent is (at most
        MAX_JSON characters); a host that takes the run over reads it from
        `Run.checkpoint`. Fenced by the agent's lease like every change."""

        def work(tx: Transaction, ctx: Context, run: Run) -> Run:
            step = _logic.save_checkpoint(ctx, run, self.lease, checkpoint)
            self._engine._save(tx, step, run)
            return step.run

        result: Run = self._change(work)
        return result

    def complete(self, output: Any = None) -> Run:
        """Finish the run (409 pending_requests while a request is pending)."""

        def work(tx: Transaction, ctx: Context, run: Run) -> Run:
            step = _logic.complete(ctx, run, self.lease, output)
            self._engine._save(tx, step, run)
            return step.run

        result: Run = self._change(work)
        return result

    def fail(self, error: str | BaseException) -> Run:
        """End the run as failed; its pending requests become cancelled."""

        def work(tx: Transaction, ctx: Context, run: Run) -> Run:
            pending = tx.list_requests(run.id, pending_only=True)
            step = _logic.fail(ctx, run, self.lease, error, pending)
            self._engine._save(tx, step, run)
            return step.run

        result: Run = self._change(work)
        return result
