"""The simulated agents of `hitl serve`: one thread per server plays the agents of the
runs it holds a lease on. It claims runs that need a worker (`runs.claimable`), renews
its leases while it plays them, and lets a run go when it is suspended. It is woken by
the store's change feed (`events.wait`), so a decision made anywhere reaches the agent
at once. Agents keep their progress in the run checkpoint, key their requests by step,
and act only under their lease, so no agent is played twice, whatever the number of
servers on the store, and a step replayed after a crash opens nothing twice."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

import attrs

import hitl_core
from hitl_core import (
    ConflictError,
    HitlError,
    Lease,
    NotFoundError,
    PermissionRequest,
    ValidationError,
)

from ._program import (
    MAX_REVISIONS,
    Program,
    Progress,
    Step,
    checkpoint,
    is_serve_checkpoint,
    read_checkpoint,
)

__all__ = ["LEASE_SECONDS", "Worker", "worker_name"]

log = logging.getLogger("hitl_server.agent")

LEASE_SECONDS = 30.0
"""How long a server's claim on a run lasts unless renewed (it renews every third of it)."""
SCAN_LIMIT = 1000
"""The most claimable runs looked at in one scan."""
WALK_PAGES = 10
"""When a scan's claimable runs fill SCAN_LIMIT, how many pages of running runs (100
each) it also walks, on from where the last scan stopped."""
EVENT_BATCH = 1000
NEEDS_A_LOOK = frozenset({"run.started", "run.resumed", "request.resolved"})
"""Events after which a run no server holds may need one: it is new, or it can go on."""
BUSY_PAUSE = 0.5
"""How long an agent waits before trying again when the store was busy."""
MOVES_PER_PASS = 100
"""The most moves one agent makes in one pass before the others get their turn."""
TICK_INTERVAL = 5.0
"""How often the server applies every passed deadline (`hitl.tick()`), so runs whose
agent nobody plays right now are suspended on time (their events and webhooks too)."""


