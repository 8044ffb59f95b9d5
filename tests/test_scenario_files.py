"""`hitl simulate` refuses every malformed scenario file the same way: exit 2, one line on
stderr naming the file and the key (with the step), and a JSON error object on stdout
under --json; never a traceback, never a run played from a file it should refuse."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hitl_cli import main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

APPROVAL = """\
[run]
human_in_the_loop = true
permission_mode = "approval"
"""


def simulate(path: Path, *flags: str) -> tuple[int, str, str]:
    """Run `hitl simulate` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["simulate", str(path), *flags])
    return code, out.getvalue(), err.getvalue()


def refused(path: Path, key: str | None, step: int | None = None) -> dict[str, Any]:
    """Assert both forms of the refusal; return the JSON error object."""
    code, out, err = simulate(path)
    assert code == 2, out + err
    assert out == ""
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    if key is not None:
        assert f": {key}: " in err, err
    code, out, err = simulate(path, "--json")
    assert code == 2, out + err
    assert out.count("\n") == 1, out
    error = json.loads(out)["error"]
    assert error["file"] == str(path) and error["key"] == key and error["step"] == step
    assert isinstance(error["message"], str) and error["message"]
    assert err.count("\n") == 1  # the one line is on stderr too
    return dict(error)


def write(tmp_path: Path, text: str | bytes, name: str = "s.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


def test_non_utf8_bytes_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b'[[steps]]\ntick = true\nas = "caf\xe9"\n')
    error = refused(path, None)
    assert error["line"] == 3
    assert "not UTF-8" in error["message"] and "byte 0xe9 at offset 31" in error["message"]


def test_a_utf8_bom_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, b'\xef\xbb\xbf{"steps": [{"tick": true}]}', "bom.json")
    assert simulate(path)[0] == 0


@pytest.mark.parametrize(
    ("at", "words"),
    [
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("-Infinity", "finite"),
        ("1e400", "finite"),
        ("1" + "0" * 400, "at most"),
        ("1e13", "at most"),
        ("-1", ">= 0"),
        ('"5"', "number"),
        ("true", "number"),
        ("null", "number"),
    ],
)
def test_bad_times_name_the_step_and_key(tmp_path: Path, at: str, words: str) -> None:
    text = '{"steps": [{"tick": true}, {"at": AT, "tick": true}]}'.replace("AT", at)
    path = write(tmp_path, text, "t.json")
    error = refused(path, "steps[1].at", 1)
    assert words in error["message"]


def test_times_never_go_back(tmp_path: Path) -> None:
    text = '{"steps": [{"at": 5, "tick": true}, {"at": 4, "tick": true}]}'
    path = write(tmp_path, text, "b.json")
    assert ">= 5" in refused(path, "steps[1].at", 1)["message"]


@pytest.mark.parametrize(
    ("step", "key"),
    [
        ('agent = "request_tool"', "tool"),  # missing
        ('agent = "request_tool"\ntool = 5', "tool"),
        ('agent = "request_tool"\ntool = "x"\ninput = "to=cfo"', "input"),
        ('agent = "request_tool"\ntool = "x"\nsafe = "yes"', "safe"),
        ('agent = "request_tool"\ntool = "x"\nas = ""', "as"),
        ('agent = "request_tool"\ntool = "x"\nas = 7', "as"),
        ('agent = "ask"', "questions"),
        ('agent = "ask"\nquestions = "Which?"', "questions"),
        ('agent = "propose_plan"', "plan"),
        ('agent = "propose_plan"\nplan = ["a", "b"]', "plan"),
        ('agent = "fail"\nerror = 5', "error"),
        ('agent = "wait"\nrequest = 5', "request"),
        ('agent = "wait"\nrequest = "nobody"', "request"),
        ('human = "answer"', "answers"),
        ('human = "answer"\nanswers = 5', "answers"),
        ('human = "answer"\nanswers = { q = "a" }\nactor = 5', "actor"),
        ('human = "approve"\nremember = 1', "remember"),
        ('human = "deny"\nreason = false', "reason"),
        ('human = "switch_mode"', "mode"),
        ('human = "switch_mode"\nmode = 2', "mode"),
        ('agent = "complete"\ntool = "x"', "tool"),  # a key this step kind does not take
        ('human = "cancel"\nremember = true', "remember"),
        ('agent = "complete"\ncolour = "red"', "colour"),
        ('agent = "complete"\nexpect_error = 409', "expect_error"),
        ('agent = "complete"\nexpect = 5', "expect"),
        ('agent = "complete"\nexpect = { source = "policy" }', "expect.source"),
        ('agent = "complete"\nexpect = { status = 5 }', "expect.status"),
        ('human = "approve"\nexpect = { resumed = "no" }', "expect.resumed"),
        ("agent = 5", "agent"),
        ('agent = "dance"', "agent"),
        ("tick = false", "tick"),
        ('tick = true\nexpect = { status = "running" }', "expect"),
        ('tick = true\nas = "t"', "as"),
    ],
)
def test_bad_step_keys_are_refused(tmp_path: Path, step: str, key: str) -> None:
    path = write(tmp_path, f'{APPROVAL}[[steps]]\nagent = "complete"\n[[steps]]\n{step}\n')
    refused(path, f"steps[1].{key}", 1)


