"""Every ```python block in README.md and docs/**/*.md runs, so no example can rot.

How a page runs:

- Its python blocks run in order, in one namespace per page: a block may use what an
  earlier block of the same page defined.
- The working directory is a fresh, empty temporary directory (so `sqlite:///hitl.db`
  makes a file there, not in the repository), and docs/examples is on sys.path (so a page
  can import the example modules).
- A block fails the test with its page and line when it raises. Nothing is skipped: a
  block that must not run is not a python block (use ```text, ```sh, ```toml, ...), and
  other names for Python (```py, ```pycon, ...) are refused, so none slips through.

A block that needs a resource says so in an HTML comment on the line just before its
fence (invisible on GitHub). The conventions:

- `<!-- doc-test: write FILE -->`: the block (of any language) is written to FILE in the
  working directory instead of being run. A python block is still compiled, and a later
  python block of the page must name FILE (that is, run it).
- `<!-- doc-test: entry-point GROUP NAME = MODULE:ATTR -->`: from this block on, the page
  sees that entry point, as if a distribution declaring it were installed (MODULE is
  looked up in docs/examples). The block after the comment runs as usual.
- `<!-- doc-test: live-server -->`: the block talks to a running `hitl serve`. The page
  gets one (the real command on a free port, tests/conftest.py's LiveServer), `KEY` is
  bound to its API key, and the block's `http://127.0.0.1:8000` (the documented default
  address) is replaced by the server's. Needs the `serve` extra and the hosted SDK; without
  them the page is reported as skipped, with the reason.

- `<!-- doc-test: postgres -->`: the block talks to PostgreSQL. The documented URL
  `postgresql://hitl:secret@db.internal:5432/agents?schema=hitl_example` in it becomes
  the test server (tests/postgres_server.py) with a fresh schema, dropped after the page.
  Without a server the page is reported as skipped, with the reason (under `CI`, failed).

Any other `doc-test:` comment is an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from register import entry_point

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
DEFAULT_ADDRESS = "http://127.0.0.1:8000"
POSTGRES_URL = "postgresql://hitl:secret@db.internal:5432/agents?schema=hitl_example"
PYTHON_ALIASES = {"py", "python3", "py3", "pycon", "ipython", "pyi"}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<text>.*?)\s*-->\s*$")


@attrs.frozen
class Block:
    """One fenced block: its language, its text, the line its fence opens on, and the
    doc-test directive just before it (or None)."""

    language: str
    code: str
    line: int
    directive: str | None


def blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order."""
    found: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].strip().split() or [""])[0].lower()
        directive = None
        if index > 0 and (match := _DIRECTIVE.match(lines[index - 1])):
            directive = match["text"]
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = lines[end].strip()
            if closing.startswith(fence[0] * len(fence)) and set(closing) == {fence[0]}:
                break
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end])
            end += 1
        found.append(Block(language, "\n".join(body) + "\n", index + 1, directive))
        index = end + 1
    return found


def test_the_block_reader() -> None:
    text = (
        "intro\n<!-- doc-test: write a.py -->\n```python\nx = 1\n```\n\n"
        "````md\n```python\nnot a block\n```\n````\n~~~toml\nk = 1\n~~~\n"
    )
    assert blocks(text) == [
        Block("python", "x = 1\n", 3, "write a.py"),
        Block("md", "```python\nnot a block\n```\n", 7, None),
        Block("toml", "k = 1\n", 12, None),
    ]


def pages_with_python() -> list[Path]:
    return [page for page in PAGES if any(b.language == "python" for b in blocks(page.read_text()))]


