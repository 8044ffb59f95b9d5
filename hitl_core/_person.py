"""The human side of runs (`hitl.runs`): start, read, answer, approve, switch mode,
cancel; and the workers' side of a run's life: leases, the runs that need a worker,
and pruning ended runs. Each call loads what the reducer needs and saves its step."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from . import _logic
from . import _validate as check
from ._engine import settings
from ._errors import ValidationError
from ._logic import Context
from ._outbox import catch_up
from ._policy import exactly
from ._records import (
    AnswerResult,
    ApproveResult,
    Lease,
    Page,
    PermissionRequest,
    Run,
    RunStatus,
)
from ._store import Transaction
from ._validate import shown

if TYPE_CHECKING:
    from ._engine import Hitl

__all__ = ["Runs"]

MAX_PENDING = 1000
DEFAULT_LEASE = 30.0
PRUNE_BATCH = 500
PRUNE_BATCH_MAX = 10_000


def _identifier(value: object) -> str | None:
    """`value` if it can name a stored record (a string short enough), else None."""
    return value if isinstance(value, str) and len(value) <= check.MAX_ID else None


def _lease(value: object) -> Lease:
    if not isinstance(value, Lease):
        raise ValidationError("invalid_request", f"lease must be a Lease; got {shown(value)}")
    return value


class Runs:
    """The human side of runs: create, read, answer, approve, switch mode, cancel; and
    leases for the workers that run agents."""

    def __init__(self, engine: Hitl) -> None:
        self._engine = engine

    def create(
        self,
        *,
        human_in_the_loop: bool = False,
        permission_mode: str = "autonomous",
        user_id: str | None = None,
        input_timeout: float = check.DEFAULT_INPUT_TIMEOUT,
        metadata: dict[str, Any] | None = None,
        checkpoint: Any = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Start a run (status running); 422 for a configuration SPEC 2 refuses. With an
        `idempotency_key`, a retry with the same arguments returns the run the key made
        (422 idempotency_key_reused for other arguments). `checkpoint` is the host's
        own JSON record of its agent (see `Agent.save_checkpoint`)."""
        values = settings(
            human_in_the_loop=human_in_the_loop,
            permission_mode=permission_mode,
            user_id=user_id,
            input_timeout=input_timeout,
            metadata=metadata,
            checkpoint=checkpoint,
            task_id=None,
        )
        key = None
        if idempotency_key is not None:
            key = check.text(idempotency_key, "idempotency_key", limit=check.MAX_NAME)
        return self._engine._write(lambda tx, ctx: start(self._engine, tx, ctx, values, key))

    def get(self, run_id: str) -> Run:
        """The run (404 run_not_found)."""
        return self._engine._read(lambda tx, ctx: self._engine._load(tx, ctx, run_id)[0])

    def list(
        self,
        *,
        user_id: str | None = None,
        status: str | None = None,
        limit: int = 20,
        starting_after: str | None = None,
    ) -> Page[Run]:
        """A page of runs, oldest first, optionally of one user and one status."""
        user = check.user(user_id, "invalid_request")
        if status is not None and status not in RunStatus.__members__.values():
            raise ValidationError("invalid_request", f"unknown run status {shown(status)}")
        count = check.limit(limit)
        cursor = check.cursor(starting_after)

        def work(tx: Transaction, ctx: Context) -> Page[Run]:
            found = tx.list_runs(user_id=user, status=status, limit=count, starting_after=cursor)
            if found is None:
                raise check.unknown_cursor(cursor)
            runs, more = found
            return Page(data=runs, has_more=more, next_starting_after=runs[-1].id if more else None)

        return self._engine._read(work, listing=True)

    def permissions(self, run_id: str) -> builtins.list[PermissionRequest]:
        """Every request of the run, pending and resolved, oldest first."""

        def work(tx: Transaction, ctx: Context) -> builtins.list[PermissionRequest]:
            run, _ = self._engine._load(tx, ctx, run_id)
            return tx.list_requests(run.id)

        return self._engine._read(work)

    def pending(self, *, limit: int = 100) -> builtins.list[PermissionRequest]:
        """Pending requests across every run, oldest first (an operator's inbox)."""
        count = check.limit(limit, MAX_PENDING)
        return self._engine._read(lambda tx, ctx: tx.pending_requests(count), listing=True)

    def answer(
        self,
        run_id: str,
        *,
        answers: dict[str, Any],
        request_id: str | None = None,
        actor: str | None = None,
    ) -> AnswerResult:
        """Answer a pending question or plan request (SPEC 4.1, 4.3). `applied` is False
        when the request had already been answered the same way (a retry)."""

        def work(tx: Transaction, ctx: Context) -> AnswerResult:
            run, ctx = self._engine._load(tx, ctx, run_id)
            rid = _identifier(request_id)
            named = tx.get_request(rid) if rid is not None else None
            step = _logic.answer(
                ctx,
                run,
                answers,
                request_id=request_id,
                actor=actor,
                pending=tx.list_requests(run.id, pending_only=True),
                named=named,
            )
            self._engine._save(tx, step, run)
            assert step.result is not None
            return AnswerResult(request=step.result, resumed=step.resumed, applied=step.applied)

        return self._engine._write(work)

    def approve(
        self,
        run_id: str,
        *,
        request_id: str,
        decision: str = "allow",
        remember: bool = False,
        reason: str | None = None,
        actor: str | None = None,
    ) -> ApproveResult:
        """Allow or deny a pending tool request (SPEC 4.2, 4.4). `applied` is False when
        the request already had this decision (someone decided first: the request says
        who and why)."""
        engine = self._engine

        def work(tx: Transaction, ctx: Context) -> ApproveResult:
            run, ctx = engine._load(tx, ctx, run_id)
            rid = _identifier(request_id)
            request = tx.get_request(rid) if rid is not None else None
            policy = None
            if remember is True and request is not None and request.kind == "tool":
                policy = tx.find_policy(run.user_id, exactly(request.tool_name))
            step = _logic.approve(
                ctx,
                run,
                request_id=request_id,
                decision=decision,
                remember=remember,
                reason=reason,
                actor=actor,
                request=request,
                pending=tx.list_requests(run.id, pending_only=True) if request else (),
                policy=policy,
                remember_scope=engine.remember_scope,
            )
            engine._save(tx, step, run)
            assert step.result is not None
            return ApproveResult(
                request=step.result,
                resumed=step.resumed,
                remembered=step.result.tool_name in step.run.remembered_allow,
                applied=step.applied,
            )

        return engine._write(work)

    def update_permission_mode(self, run_id: str, *, permission_mode: str) -> Run:
        """Switch the run's mode mid-run (SPEC 7); returns the run."""

        def work(tx: Transaction, ctx: Context) -> Run:
            run, ctx = self._engine._load(tx, ctx, run_id)
            pending = tx.list_requests(run.id, pending_only=True)
            step = _logic.switch_mode(ctx, run, permission_mode, pending)
            self._engine._save(tx, step, run)
            return step.run

        return self._engine._write(work)

    def cancel(self, run_id: str) -> Run:
        """Cancel the run; its pending requests become cancelled (409 when terminal)."""

        def work(tx: Transaction, ctx: Context) -> Run:
            run, ctx = self._engine._load(tx, ctx, run_id)
            pending = tx.list_requests(run.id, pending_only=True)
            step = _logic.end(ctx, run, "cancel", pending)
            self._engine._save(tx, step, run)
            return step.run

        return self._engine._write(work)

    # -- workers ---------------------------------------------------------------------------
    def claim(self, run_id: str, *, worker: str, seconds: float = DEFAULT_LEASE) -> Lease:
        """Take the run's lease for `seconds`: from now until it lapses, only an agent
        holding this lease may act for the run (`hitl.agent(run_id, lease=...)`). 409
        run_leased while another worker holds one; claiming again as the same worker
        gives a new lease (a newer token)."""

        def work(tx: Transaction, ctx: Context) -> Lease:
            run, ctx = self._engine._load(tx, ctx, run_id)
            step = _logic.claim(ctx, run, worker, seconds)
            self._engine._save(tx, step, run)
            lease = step.run.lease_at(ctx.now)
            assert lease is not None
            return lease

        return self._engine._write(work)

    def renew(self, lease: Lease, *, seconds: float = DEFAULT_LEASE) -> Lease:
        """Extend a lease to `seconds` from now (409 lease_lost when the run was claimed
        again since)."""
        held = _lease(lease)

        def work(tx: Transaction, ctx: Context) -> Lease:
            run, ctx = self._engine._load(tx, ctx, held.run_id)
            step = _logic.renew(ctx, run, held, seconds)
            self._engine._save(tx, step, run)
            renewed = step.run.lease_at(ctx.now)
            assert renewed is not None
            return renewed

        return self._engine._write(work)

    def release(self, lease: Lease) -> bool:
        """Give a lease up, so that another worker may claim the run at once. False when
        it was no longer the run's lease (nothing changed)."""
        held = _lease(lease)

        def work(tx: Transaction, ctx: Context) -> bool:
            run, ctx = self._engine._load(tx, ctx, held.run_id)
            step = _logic.release(ctx, run, held)
            self._engine._save(tx, step, run)
            return step.applied

        return self._engine._write(work)

    def claimable(self, *, limit: int = 100) -> builtins.list[Run]:
        """Runs that need a worker: running (not waiting for a person), with no lease
        or a lapsed one. That is a run whose worker died while it ran, a run decided or
        resumed while no worker held it, and a new run no worker took yet. Longest
        unattended first."""
        count = check.limit(limit, MAX_PENDING)
        return self._engine._read(lambda tx, ctx: tx.claimable_runs(ctx.now, count), listing=True)

    def prune(self, *, before: float, batch: int = PRUNE_BATCH) -> int:
        """Delete the runs that ended (completed, failed, cancelled) before `before`
        (seconds, the clock's time), with their requests, events and finished webhook
        deliveries, `batch` runs per transaction; return how many were deleted."""
        cutoff = check.seconds(before, "before", "invalid_request", allow_zero=True)
        size = check.limit(batch, PRUNE_BATCH_MAX, "batch")
        total = 0
        while True:
            deleted = self._engine._write(lambda tx, ctx: prune_batch(tx, ctx, cutoff, size))
            total += deleted
            if deleted < size:
                return total


def start(
    engine: Hitl, tx: Transaction, ctx: Context, values: dict[str, Any], key: str | None
) -> Run:
    """Create a run from validated settings (`runs.create`, `tasks.run`)."""
    stored_key = tx.get_idempotency_key(key) if key is not None else None
    stored_run = tx.get_run(stored_key.run_id) if stored_key is not None else None
    step = _logic.new_run(
        ctx, settings=values, key=key, stored_key=stored_key, stored_run=stored_run
    )
    if step.applied:
        engine._save(tx, step, None)
    return step.run


def prune_batch(tx: Transaction, ctx: Context, before: float, size: int) -> int:
    """Delete up to `size` runs that ended before `before`. The webhook outbox first
    fans out every event it has not seen, so no notification is lost, and its position
    moves to the newest event if the one it named is deleted."""
    run_ids = tx.ended_runs(before, size)
    if not run_ids:
        return 0
    catch_up(tx, ctx)
    tx.delete_runs(run_ids)
    catch_up(tx, ctx, after_delete=True)
    return len(run_ids)