def test_a_label_is_used_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""{APPROVAL}
        [[steps]]
        agent = "request_tool"
        tool = "a"
        as = "x"
        [[steps]]
        agent = "request_tool"
        tool = "b"
        as = "x"
        """,
    )
    assert "steps[0]" in refused(path, "steps[1].as", 1)["message"]


def test_a_request_names_an_earlier_label(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""{APPROVAL}
        [[steps]]
        human = "approve"
        request = "later"
        [[steps]]
        agent = "request_tool"
        tool = "a"
        as = "later"
        """,
    )
    refused(path, "steps[0].request", 0)


@pytest.mark.parametrize(
    ("expect", "key"),
    [
        ('requests = { y = "allowed" }', "expect.requests.y"),
        ("requests = { x = 5 }", "expect.requests.x"),
        ('requests = "x"', "expect.requests"),
        ("status = 5", "expect.status"),
        ('suspended = "no"', "expect.suspended"),
        ('events = "run.started"', "expect.events"),
        ("events = [1]", "expect.events"),
        ("error = 422", "expect.error"),
        ("permission_mode = false", "expect.permission_mode"),
        ("colour = 1", "expect.colour"),
    ],
)
def test_bad_final_expectations_are_refused(tmp_path: Path, expect: str, key: str) -> None:
    path = write(
        tmp_path,
        f'{APPROVAL}[[steps]]\nagent = "request_tool"\ntool = "a"\nas = "x"\n[expect]\n{expect}\n',
    )
    refused(path, key)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[]", None),
        ('{"name": 5, "steps": [{"tick": true}]}', "name"),
        ('{"run": [], "steps": [{"tick": true}]}', "run"),
        ('{"run": {"colour": 1}, "steps": [{"tick": true}]}', "run.colour"),
        ('{"steps": []}', "steps"),
        ('{"steps": {"tick": true}}', "steps"),
        ('{"steps": [5]}', "steps[0]"),
        ('{"steps": [{"at": 1}]}', "steps[0]"),
        ('{"steps": [{"tick": true, "agent": "complete"}]}', "steps[0]"),
        ('{"policies": {}, "steps": [{"tick": true}]}', "policies"),
        ('{"policies": [{}], "steps": [{"tick": true}]}', "policies[0].tool"),
        ('{"policies": [{"tool": 5}], "steps": [{"tick": true}]}', "policies[0].tool"),
        (
            '{"policies": [{"tool": "x", "user_id": 5}], "steps": [{"tick": true}]}',
            "policies[0].user_id",
        ),
        ('{"steps": [{"tick": true, "tick": true}]}', "steps[0].tick"),
        ('{"run": {"metadata": {"x": NaN}}, "steps": [{"tick": true}]}', "run.metadata.x"),
        ('{"steps": [{"tick": true}], "expect": {"events": [Infinity]}}', "expect.events[0]"),
        ('{"steps": [{"tick": true, "line\\nbreak": 1}]}', "steps[0]['line\\nbreak']"),
        ('{"steps": [{"tick": true, "": 1}]}', "steps[0]['']"),
    ],
)
def test_bad_documents_are_refused(tmp_path: Path, text: str, key: str | None) -> None:
    refused(write(tmp_path, text, "d.json"), key, 0 if key and key.startswith("steps[0]") else None)


def test_a_deeply_nested_file_is_refused(tmp_path: Path) -> None:
    deep = "[" * 5000 + "]" * 5000
    refused(write(tmp_path, '{"steps": [{"tick": true}], "name": ' + deep + "}", "deep.json"), None)
    nested = '{"steps": [{"agent": "complete", "output": ' + "[" * 150 + "]" * 150 + "}]}"
    refused(write(tmp_path, nested, "nested.json"), "steps[0].output", 0)


