"""The docs cannot drift: the lifecycle diagram is the rulebook's, the README's test
command is what CI runs, and the examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hitl_core._rules import mermaid

ROOT = Path(__file__).resolve().parent.parent


def test_lifecycle_diagram_is_drawn_from_the_rulebook() -> None:
    text = (ROOT / "docs" / "lifecycle.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert block is not None
    assert block.group(1) == mermaid(), (
        "docs/lifecycle.md is stale: paste the output of "
        "python -c 'from hitl_core._rules import mermaid; print(mermaid())'"
    )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert len(commands) == 2, "the quick start is exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == commands[1]


def test_readme_python_blocks_run() -> None:
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", readme, re.S):
        exec(compile(block, "README.md", "exec"), {})


def test_embedding_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "embed_host.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "approved; resumed: True" in out and "final: completed" in out


def test_webhook_approval_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "webhook_approval.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "agent: decision is allowed" in out
    assert "('run.awaiting_input', 'delivered'), ('run.completed', 'delivered')" in out


def _example(name: str) -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / name)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def test_langgraph_example_runs() -> None:
    out = _example("langgraph_agent.py")
    assert "tool result: invoice for 1200 EUR sent to ACME" in out
    assert "run status: completed" in out and "next run paused: False" in out


def test_openai_agents_example_runs() -> None:
    out = _example("openai_agents_host.py")
    assert "tool output: call_1 -> refunded 40 EUR on A-1" in out
    assert "tool output: call_2 -> over 500 EUR needs a manager: offer a voucher instead" in out


def test_claude_example_runs() -> None:
    out = _example("claude_agent.py")
    assert "the SDK answered: allow" in out and "decided by: alice" in out