def worker_name() -> str:
    """This process's worker name for leases: host name, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class _Finished(Exception):
    """The run ended (by the agent or by someone else): stop playing it."""


@attrs.define
class _Held:
    """An agent this server plays: its run's lease and agent side, its program and
    progress, and when it next needs a look."""

    agent: hitl_core.Agent
    lease: Lease
    program: Program
    progress: Progress
    saved: dict[str, Any]
    dirty: bool = True
    deadline: float | None = None
    retry_at: float | None = None

    @property
    def run_id(self) -> str:
        return self.agent.run_id


class Worker:
    """Plays the agents of the runs this server holds, on one thread (`start`, `stop`)."""

    def __init__(
        self, hitl: hitl_core.Hitl, *, name: str, lease_seconds: float = LEASE_SECONDS
    ) -> None:
        self.hitl = hitl
        self.name = name
        self.lease_seconds = lease_seconds
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._cursor: str | None = None
        self._walk: str | None = None  # the last running run the walk looked at
        self._rescan = True
        self._candidates: set[str] = set()
        self._scan_at = 0.0
        self._tick_at = 0.0

    @property
    def held(self) -> int:
        """How many agents this server plays now."""
        with self._lock:
            return len(self._held)

    def take_over(self) -> int:
        """Claim every run whose agent needs a server now; return how many were claimed."""
        with self._lock:
            self._cursor = self.hitl.events.last_id()
            return self._scan(time.time())

    def start(self) -> None:
        """Play the agents on a background thread until `stop`."""
        self._thread = threading.Thread(target=self._loop, name="hitl-agents", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop playing and release every lease, so another server may take the runs over
        at once. The thread ends when its wait does (closing the engine ends it)."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            held, self._held = list(self._held.values()), {}
        for one in held:
            with contextlib.suppress(HitlError):
                self.hitl.runs.release(one.lease)

    def join(self, timeout: float) -> None:
        """Wait for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._pass(time.time())
                except HitlError as error:  # the store is busy: try again shortly
                    log.warning("agents: %s", error)
                    self._scan_at = time.time() + BUSY_PAUSE
                pause = self._pause(time.time())
            try:
                events = self.hitl.events.wait(after=self._cursor, limit=EVENT_BATCH, timeout=pause)
            except ValidationError as error:  # the event we followed was pruned
                log.info("agents: %s; following the log from its end", error)
                with contextlib.suppress(HitlError):
                    self._cursor = self.hitl.events.last_id()
                self._rescan = True
                continue
            except HitlError as error:
                if self._stopping.is_set() or error.code == "closed":
                    return
                log.warning("agents: %s", error)
                self._stopping.wait(BUSY_PAUSE)
                continue
            if events:
                self._cursor = events[-1].id
                with self._lock:
                    for event in events:
                        found = self._held.get(event.run_id)
                        if found is not None:
                            found.dirty = True
                        elif event.type in NEEDS_A_LOOK:  # maybe a run that needs a server
                            self._candidates.add(event.run_id)

    def _pass(self, now: float) -> None:
        """Apply passed deadlines, claim what needs claiming, renew leases that are due,
        and play every agent that has something to do."""
        if now >= self._tick_at:
            self._tick_at = now + TICK_INTERVAL
            self.hitl.tick()
        if self._rescan or now >= self._scan_at:
            self._scan(now)
        if self._candidates:
            self._look_at_candidates(now)
        for held in list(self._held.values()):
            if held.lease.expires_at - now <= self.lease_seconds * 2 / 3:
                self._renew(held)
            if held.run_id in self._held and self._ready(held, now):
                self._play(held)

    def _pause(self, now: float) -> float:
        """How long the loop may wait for events before it has something to do."""
        times = [self._scan_at, self._tick_at]
        for held in self._held.values():
            if held.dirty:
                return 0.0
            times.append(held.lease.expires_at - self.lease_seconds * 2 / 3)
            times += [t for t in (held.progress.wake_at, held.deadline, held.retry_at) if t]
        return max(0.0, min(times) - now)

    @staticmethod
    def _ready(held: _Held, now: float) -> bool:
        due = [t for t in (held.progress.wake_at, held.deadline, held.retry_at) if t]
        return held.dirty or any(now >= t for t in due)

    # -- leases --------------------------------------------------------------------------
    def _scan(self, now: float) -> int:
        """Claim the runs of `hitl serve` agents that no live lease holds. Lease-less runs
        come first among the claimable ones; when other hosts' fill a whole scan, the
        scan also walks on through the running runs, so that a dead server's agent that
        no event names (it was busy) is found within a few scans at any scale."""
        self._rescan = False
        self._scan_at = now + self.lease_seconds / 3
        runs = self.hitl.runs.claimable(limit=SCAN_LIMIT)
        adopted = sum(self._adopt(run) for run in runs if run.id not in self._held)
        if len(runs) == SCAN_LIMIT:
            adopted += self._walk_running(now)
        return adopted

    def _walk_running(self, now: float) -> int:
        """Look at up to WALK_PAGES pages of running runs after the last one looked at
        (from the first again after the last page) and claim those no lease holds."""
        adopted = 0
        for _ in range(WALK_PAGES):
            try:
                page = self.hitl.runs.list(status="running", limit=100, starting_after=self._walk)
            except ValidationError:  # invalid_cursor: the run it stopped at was pruned
                self._walk = None
                continue
            for run in page.data:
                if run.id not in self._held and run.lease_at(now) is None:
                    adopted += self._adopt(run)
            self._walk = page.next_starting_after
            if self._walk is None:
                break
        return adopted

    def _look_at_candidates(self, now: float) -> None:
        """Claim the runs named by recent events that may need a server: found by id, not
        by the scan, whose first SCAN_LIMIT claimable runs may all be other hosts'."""
        candidates, self._candidates = self._candidates, set()
        for run_id in candidates:
            if run_id in self._held:
                continue
            try:
                run = self.hitl.runs.get(run_id)
            except NotFoundError:
                continue
            if run.status == "running" and run.lease_at(now) is None:
                self._adopt(run)

    def _adopt(self, run: hitl_core.Run) -> bool:
        """Claim `run` if it is a `hitl serve` agent's, and play it from its checkpoint."""
        if not is_serve_checkpoint(run.checkpoint):
            return False
        try:
            lease = self.hitl.runs.claim(run.id, worker=self.name, seconds=self.lease_seconds)
        except (ConflictError, NotFoundError):  # another server was first, or it ended
            return False
        agent = self.hitl.agent(run.id, lease=lease)
        current = agent.run()  # read after the claim: the last holder's last checkpoint
        try:
            program, progress = read_checkpoint(current.checkpoint)
        except ValueError as error:
            log.error("run %s: %s; failing it", run.id, error)
            with contextlib.suppress(HitlError):
                agent.fail(f"the simulated agent cannot be resumed: {error}")
            return False
        saved = progress.to_json()
        self._held[run.id] = _Held(agent, lease, program, progress, saved)
        return True

    def _renew(self, held: _Held) -> None:
        try:
            held.lease = self.hitl.runs.renew(held.lease, seconds=self.lease_seconds)
        except ConflictError as error:  # lease_lost, run_not_active: not ours any more
            log.info("run %s: %s", held.run_id, error.code)
            self._held.pop(held.run_id, None)
        except NotFoundError:
            self._held.pop(held.run_id, None)
        except HitlError as error:  # busy: the lease has two thirds of its time left
            log.warning("run %s: renewing: %s", held.run_id, error)

    def _let_go(self, held: _Held) -> None:
        self._held.pop(held.run_id, None)
        with contextlib.suppress(HitlError):
            self.hitl.runs.release(held.lease)

    # -- playing one agent ---------------------------------------------------------------
    def _play(self, held: _Held) -> None:
        """Advance one agent as far as it goes without a decision, save its progress, and
        let its run go when it is suspended. An agent that lost its lease stops at once."""
        held.dirty, held.retry_at = False, None
        try:
            if self._advance(held):
                self._held.pop(held.run_id, None)
                return
            progress = held.progress.to_json()
            if progress != held.saved:
                held.agent.save_checkpoint(checkpoint(held.program, held.progress))
                held.saved = progress
            held.deadline = None
            if held.progress.waiting:
                run = held.agent.run()
                if run.is_terminal:
                    self._held.pop(held.run_id, None)
                elif run.suspended:  # the worker is freed; a decision makes it claimable
                    self._let_go(held)
                else:
                    held.deadline = run.deadline
        except ConflictError as error:
            if error.code in ("lease_lost", "run_leased", "run_not_active"):
                log.info("run %s: %s; its agent stops here", held.run_id, error.code)
                self._held.pop(held.run_id, None)
            else:
                self._crashed(held, error)
        except NotFoundError as error:
            if error.code == "run_not_found":
                self._held.pop(held.run_id, None)
            else:
                self._crashed(held, error)
        except HitlError as error:  # the store is busy: try again shortly
            log.warning("run %s: %s", held.run_id, error)
            held.retry_at = time.time() + BUSY_PAUSE
        except Exception as error:  # never let one agent stop the others
            self._crashed(held, error)

    def _crashed(self, held: _Held, error: BaseException) -> None:
        log.error("agent of run %s crashed; failing the run", held.run_id, exc_info=error)
        self._held.pop(held.run_id, None)
        with contextlib.suppress(HitlError):
            held.agent.fail("the simulated agent crashed")

    def _advance(self, held: _Held) -> bool:
        """Play moves until the agent waits (False) or its run has ended (True)."""
        agent, p = held.agent, held.progress
        try:
            if p.wake_at is not None:
                if time.time() < p.wake_at:
                    return agent.run().is_terminal  # woken early: cancelled while asleep?
                p.wake_at = None
            if p.waiting:
                still: list[str] = []
                for request_id in p.waiting:
                    try:
                        found = agent.result(request_id)
                    except NotFoundError as error:
                        if error.code == "run_not_found":
                            raise _Finished from None
                        continue  # a request that vanished cannot be waited for
                    if found.is_pending:
                        still.append(request_id)
                    else:
                        _learn(p, found)
                p.waiting = still
                if still:
                    return False
            for _ in range(MOVES_PER_PASS):
                if p.waiting or p.wake_at is not None:
                    return False
                try:
                    self._next(held)
                except ConflictError as error:
                    if error.code == "run_not_active":
                        raise _Finished from None
                    if error.code != "pending_requests":
                        raise
                    # requests it lost track of (opened by an older server): wait for them
                    p.waiting = [r.request_id for r in _pending(self.hitl, held.run_id)]
            held.dirty = True  # more to do: after the other agents' turn
            return False
        except _Finished:
            return True

    def _next(self, held: _Held) -> None:
        """Do the agent's next move; it may open requests to wait for. Every request is
        opened with a key that its progress names, so replaying a move whose progress
        was not saved (a crash, a lost lease) finds the request it opened."""
        agent, p, steps = held.agent, held.progress, held.program.steps
        if p.replan is not None:
            if p.revisions >= MAX_REVISIONS:
                agent.fail(f"the plan was revised {p.revisions} times without approval")
                raise _Finished
            base = p.plan or "Plan"
            text = f"{base}\n(revision {p.revisions + 1}, after feedback: {p.replan})"
            try:
                p.waiting = [_propose(agent, p, text)]
            except ConflictError as error:
                if error.code != "not_plan_mode":
                    raise
                p.notes.append("plan dropped: the run left plan mode")
            p.replan = None
            return
        if p.step >= len(steps):
            agent.complete(_summary(p))
            raise _Finished
        step = steps[p.step]
        action = step.get("action")
        try:
            advance = self._do(held, step)
        except ConflictError as error:
            if error.code not in ("hitl_disabled", "not_plan_mode"):
                raise
            p.notes.append(f"{action} skipped ({error.code})")
            advance = True
        except ValidationError as error:
            agent.fail(f"step {p.step + 1} ({action}) was refused: {error}")
            raise _Finished from None
        if advance:
            p.step += 1

    def _do(self, held: _Held, step: Step) -> bool:
        """One step; returns False when the same step must run again (after a plan)."""
        agent, p = held.agent, held.progress
        action = step.get("action")
        if action == "sleep":
            p.wake_at = time.time() + float(step.get("seconds", 0))
        elif action == "ask":
            questions: Any = step.get("questions")  # as written: hitl-core validates them
            p.waiting = [agent.ask(questions, key=f"{p.step}.ask").request_id]
        elif action == "request_tool":
            return self._tool(held, step)
        elif action == "request_tools":
            for n, call in enumerate(step.get("calls", [])):
                gate = agent.request_tool(call["tool"], call.get("input"), key=f"{p.step}.tool.{n}")
                if gate.request_id is not None and gate.status == "pending":
                    p.waiting.append(gate.request_id)
                else:
                    p.notes.append(_gate_note(call["tool"], gate))
        elif action == "propose_plan":
            if agent.run().plan_approved:
                p.notes.append("plan already approved")
            else:
                p.plan = str(step.get("plan"))
                p.waiting = [_propose(agent, p, step.get("plan"))]
        elif action == "complete":
            output = step.get("output")
            agent.complete(_summary(p) if output is None else output)
            raise _Finished
        elif action == "fail":
            agent.fail(step.get("error") or "failed")
            raise _Finished
        return True

    def _tool(self, held: _Held, step: Step) -> bool:
        agent, p = held.agent, held.progress
        name: Any = step.get("tool")  # as written: hitl-core validates it
        gate = agent.request_tool(
            name, step.get("input"), safe=step.get("safe", False), key=f"{p.step}.tool"
        )
        if gate.status == "pending" and gate.request_id is not None:
            p.retry_after_plan = False
            p.waiting = [gate.request_id]
            return True
        if gate.source == "plan_not_approved" and not p.retry_after_plan:
            later = held.program.steps[p.step + 1 :]
            if not any(s.get("action") == "propose_plan" for s in later):
                # No plan is coming: propose one now, then call the tool again.
                p.retry_after_plan = True
                p.plan = f"1. Call {name}\n2. Report the result"
                p.waiting = [_propose(agent, p, p.plan)]
                return False
        p.retry_after_plan = False
        p.notes.append(_gate_note(str(name), gate))
        return True


