"""Lint and strict typing are part of the suite: ruff and mypy --strict must be clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None and not (Path(sys.executable).parent / name).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", name]


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [*_tool("ruff"), "check", "hitl_core", "adapters", "tests", "docs", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run([*_tool("mypy"), "--strict"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_adapters_import_only_public_names_of_hitl_core() -> None:
    """Adapters (and the docs' example adapters) use `hitl_core`, `hitl_core.adapter`,
    `hitl_core.aio`, `hitl_core.webhooks` and `hitl_core.testing`, never a private module:
    the public port is what a third-party store gets, so ours must make do with it."""
    import ast

    offenders = []
    for path in [*(ROOT / "adapters").rglob("*.py"), *(ROOT / "docs" / "examples").glob("*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "hitl_core" and any(part.startswith("_") for part in parts[1:]):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not offenders, "private hitl_core imports:\n" + "\n".join(offenders)


def test_importing_the_test_support_needs_no_pytest() -> None:
    """`hitl_core.testing` (its helpers, strategies need hypothesis) loads without pytest;
    only the contract suite needs it."""
    code = (
        "import sys; sys.modules['pytest'] = None; "
        "import hitl_core.testing, hitl_core.testing.helpers, hitl_core.testing.bridge; "
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
    code = "import sys; sys.modules['pytest'] = None; import hitl_core.testing.contract"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "pytest" in result.stderr
