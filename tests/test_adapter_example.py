"""The adapter guide's worked example (docs/examples/jsonfile_store.py) is a real store:
the whole shipped contract suite passes on it, and so do the parts of the port the suite
does not reach (webhook outbox tables, reopening, other processes, foreign files).

The example is a module, not an installed distribution, so this test registers its
`jsonfile` scheme for this process only (tests/register.py); a real package declares
the entry point in its pyproject.toml instead (docs/adapters.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hitl_webhooks import Dispatcher, Response
from register import entry_point

import hitl_core
from hitl_core import ManualClock, StoreError, ValidationError
from hitl_core.testing.contract import HitlContract

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
SPEC = "jsonfile = jsonfile_store:open_store"


@pytest.fixture(scope="module", autouse=True)
def jsonfile_scheme() -> Iterator[None]:
    with entry_point("hitl_core.stores", SPEC, import_from=EXAMPLES):
        yield
    sys.modules.pop("jsonfile_store", None)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"jsonfile:///{tmp_path / 'state.json'}"


class TestJsonFileStore(HitlContract):
    """The shipped contract suite, exactly as an outside package runs it."""

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"jsonfile:///{tmp_path / 'state.json'}"


def test_the_store_is_found_by_its_scheme(url: str) -> None:
    with hitl_core.connect(url) as hitl:
        assert repr(hitl).startswith("<Hitl store=JsonFileStore")
    with pytest.raises(ValidationError) as caught:
        hitl_core.connect("jsonfile:///")
    assert caught.value.code == "invalid_url"


def test_everything_comes_back_after_reopening(url: str) -> None:
    clock = ManualClock(start=100.0)
    with hitl_core.connect(url, clock=clock) as hitl:
        run = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="u", metadata={"a": [1]}
        )
        gate = hitl.agent(run.id).request_tool("gmail.send", {"to": "x"})
        hitl.permissions.create(tool="slack.*", user_id="u")
        task = hitl.tasks.create(name="weekly", human_in_the_loop=True)
        before = (
            hitl.runs.get(run.id),
            hitl.runs.permissions(run.id),
            hitl.permissions.list(user_id="u").data,
            hitl.tasks.get(task.id),
            hitl.events.list(),
        )
    clock.advance(75)  # the deadline keeps counting while the file is closed
    with hitl_core.connect(url, clock=clock) as hitl:
        assert hitl.runs.permissions(run.id) == before[1]
        assert hitl.permissions.list(user_id="u").data == before[2]
        assert hitl.tasks.get(task.id) == before[3]
        assert hitl.runs.get(run.id).suspended is True
        assert hitl.events.list()[: len(before[4])] == before[4]
        assert hitl.runs.approve(run.id, request_id=gate.request_id).resumed is True


def test_two_engines_and_another_process_share_the_file(url: str) -> None:
    with hitl_core.connect(url) as first, hitl_core.connect(url) as second:
        run = first.runs.create(human_in_the_loop=True, permission_mode="approval")
        gate = second.agent(run.id).request_tool("crm.update")
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, hitl_core\n"
                "with hitl_core.connect(sys.argv[1]) as hitl:\n"
                "    hitl.runs.approve(sys.argv[2], request_id=sys.argv[3], actor='child')\n",
                url,
                run.id,
                str(gate.request_id),
            ],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.returncode == 0, child.stderr
        decided = first.agent(run.id).result(str(gate.request_id))
        assert (decided.status, decided.actor) == ("allowed", "child")


def test_a_refused_call_leaves_the_file_as_it_was(url: str, tmp_path: Path) -> None:
    with hitl_core.connect(url) as hitl:
        run = hitl.runs.create()
        state = (tmp_path / "state.json").read_bytes()
        with pytest.raises(hitl_core.ConflictError):
            hitl.agent(run.id).ask([{"question": "?", "options": ["a", "b"]}])
        assert (tmp_path / "state.json").read_bytes() == state


def test_a_file_that_is_not_ours_is_refused_and_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "notes.json"
    other.write_text('{"todo": []}\n')
    with pytest.raises(StoreError) as caught:
        hitl_core.connect(f"jsonfile:///{other}")
    assert caught.value.code == "not_a_store"
    assert other.read_text() == '{"todo": []}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json"]
    with pytest.raises(StoreError) as caught:
        hitl_core.connect(f"jsonfile:///{tmp_path / 'missing' / 'state.json'}")
    assert caught.value.code == "store_unavailable"


def test_the_webhook_outbox_tables(url: str) -> None:
    """The contract suite does not touch the webhook part of the port; this does."""
    clock = ManualClock(start=0.0)
    answers = [Response(500), Response(200)]
    sent: list[str] = []

    def send(target: str, body: str, headers: dict[str, str], timeout: float) -> Response:
        sent.append(headers["Webhook-Id"])
        return answers.pop(0)

    with hitl_core.connect(url, clock=clock) as hitl:
        quiet = hitl.webhooks.create(url="http://127.0.0.1:9/a", events=[])
        endpoint = hitl.webhooks.create(url="http://127.0.0.1:9/b", events=["run.completed"])
        assert [e.id for e in hitl.webhooks.list().data] == [quiet.id, endpoint.id]
        run = hitl.runs.create()
        hitl.agent(run.id).complete()
        dispatcher = Dispatcher(hitl, send=send)
        (first,) = dispatcher.run_once()
        assert (first.status, first.attempts, first.next_retry_at) == ("pending", 1, 2.0)
        assert dispatcher.run_once() == []  # not due yet
        clock.advance(2)
        (second,) = dispatcher.run_once()
        assert (second.status, second.attempts, second.response_status_code) == (
            "delivered",
            2,
            200,
        )
        assert len(set(sent)) == 1  # the same Webhook-Id on every attempt
        log = hitl.webhooks.list_deliveries(endpoint.id)
        assert [d.status for d in log.data] == ["delivered"]
        assert hitl.webhooks.list_deliveries(endpoint.id, status="failed").data == []
        hitl.webhooks.delete(endpoint.id)
        assert [e.id for e in hitl.webhooks.list().data] == [quiet.id]
