"""A webhook-driven approval front end: register an endpoint for run.awaiting_input,
receive the signed event, list the run's pending requests, approve or answer them.
Runs as written (everything on 127.0.0.1, finishes in about a second):

    python docs/examples/webhook_approval.py
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

from hitl_webhooks import Dispatcher

import hitl_core
from hitl_core.webhooks import verify_signature


def serve_front_end(hitl: hitl_core.Hitl, secret: list[str]) -> http.server.HTTPServer:
    """The approval front end: a tiny HTTP server that acts on run.awaiting_input."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if not verify_signature(body, dict(self.headers), secret[0], tolerance_seconds=300):
                self.send_response(401)
                self.end_headers()
                return
            event = json.loads(body)
            self.send_response(204)  # acknowledge first; decide right after
            self.end_headers()
            if event["event"] == "run.awaiting_input":
                decide(hitl, event["run_id"])

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def decide(hitl: hitl_core.Hitl, run_id: str) -> None:
    """What a person would do in the UI: look at every pending request and decide."""
    for request in hitl.runs.permissions(run_id):
        if request.status != "pending":
            continue
        if request.kind == "tool":
            print(f"  person: allow {request.tool_name}({request.tool_input})")
            hitl.runs.approve(run_id, request_id=request.request_id, actor="alice")
        else:
            first = request.questions[0]
            label = first["options"][0]["label"]
            print(f"  person: answer {first['question']!r} with {label!r}")
            hitl.runs.answer(
                run_id, request_id=request.request_id, answers={first["question"]: label}
            )


def main() -> None:
    with hitl_core.connect("memory://") as hitl:
        secret: list[str] = []
        front_end = serve_front_end(hitl, secret)
        url = f"http://127.0.0.1:{front_end.server_address[1]}/webhooks/hitl"
        endpoint = hitl.webhooks.create(url=url, events=["run.awaiting_input", "run.completed"])
        secret.append(endpoint.secret)  # shown whole only now: keep it safe
        dispatcher = Dispatcher(hitl, timeout=5.0)

        run = hitl.runs.create(human_in_the_loop=True, permission_mode="approval")
        agent = hitl.agent(run.id)
        gate = agent.request_tool("crm.update", {"account": 42, "stage": "won"})
        print("agent: waiting for approval of crm.update")
        assert gate.request_id is not None
        for _ in range(100):  # the host's wait loop; the dispatcher runs alongside
            dispatcher.run_once()
            if agent.result(gate.request_id).status != "pending":
                break
            threading.Event().wait(0.01)
        print("agent: decision is", agent.result(gate.request_id).status)
        agent.complete()
        dispatcher.run_once()
        log = hitl.webhooks.list_deliveries(endpoint.id).data
        print("deliveries:", [(d.event_type, d.status) for d in log])
        front_end.shutdown()


if __name__ == "__main__":
    main()
