"""A worker host that survives crashes: it takes runs that need a worker, holds each with
a lease while its agent works, waits for people without polling, and keeps the agent's
progress in the run's checkpoint. Start several on one store; kill any of them at any
moment; the others finish every run, and no tool is requested twice.

    python docs/examples/worker_host.py sqlite:///hitl.db --worker a

The agent is a fixed script (STEPS): a safe read, then two tool calls a person must
approve. Its "side effect" for each step is written into the checkpoint together with
the step's number, in one transaction, so each happens exactly once. (A real tool's
side effect happens outside the store: make it idempotent, or record it the same way.)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import hitl_core
from hitl_core import ConflictError, Lease

STEPS: list[tuple[str, dict[str, Any], bool]] = [
    ("files.read", {"path": "report.txt"}, True),  # (tool, arguments, safe)
    ("deploy.prod", {"version": 7}, False),
    ("slack.post", {"channel": "#eng", "text": "deployed"}, False),
]


class Host:
    """One worker process: `serve()` takes claimable runs one after another."""

    def __init__(self, hitl: hitl_core.Hitl, worker: str, lease_seconds: float) -> None:
        self.hitl = hitl
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.kill_at: str | None = None  # tests: die here (SIGKILL), once

    def point(self, name: str) -> None:
        """A point of the loop; a test can make the process die right here."""
        if name == self.kill_at:
            print(f"killed at {name}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def serve(self, *, until_done: bool = False) -> None:
        """Work until stopped; with `until_done`, until no run is active any more."""
        seen = self.hitl.events.last_id()
        while True:
            for run in self.hitl.runs.claimable(limit=10):
                try:
                    self.work_on(run.id)
                except ConflictError as error:  # another worker was faster, or took over
                    if error.code not in ("run_leased", "lease_lost", "run_not_active"):
                        raise
            if until_done and not self.active():
                return
            # nothing to do: sleep until something happens (or a lease may have lapsed)
            events = self.hitl.events.wait(after=seen, timeout=self.lease_seconds)
            if events:
                seen = events[-1].id

    def active(self) -> bool:
        runs = self.hitl.runs
        return bool(
            runs.list(status="running", limit=1).data
            or runs.list(status="awaiting_approval", limit=1).data
        )

    def work_on(self, run_id: str) -> None:
        """Play one run's agent from its checkpoint, under a lease."""
        lease = self.hitl.runs.claim(run_id, worker=self.worker, seconds=self.lease_seconds)
        agent = self.hitl.agent(run_id, lease=lease)
        state = agent.run().checkpoint or {"step": 0, "done": []}
        while state["step"] < len(STEPS):
            tool, arguments, safe = STEPS[state["step"]]
            self.point("before_request")
            gate = agent.request_tool(tool, arguments, safe=safe, key=f"step-{state['step']}")
            outcome = gate.status
            if gate.status == "pending":
                assert gate.request_id is not None
                decided = self.wait(agent, lease, gate.request_id)
                if decided is None:
                    return  # suspended: the lease is released, another worker resumes it
                outcome = decided
            self.point("decided")
            state = {"step": state["step"] + 1, "done": [*state["done"], f"{tool}:{outcome}"]}
            agent.save_checkpoint(state)  # the step and its effect, in one transaction
        self.point("before_complete")
        agent.complete({"done": state["done"]})

    def wait(self, agent: hitl_core.Agent, lease: Lease, request_id: str) -> str | None:
        """Wait for a person's decision, renewing the lease meanwhile: the decision's
        status, or None when the run was suspended (its worker is then freed)."""
        while True:
            self.point("waiting")
            request = agent.wait(request_id, timeout=self.lease_seconds / 3)
            if not request.is_pending:
                return request.status.value
            if agent.run().suspended:
                self.hitl.runs.release(lease)
                return None
            lease = self.hitl.runs.renew(lease, seconds=self.lease_seconds)


def main(argv: list[str] | None = None) -> int:
    """Run a worker host on the store the first argument names."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--worker", default=f"host-{os.getpid()}")
    parser.add_argument("--lease", type=float, default=30.0, help="lease seconds")
    parser.add_argument("--until-done", action="store_true", help="stop when no run is active")
    parser.add_argument("--kill-at", help=argparse.SUPPRESS)  # tests: die at this point
    args = parser.parse_args(argv)
    with hitl_core.connect(args.url) as hitl:
        host = Host(hitl, args.worker, args.lease)
        host.kill_at = args.kill_at
        host.serve(until_done=args.until_done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
