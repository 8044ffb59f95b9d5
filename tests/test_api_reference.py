"""docs/api.md covers every public name, names nothing that does not exist, and shows
each call's parameters as the code has them.

An entry is a Markdown heading (or, for the store port, a table row) that starts with a
name in backticks, optionally followed by the call's parameters:

    #### `Runs.approve(run_id, *, request_id, decision="allow", ...)`
    | `Transaction.get_run(run_id)` | ... |

Names are `connect` and `Run` for hitl_core's own, `Runs.approve` for methods,
`webhooks.sign`, `contract.HitlContract`, `helpers.snapshot`, `strategies.configs` for
the submodules, and `hitl_webhooks.Dispatcher` and `hitl_cli.main` for the adapters."""

from __future__ import annotations

import enum
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import hitl_claude
import hitl_cli
import hitl_langgraph
import hitl_memory
import hitl_openai_agents
import hitl_postgres
import hitl_sqlite
import hitl_webhooks

import hitl_core
import hitl_core.adapter
import hitl_core.aio
from hitl_core import testing, webhooks
from hitl_core.testing import bridge, contract, helpers, strategies

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"

_HEADING = re.compile(r"^(#{2,5}) `([A-Za-z_][\w.]*)(\(.*\))?`", re.M)
_ROW = re.compile(r"^\| `([A-Za-z_]\w*\.[A-Za-z_]\w*)(\(.*?\))` \|", re.M)

# Submodules and adapters, by the prefix their entries carry.
MODULES: dict[str, ModuleType] = {
    "webhooks": webhooks,
    "adapter": hitl_core.adapter,
    "aio": hitl_core.aio,
    "bridge": bridge,
    "contract": contract,
    "helpers": helpers,
    "strategies": strategies,
    "hitl_webhooks": hitl_webhooks,
    "hitl_cli": hitl_cli,
    "hitl_memory": hitl_memory,
    "hitl_sqlite": hitl_sqlite,
    "hitl_postgres": hitl_postgres,
    "hitl_langgraph": hitl_langgraph,
    "hitl_openai_agents": hitl_openai_agents,
    "hitl_claude": hitl_claude,
}
# Public but not in an __all__: documented all the same.
EXTRA = {"webhooks.DEFAULT_EVENTS", "strategies.question"}
# Classes whose own public methods each need an entry.
METHODS_OF = {
    "Dispatcher": hitl_webhooks.Dispatcher,
    "HitlMiddleware": hitl_langgraph.HitlMiddleware,
    "HitlGate": hitl_openai_agents.HitlGate,
}


def entries() -> dict[str, str | None]:
    """Entry name -> the parameters shown ("(...)"), or None when none are shown."""
    text = API.read_text()
    found: dict[str, str | None] = {}
    for match in _HEADING.finditer(text):
        name, params = match.group(2), match.group(3)
        assert name not in found, f"docs/api.md has two entries for {name}"
        found[name] = params
    for match in _ROW.finditer(text):
        name, params = match.group(1), match.group(2)
        assert name not in found, f"docs/api.md has two entries for {name}"
        found[name] = params
    return found


def public_methods(cls: type) -> list[str]:
    return [
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(value)
    ]


def expected() -> dict[str, Any]:
    """Every name that needs an entry -> the object it names."""
    names: dict[str, Any] = {
        "hitl_core.webhooks": webhooks,
        "hitl_core.testing": testing,
        "hitl_core.adapter": hitl_core.adapter,
        "hitl_core.aio": hitl_core.aio,
    }
    for name in hitl_core.__all__:
        obj = getattr(hitl_core, name)
        names[name] = obj
        if inspect.isclass(obj) and not issubclass(obj, enum.Enum):
            for method in public_methods(obj):
                names[f"{name}.{method}"] = getattr(obj, method)
    for prefix, module in MODULES.items():
        for name in module.__all__:
            if module is hitl_core.adapter and name in hitl_core.__all__:
                continue  # the same object as hitl_core's, documented there
            names[f"{prefix}.{name}"] = getattr(module, name)
    for qualified in EXTRA:
        prefix, name = qualified.split(".")
        names[qualified] = getattr(MODULES[prefix], name)
    for owner, cls in METHODS_OF.items():
        for method in public_methods(cls):
            names[f"{owner}.{method}"] = getattr(cls, method)
    return names