class Page:
    """The running state of one page: its namespace, resources and files to be run."""

    def __init__(self, path: Path, stack: contextlib.ExitStack) -> None:
        self.path = path
        self.name = str(path.relative_to(ROOT))
        self.stack = stack
        self.namespace: dict[str, Any] = {"__name__": "doc_example"}
        self.server: Any = None
        self.postgres: str | None = None
        self.unrun: dict[str, int] = {}  # written python files no later block has named

    def where(self, block: Block) -> str:
        return f"{self.name}:{block.line}"

    def run(self, block: Block) -> None:
        directive = block.directive or ""
        verb, _, argument = directive.partition(" ")
        code = block.code
        if verb == "write":
            self.write(block, argument.strip())
            return
        if verb == "entry-point":
            group, _, spec = argument.strip().partition(" ")
            self.stack.enter_context(entry_point(group, spec.strip(), import_from=EXAMPLES))
        elif verb == "postgres":
            code = code.replace(POSTGRES_URL, self.postgres_url())
        elif verb == "live-server":
            code = code.replace(DEFAULT_ADDRESS, self.live_server().url.split("/api/")[0])
            self.namespace["KEY"] = self.server.key
        elif directive:
            pytest.fail(f"{self.where(block)}: unknown directive 'doc-test: {directive}'")
        if block.language != "python":
            return
        for name in list(self.unrun):
            if name in code:
                del self.unrun[name]
        try:
            exec(compile(code, self.where(block), "exec"), self.namespace)
        except Exception as error:
            raise AssertionError(
                f"the example at {self.where(block)} raised {type(error).__name__}: {error} "
                "(a block that needs a file, an entry point or a live server says so in a "
                "doc-test comment: see tests/test_doc_examples.py)"
            ) from error

    def write(self, block: Block, name: str) -> None:
        if not name:
            pytest.fail(f"{self.where(block)}: 'doc-test: write' needs a file name")
        if block.language == "python":
            compile(block.code, self.where(block), "exec")
            self.unrun[name] = block.line
        Path(name).write_text(block.code)

    def postgres_url(self) -> str:
        if self.postgres is None:
            from postgres_server import drop_schema, new_schema_name, server_url, with_options

            base, schema = server_url(), new_schema_name()
            self.stack.callback(drop_schema, base, schema)
            self.postgres = with_options(base, schema=schema)
        return self.postgres

    def live_server(self) -> Any:
        if self.server is None:
            from conftest import LiveServer, needs_serve_stack

            needs_serve_stack()
            self.server = LiveServer(Path("serve.db"))
            self.stack.callback(self.server.stop)
        return self.server


@contextlib.contextmanager
def page_directory(tmp_path: Path) -> Iterator[None]:
    """Run in `tmp_path` with docs/examples importable; restore both afterwards."""
    before, modules = os.getcwd(), set(sys.modules)
    os.chdir(tmp_path)
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield
    finally:
        os.chdir(before)
        sys.path.remove(str(EXAMPLES))
        for name in set(sys.modules) - modules:
            module = sys.modules[name]
            if str(EXAMPLES) in str(getattr(module, "__file__", "") or ""):
                del sys.modules[name]  # the next page imports the example afresh


def _page(path: Path) -> Any:
    """A page to run, marked `postgres` when it talks to PostgreSQL."""
    needs = "doc-test: postgres" in path.read_text()
    return pytest.param(path, marks=[pytest.mark.postgres] if needs else [])


@pytest.mark.parametrize(
    "path", [_page(p) for p in pages_with_python()], ids=lambda p: str(p.relative_to(ROOT))
)
def test_page_examples_run(path: Path, tmp_path: Path) -> None:
    with page_directory(tmp_path), contextlib.ExitStack() as stack:
        page = Page(path, stack)
        for block in blocks(path.read_text()):
            assert block.language not in PYTHON_ALIASES, (
                f"{page.where(block)}: mark Python blocks ```python, so that they run"
            )
            if block.language == "python" or block.directive:
                page.run(block)
        assert not page.unrun, (
            f"{page.name}: written python files that no later block runs: {page.unrun}"
        )


def test_every_page_with_python_is_run() -> None:
    """The pages this module runs include the README and the guides."""
    names = {str(p.relative_to(ROOT)) for p in pages_with_python()}
    assert {"README.md", "docs/webhooks.md", "docs/sqlite-store.md"} <= names
