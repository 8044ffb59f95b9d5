"""`hitl serve`: the hosted agent API's human-in-the-loop endpoints over HTTP on top of
hitl-core, with a simulated agent, so the hosted API's own SDK can drive runs locally.
Needs the `serve` extra (Starlette and uvicorn); see docs/serve.md."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from hitl_webhooks import Dispatcher

import hitl_core
from hitl_core import HitlError

from ._agent import LEASE_SECONDS, Worker, worker_name
from ._api import Api
from ._app import BODY_LIMIT, PREFIX, create_app
from ._http import http_protocol, listen, run_until_signalled
from ._program import (
    Program,
    Progress,
    checkpoint,
    default_program,
    initial_checkpoint,
    scenario_program,
)
from ._state import ServeState, state_path
from ._wire import WireIds

__all__ = [
    "BODY_LIMIT",
    "LEASE_SECONDS",
    "PREFIX",
    "Server",
    "create_app",
    "default_program",
    "http_protocol",
    "initial_checkpoint",
    "listen",
    "open_server",
    "run_until_signalled",
    "scenario_program",
    "serve",
]

log = logging.getLogger("hitl_server")


class Server:
    """An engine, its serve state, the agent worker and the ASGI app, opened together.
    `taken_over` is how many agents it claimed at start (runs that needed a server)."""

    def __init__(
        self,
        store_url: str | hitl_core.Store,
        *,
        api_key: str,
        scenario: Any = None,
        lease_seconds: float = LEASE_SECONDS,
        webhook_interval: float = 0.5,
        body_limit: int = BODY_LIMIT,
    ) -> None:
        self.store_url = store_url
        ids = WireIds()
        self.hitl = hitl_core.connect(store_url, ids=ids)
        try:
            self.state = ServeState(state_path(store_url))
            self.worker = Worker(self.hitl, name=worker_name(), lease_seconds=lease_seconds)
            _move_old_agents(self.hitl, self.state, self.worker)
            self.taken_over = self.worker.take_over()
        except BaseException:
            self.hitl.close()
            raise
        self.api = Api(self.hitl, self.state, ids, scenario)
        self.app = create_app(
            self.api,
            api_key=api_key,
            body_limit=body_limit,
            worker=self.worker,
            dispatcher=Dispatcher(self.hitl, timeout=5.0),
            webhook_interval=webhook_interval,
        )

    def close(self) -> None:
        """Stop the agents (their leases released), then close the serve state and the
        engine."""
        self.worker.stop()
        self.state.close()
        self.hitl.close()
        self.worker.join(timeout=5)


def _move_old_agents(hitl: hitl_core.Hitl, state: ServeState, worker: Worker) -> None:
    """Move the unfinished agents of an older server's side file into their runs'
    checkpoints (under a lease, so two servers starting at once move each once), then
    drop what that file kept that now lives in the store."""
    for old in state.old_agents():
        try:
            run = hitl.runs.get(old.run_id)
            if run.is_terminal or run.checkpoint is not None:
                continue
            lease = hitl.runs.claim(old.run_id, worker=worker.name, seconds=worker.lease_seconds)
        except HitlError:  # gone, ended, or held by a server that has it already
            continue
        try:
            agent = hitl.agent(old.run_id, lease=lease)
            if agent.run().checkpoint is None:
                program = Program(steps=old.steps, teammate_id=old.teammate_id)
                agent.save_checkpoint(checkpoint(program, Progress.from_json(old.progress)))
        except (HitlError, TypeError) as error:
            log.warning("run %s: the older server's agent was not moved: %s", old.run_id, error)
        finally:
            with contextlib.suppress(HitlError):
                hitl.runs.release(lease)
    state.forget_old()


@contextlib.contextmanager
def open_server(store_url: str | hitl_core.Store, **options: Any) -> Iterator[Server]:
    """`Server(store_url, **options)`, closed on exit."""
    server = Server(store_url, **options)
    try:
        yield server
    finally:
        server.close()


def serve(
    store_url: str | hitl_core.Store,
    *,
    shown: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str,
    scenario: Any = None,
    webhook_interval: float = 0.5,
    lease_seconds: float = LEASE_SECONDS,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the API on the store at `store_url` (a URL, or an open Store that `shown`
    names in the first line) on host:port until interrupted (SIGINT or SIGTERM). `port=0`
    picks a free port; `announce` receives the base URL once the socket is bound."""
    import uvicorn

    sock, address = listen(host, port)
    with open_server(
        store_url,
        api_key=api_key,
        scenario=scenario,
        webhook_interval=webhook_interval,
        lease_seconds=lease_seconds,
    ) as server:
        config = uvicorn.Config(
            server.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            server_header=False,
            http=http_protocol(),
        )
        (announce or _print)(
            f"hitl serve: http://{address}{PREFIX} (store {shown or store_url}"
            + (f"; {server.taken_over} unfinished agent(s) resumed" if server.taken_over else "")
            + ")"
        )
        run_until_signalled(uvicorn.Server(config), sock)


def _print(line: str) -> None:
    print(line, flush=True)
    sys.stdout.flush()