def render(obj: Any) -> str:
    """A call's parameters as api.md writes them: no annotations, no `self`, double
    quotes, functions by name."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    parts: list[str] = []
    star = False
    for param in inspect.signature(target).parameters.values():
        if param.name == "self":
            continue
        if param.kind is param.VAR_POSITIONAL:
            parts.append(f"*{param.name}")
            star = True
            continue
        if param.kind is param.VAR_KEYWORD:
            parts.append(f"**{param.name}")
            continue
        if param.kind is param.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = param.name
        if param.default is not param.empty:
            default = param.default
            shown = default.__name__ if callable(default) else repr(default)
            text += "=" + shown.replace("'", '"')
        parts.append(text)
    return "(" + ", ".join(parts) + ")"


def test_every_public_name_has_an_entry() -> None:
    documented = entries()
    missing = sorted(set(expected()) - set(documented))
    assert not missing, f"docs/api.md has no entry for: {', '.join(missing)}"


def test_every_entry_names_something_public() -> None:
    known = expected()
    stale = sorted(set(entries()) - set(known))
    assert not stale, f"docs/api.md documents names that are not public: {', '.join(stale)}"


def test_parameters_shown_are_the_code_s() -> None:
    known = expected()
    wrong = []
    for name, params in entries().items():
        obj = known.get(name)
        if obj is None:
            continue
        callable_kind = inspect.isfunction(obj) or inspect.ismethod(obj)
        if params is None:
            assert not callable_kind, f"docs/api.md: {name} is a function; show its parameters"
            continue
        if render(obj) != params:
            wrong.append(f"{name}: docs {params}, code {render(obj)}")
    assert not wrong, "docs/api.md shows other parameters than the code:\n" + "\n".join(wrong)


def _section(text: str, name: str) -> str:
    """The text of an entry's heading down to the next heading of its level or above."""
    match = re.search(rf"^(#{{2,5}}) `{re.escape(name)}[`(]", text, re.M)
    assert match is not None, name
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{2,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def test_record_fields_and_properties_are_described() -> None:
    text = API.read_text()
    undocumented = []
    for name in hitl_core.__all__:
        cls = getattr(hitl_core, name)
        if not inspect.isclass(cls):
            continue
        section = _section(text, name)
        wanted = [f.alias for f in attrs.fields(cls)] if attrs.has(cls) else []
        wanted += [k for k, v in vars(cls).items() if isinstance(v, property) and k[0] != "_"]
        if issubclass(cls, enum.Enum):
            wanted += [member.name for member in cls]
        undocumented += [f"{name}.{attr}" for attr in wanted if f"`{attr}`" not in section]
    assert not undocumented, "docs/api.md does not describe: " + ", ".join(undocumented)


def test_the_reader_s_examples_of_entries() -> None:
    documented = entries()
    assert documented["Runs.approve"] == (
        '(run_id, *, request_id, decision="allow", remember=False, reason=None, actor=None)'
    )
    assert documented["Transaction.get_run"] == "(run_id)"
    assert documented["Run"] is None


ASYNC_TWINS = {
    hitl_core.aio.AsyncHitl: hitl_core.Hitl,
    hitl_core.aio.AsyncRuns: hitl_core.Runs,
    hitl_core.aio.AsyncAgent: hitl_core.Agent,
    hitl_core.aio.AsyncPermissions: hitl_core.Permissions,
    hitl_core.aio.AsyncTasks: hitl_core.Tasks,
    hitl_core.aio.AsyncEvents: hitl_core.Events,
    hitl_core.aio.AsyncWebhooks: hitl_core.Webhooks,
}


def test_the_asyncio_api_mirrors_the_synchronous_one() -> None:
    """SPEC 14: the same names, the same arguments, each a coroutine."""
    for async_cls, sync_cls in ASYNC_TWINS.items():
        sync_names = set(public_methods(sync_cls))
        async_names = set(public_methods(async_cls))
        assert async_names == sync_names, (async_cls.__name__, async_names ^ sync_names)
        for name in sync_names:
            method = getattr(async_cls, name)
            assert inspect.iscoroutinefunction(method), f"{async_cls.__name__}.{name}"
            assert render(method) == render(getattr(sync_cls, name)), (
                f"{async_cls.__name__}.{name}: {render(method)} != "
                f"{render(getattr(sync_cls, name))}"
            )