def test_a_refused_run_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f'{APPROVAL}input_timeout = -1\n[[steps]]\nagent = "complete"\n')
    assert "invalid_config" in refused(path, "run")["message"]
    path = write(tmp_path, '[[policies]]\ntool = ""\n[[steps]]\ntick = true\n', "p.toml")
    assert "invalid_request" in refused(path, "policies[0]")["message"]


def test_a_step_with_nothing_to_act_on_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f'{APPROVAL}[[steps]]\nhuman = "approve"\n')
    refused(path, "steps[0]", 0)
    path = write(
        tmp_path,
        f"""{APPROVAL}
        [[policies]]
        tool = "a"
        [[steps]]
        agent = "request_tool"
        tool = "a"
        as = "x"
        [[steps]]
        agent = "wait"
        request = "x"
        """,
    )
    assert "opened no request" in refused(path, "steps[1].request", 1)["message"]


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    refused(tmp_path / "missing.toml", None)
    refused(tmp_path, None)  # a directory
    broken = write(tmp_path, '{\n  "steps": [\n}\n', "broken.json")
    assert refused(broken, None)["line"] == 3


def test_engine_refusals_of_payload_values_stay_outcomes(tmp_path: Path) -> None:
    """The scenario format checks its own keys; what the engine validates (an empty tool
    name, a question's shape) is played, so a scenario can expect the refusal."""
    path = write(
        tmp_path,
        f"""{APPROVAL}
        [[steps]]
        agent = "request_tool"
        tool = ""
        expect_error = "invalid_request"
        [[steps]]
        agent = "ask"
        questions = [{{ question = "Only one option?", header = "", options = ["a"] }}]
        expect_error = "invalid_request"
        [[steps]]
        agent = "complete"
        """,
    )
    code, out, err = simulate(path, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["final"]["status"] == "completed"


# -- generated malformed documents ----------------------------------------------------------

VALID: dict[str, Any] = {
    "name": "generated",
    "run": {"human_in_the_loop": True, "permission_mode": "approval", "input_timeout": 30},
    "policies": [{"tool": "slack.*"}],
    "steps": [
        {"at": 0, "agent": "request_tool", "tool": "gmail.send", "input": {"to": "x"}, "as": "e"},
        {
            "at": 1,
            "agent": "ask",
            "as": "q",
            "questions": [{"question": "Which?", "header": "", "options": ["a", "b"]}],
        },
        {"at": 40, "tick": True},
        {"at": 41, "human": "approve", "request": "e", "remember": True, "reason": "ok"},
        {"at": 42, "human": "answer", "answers": {"Which?": "a"}, "expect": {"resumed": True}},
        {"at": 43, "agent": "wait", "request": "e", "expect": {"status": "allowed"}},
        {"at": 44, "human": "switch_mode", "mode": "plan"},
        {"at": 45, "agent": "propose_plan", "plan": "1. go", "as": "p"},
        {"at": 46, "human": "answer", "answers": "Approve"},
        {"at": 47, "agent": "complete", "output": {"done": 1}},
    ],
    "expect": {"status": "completed", "requests": {"e": "allowed", "q": "answered"}},
}

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "e", "q", "p", "approve", "request_tool", "Approve", "pending"])
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


NEW_KEYS = ["at", "as", "tool", "expect", "request", "x", "a.b", "line\nbreak"]


@st.composite
def malformed(draw: st.DrawFn) -> Any:
    """The valid scenario with a few random edits: a value replaced, a key removed or added."""
    document = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        if not path:
            document = draw(JSON_VALUES)
            continue
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(NEW_KEYS))] = draw(JSON_VALUES)
    return document


def test_the_valid_document_is_valid() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "valid.json"
        path.write_text(json.dumps(VALID))
        code, out, err = simulate(path, "--json")
        assert (code, err) == (0, ""), err
        assert json.loads(out)["passed"] is True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=malformed())
def test_generated_malformed_documents_are_refused_or_played(document: Any) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "generated.json"
        path.write_text(json.dumps(document))  # NaN and Infinity as Python writes them
        code, out, err = simulate(path, "--json")
    result = json.loads(out)  # never a traceback: main() returned, and printed JSON
    assert out.count("\n") == 1
    if code == 2:
        assert result["error"]["file"] == str(path)
        assert err.startswith(f"error: {path}: ") and err.count("\n") == 1
    else:
        assert code in (0, 1), (code, out, err)
        assert result["passed"] is (code == 0)
        assert all(math.isfinite(entry["t"]) for entry in result["timeline"])