def _propose(agent: hitl_core.Agent, p: Progress, text: Any) -> str:
    """Propose a plan under the next plan key; return its request id."""
    request = agent.propose_plan(text, key=f"plan.{p.proposals}")
    p.proposals += 1
    return request.request_id


def _gate_note(name: str, gate: hitl_core.ToolGate) -> str:
    """What the agent notes about a tool call decided at once, or about a request found
    already decided when a move is replayed (noted as `_learn` notes a decision)."""
    why = f": {gate.reason}" if gate.reason and gate.request_id is not None else ""
    return f"{name}: {gate.status} ({gate.source}{why})"


def _learn(p: Progress, found: PermissionRequest) -> None:
    """Read a decision the agent waited for."""
    if found.source == "run_ended":
        raise _Finished
    if found.kind == "plan":
        if found.decision == "approve":
            p.notes.append(f"plan approved (revision {found.tool_input.get('revision')})")
            p.replan = None
        else:
            p.revisions += 1
            p.replan = found.reason or "revise"
        return
    if found.kind == "question":
        answers = found.answers or {}
        p.notes.append("; ".join(f"{q} -> {a}" for q, a in answers.items()))
        return
    why = f": {found.reason}" if found.reason else ""
    p.notes.append(f"{found.tool_name}: {found.status.value} ({found.source}{why})")


def _pending(hitl: hitl_core.Hitl, run_id: str) -> list[PermissionRequest]:
    return [r for r in hitl.runs.permissions(run_id) if r.is_pending]


def _summary(p: Progress) -> str:
    return "Done. " + ("; ".join(n for n in p.notes if n) or "nothing to report") + "."
