"""An OpenAI Agents SDK agent whose tool calls go through hitl-core. The run pauses on two
calls, a person allows one and denies the other with a reason, and a new host process
(here: a new engine reading the saved RunState) resumes it. Runs offline as written:

    python docs/examples/openai_agents_host.py

The SDK's own ScriptedModel stands in for a real model (`model="gpt-5"`).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from agents import Agent, Runner, RunState, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call
from hitl_openai_agents import HitlGate

import hitl_core

set_tracing_disabled(True)  # no tracing exporter offline


@function_tool
def refund(order: str, amount: int) -> str:
    """Refund part of an order."""
    return f"refunded {amount} EUR on {order}"


def make_agent(gate: HitlGate, model: ScriptedModel) -> Agent[dict[str, str]]:
    """The host's agent: every tool wrapped by the gate."""
    return Agent(name="support", model=model, tools=[gate.tool(refund)])


async def main() -> None:
    folder = Path(tempfile.mkdtemp())
    store = f"sqlite:///{folder / 'hitl.db'}"

    # 1. The host starts a run; the model asks for two refunds in one turn.
    with hitl_core.connect(store) as hitl:
        run = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_123"
        )
        gate = HitlGate(hitl)
        model = ScriptedModel(
            [
                [
                    function_call("refund", {"order": "A-1", "amount": 40}, call_id="call_1"),
                    function_call("refund", {"order": "A-2", "amount": 900}, call_id="call_2"),
                ]
            ]
        )
        agent = make_agent(gate, model)
        result = await Runner.run(agent, "Refund both orders", context={"hitl_run_id": run.id})
        state = result.to_state()
        print("interruptions:", [item.call_id for item in result.interruptions])
        print("hitl-core requests:", gate.waiting_on(state))
        (folder / "state.json").write_text(state.to_string())  # keep it; the process may exit

    # 2. A person decides (or: `hitl --db hitl.db approve RUN REQ [--deny --reason ...]`).
    with hitl_core.connect(store) as front_end:
        by_order = {r.tool_input["order"]: r for r in front_end.runs.pending()}
        small, large = by_order["A-1"], by_order["A-2"]
        front_end.runs.approve(run.id, request_id=small.request_id, actor="alice")
        front_end.runs.approve(
            run.id,
            request_id=large.request_id,
            decision="deny",
            reason="over 500 EUR needs a manager: offer a voucher instead",
            actor="alice",
        )

    # 3. A new host process loads the state and resumes with hitl-core's decisions.
    with hitl_core.connect(store) as hitl:
        gate = HitlGate(hitl)
        model = ScriptedModel([[assistant_message("Refunded A-1; offering a voucher for A-2.")]])
        agent = make_agent(gate, model)
        state = await RunState.from_string(agent, (folder / "state.json").read_text())
        result = await gate.resume(agent, state)
        assert model.last_call is not None
        for item in model.last_call.input:
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                print("tool output:", item["call_id"], "->", item["output"])
        print("final:", result.final_output)
        hitl.agent(run.id).complete(output={"answer": result.final_output})


if __name__ == "__main__":
    asyncio.run(main())
