"""The before/after table of docs/benchmarks.md, from one session: hitl-core's numbers
measured on an older tree (`--before DIR`, a checkout of the commit to compare with) just
before and just after the full benchmark of this tree, so that both see the same
machine; the peers and floors come from the full run.

    git archive <commit> | tar -x -C /tmp/before
    python bench/before_after.py --before /tmp/before [--quick] [--json PATH]

The older tree is imported in place of this one (PYTHONPATH), with this benchmark code."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUN = HERE / "run.py"
HITL = ("hitl-core memory://", "hitl-core sqlite FULL", "hitl-core sqlite NORMAL")


def bench(args: list[str], tree: Path | None, out: Path) -> dict[str, Any]:
    """Run bench/run.py (on `tree` instead of this one when given); its JSON results."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "adapters")])
    subprocess.run(
        [sys.executable, str(RUN), *args, "--json", str(out)],
        check=True,
        env=env,
        cwd=tree or HERE.parent,
        stdout=subprocess.DEVNULL,
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def combine(before: list[dict[str, Any]], after: dict[str, Any]) -> dict[str, Any]:
    """Before (the median of its runs) and after, side by side, with the ratios to the
    peers and floors of the after run."""
    rates = after["cycles_per_second"]

    def before_of(pick: Any) -> float:
        return statistics.median(pick(run) for run in before)

    table: dict[str, Any] = {"cycles_per_second": {}, "ratios": {}, "other": {}}
    for name in HITL:
        table["cycles_per_second"][name] = {
            "before": before_of(lambda run, name=name: run["cycles_per_second"][name]),
            "after": rates[name],
        }
    cycles = table["cycles_per_second"]
    peers = [
        ("memory:// / LangGraph InMemorySaver", HITL[0], "LangGraph InMemorySaver"),
        ("sqlite FULL / LangGraph SqliteSaver", HITL[1], "LangGraph SqliteSaver"),
        ("sqlite FULL / sqlite3 FULL 2-tx floor", HITL[1], "floor: sqlite3 FULL, 2 tx"),
        ("sqlite NORMAL / sqlite3 NORMAL 2-tx floor", HITL[2], "floor: sqlite3 NORMAL, 2 tx"),
    ]
    for label, ours, peer in peers:
        if rates.get(peer):
            table["ratios"][label] = {
                "before": cycles[ours]["before"] / rates[peer],
                "after": cycles[ours]["after"] / rates[peer],
            }
    policy = after["policy_checks_per_second"]
    for key in ("exact_memory", "pattern_memory", "exact", "pattern"):
        table["other"][f"policy checks/s, {key}"] = {
            "before": before_of(lambda run, key=key: run["policy_checks_per_second"][key]),
            "after": policy[key],
        }
    for key in ("memory", "sqlite"):
        table["other"][f"bytes per paused run, {key}"] = {
            "before": _bytes(before, key),
            "after": after["bytes_per_paused_run"][key],
        }
    return table


def _bytes(before: list[dict[str, Any]], key: str) -> float | None:
    found = []
    for run in before:
        sizes = run["bytes_per_paused_run"]
        found.append(
            sizes.get(key) if isinstance(sizes, dict) else sizes if key == "memory" else None
        )
    values = [value for value in found if value is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, type=Path, help="the older tree")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the table and both runs")
    args = parser.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("before (1/2) ...", file=sys.stderr, flush=True)
        first = bench([*quick, "--only", "hitl"], args.before, work / "before1.json")
        print("after ...", file=sys.stderr, flush=True)
        after = bench(quick, None, work / "after.json")
        print("before (2/2) ...", file=sys.stderr, flush=True)
        second = bench([*quick, "--only", "hitl"], args.before, work / "before2.json")
    table = combine([first, second], after)
    print(f"{'':<44} {'before':>12} {'after':>12}")
    for section in ("cycles_per_second", "ratios", "other"):
        for name, value in table[section].items():
            shown = [
                "-" if v is None else f"{v:,.2f}x" if section == "ratios" else f"{v:,.0f}"
                for v in (value["before"], value["after"])
            ]
            print(f"{name:<44} {shown[0]:>12} {shown[1]:>12}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"table": table, "before": [first, second], "after": after}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
