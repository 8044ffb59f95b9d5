"""A LangChain v1 agent (create_agent) whose tool calls go through hitl-core. It pauses on
a tool call, a person approves it, and a new host process (here: a new engine and a new
graph on the same two SQLite files) resumes the run. Runs offline as written:

    python docs/examples/langgraph_agent.py

A scripted chat model stands in for a real one (`init_chat_model("openai:gpt-5")`, ...).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hitl_langgraph import HitlMiddleware, resume_command, run_config, waiting_on
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver

import hitl_core


class ScriptedChat(GenericFakeChatModel):
    """Answers from a script; `bind_tools` is a no-op so create_agent accepts it."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChat:  # type: ignore[override]
        return self


@tool
def send_invoice(customer: str, amount: int) -> str:
    """Email an invoice to a customer."""
    return f"invoice for {amount} EUR sent to {customer}"


@tool
def look_up_customer(name: str) -> str:
    """Read a customer's record (read-only)."""
    return f"{name}: 3 open orders"


def build(hitl: hitl_core.Hitl, folder: Path, script: list[AIMessage]) -> Any:
    """The host's agent: the model, the tools, hitl-core's middleware, a checkpointer."""
    saver = SqliteSaver(sqlite3.connect(folder / "graph.db", check_same_thread=False))
    return create_agent(
        ScriptedChat(messages=iter(script)),
        tools=[send_invoice, look_up_customer],
        middleware=[HitlMiddleware(hitl, safe_tools=["look_up_customer"])],
        checkpointer=saver,
    )


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    store = f"sqlite:///{folder / 'hitl.db'}"

    # 1. The host starts a run and the agent; the model wants two tools at once.
    with hitl_core.connect(store) as hitl:
        run = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_123"
        )
        turn = AIMessage(
            content="",
            tool_calls=[
                {"name": "look_up_customer", "id": "call_1", "args": {"name": "ACME"}},
                {
                    "name": "send_invoice",
                    "id": "call_2",
                    "args": {"customer": "ACME", "amount": 1200},
                },
            ],
        )
        graph = build(hitl, folder, [turn])
        config = run_config(run.id)
        graph.invoke({"messages": [("user", "Invoice ACME for the 3 orders")]}, config)
        print("paused on:", waiting_on(graph, config))  # the read-only lookup already ran
        print("run status:", hitl.runs.get(run.id).status)
    # ...the host process may exit here: both files keep everything.

    # 2. A person decides from an approval front end (or `hitl --db hitl.db approve RUN REQ`).
    with hitl_core.connect(store) as front_end:
        (request,) = front_end.runs.pending()
        print("person sees:", request.tool_name, request.tool_input)
        front_end.runs.approve(run.id, request_id=request.request_id, remember=True, actor="alice")

    # 3. A new host process resumes the graph; the decision comes from hitl-core.
    with hitl_core.connect(store) as hitl:
        graph = build(hitl, folder, [AIMessage(content="ACME is invoiced.")])
        config = run_config(run.id)
        out = graph.invoke(resume_command(graph, config), config)
        for message in out["messages"]:
            if isinstance(message, ToolMessage):
                print("tool result:", message.content)
        print("final:", out["messages"][-1].content)
        hitl.agent(run.id).complete(output={"answer": out["messages"][-1].content})
        print("run status:", hitl.runs.get(run.id).status)

        # alice said "remember": the customer's next run sends invoices without a pause
        later = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_123"
        )
        again = AIMessage(
            content="",
            tool_calls=[
                {"name": "send_invoice", "id": "call_9", "args": {"customer": "ACME", "amount": 80}}
            ],
        )
        graph = build(hitl, folder, [again, AIMessage(content="done")])
        out = graph.invoke({"messages": [("user", "Invoice ACME 80")]}, run_config(later.id))
        print("next run paused:", "__interrupt__" in out, "| final:", out["messages"][-1].content)


if __name__ == "__main__":
    main()
