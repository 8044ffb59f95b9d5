"""The contract suite catches broken stores: copies of the adapter guide's example store
(docs/examples/jsonfile_store.py), each with one seeded defect, run the shipped suite as
an outside package would, and each fails it. The healthy store passes (the whole suite
runs on it in tests/test_adapter_example.py; here the same harness runs its port tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"

HARNESS = """
import contextlib
import sys

import pytest

sys.path.insert(0, {examples!r})
import jsonfile_store
from jsonfile_store import JsonFileStore, JsonFileTransaction

import hitl_core
from hitl_core.adapter import ConflictError
from hitl_core.testing.contract import HitlContract

{defect}


class TestSeeded(HitlContract):
    @pytest.fixture
    def store_url(self, tmp_path):
        return str(tmp_path / "state.json")

    @pytest.fixture
    def store_factory(self, store_url):
        return lambda: JsonFileStore(store_url)

    def open_engine(self, store, **options):
        if isinstance(store, str):
            store = JsonFileStore(store)
        return hitl_core.connect(store, **options)
"""

DEFECTS = {
    # a transaction that raises still commits what it wrote before the error
    "no rollback": """
_transaction = JsonFileStore.transaction

@contextlib.contextmanager
def transaction(self, *, write):
    failure = None
    with _transaction(self, write=write) as tx:
        try:
            yield tx
        except BaseException as error:
            failure = error
    if failure is not None:
        raise failure

JsonFileStore.transaction = transaction
""",
    # update_run replaces the run whatever version is stored
    "no version check": """
def update_run(self, run):
    self._write("runs")[run.id] = run

JsonFileTransaction.update_run = update_run
""",
    # deleting an endpoint leaves its deliveries behind
    "no cascade on endpoints": """
def delete_endpoint(self, endpoint_id):
    del self._write("endpoints")[endpoint_id]

JsonFileTransaction.delete_endpoint = delete_endpoint
""",
    # deleting runs leaves their events behind
    "no cascade on runs": """
def delete_runs(self, run_ids):
    for run_id in run_ids:
        del self._write("runs")[run_id]

JsonFileTransaction.delete_runs = delete_runs
""",
    # runs listed newest first
    "wrong order": """
_list_runs = JsonFileTransaction.list_runs

def list_runs(self, *, user_id, status, limit, starting_after):
    found = _list_runs(self, user_id=user_id, status=status, limit=1000, starting_after=None)
    if found is None:
        return None
    runs = list(reversed(found[0]))
    if starting_after is not None:
        ids = [run.id for run in runs]
        if starting_after not in ids:
            return None
        runs = runs[ids.index(starting_after) + 1 :]
    return runs[:limit], len(runs) > limit

JsonFileTransaction.list_runs = list_runs
""",
    # equal deadlines suspended in id order instead of creation order
    "wrong tie order": """
_due_runs = JsonFileTransaction.due_runs

def due_runs(self, now, limit):
    return sorted(_due_runs(self, now, 1000), key=lambda run: (run.deadline, run.id))[:limit]

JsonFileTransaction.due_runs = due_runs
""",
}


def _run(tmp_path: Path, defect: str, *args: str) -> subprocess.CompletedProcess[str]:
    module = tmp_path / "test_seeded.py"
    module.write_text(HARNESS.format(examples=str(EXAMPLES), defect=textwrap.dedent(defect)))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_the_contract_suite_fails_a_store_with_a_seeded_defect(tmp_path: Path, name: str) -> None:
    result = _run(tmp_path, DEFECTS[name], "-x")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert failed, result.stdout[-3000:]


def test_the_harness_passes_the_healthy_store(tmp_path: Path) -> None:
    result = _run(tmp_path, "", "-k", "port_ or two_engines or reopening or prune or runs_list")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
