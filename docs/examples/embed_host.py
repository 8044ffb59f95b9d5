"""Embed hitl-core in an agent host: an agent that asks a question, needs approval for a
tool, and completes, with a "person" answering from the other side. Runs as written:

    python docs/examples/embed_host.py
"""

from __future__ import annotations

import hitl_core


def main() -> None:
    clock = hitl_core.ManualClock(start=0.0)  # use the default SystemClock in production
    with hitl_core.connect("memory://", clock=clock) as hitl:
        run = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_123"
        )
        agent = hitl.agent(run.id)

        # The agent asks a clarifying question; the run now awaits input.
        question = agent.ask(
            [
                {
                    "question": "Which channel should I post the summary to?",
                    "header": "Channel",
                    "options": ["#general", "#eng"],
                    "multiSelect": False,
                }
            ]
        )
        print("status:", hitl.runs.get(run.id).status)

        # The front end (learning of it by polling or a run.awaiting_input event) answers.
        hitl.runs.answer(run.id, answers={question.questions[0]["question"]: "#eng"})
        answer = agent.result(question.request_id).answers
        print("answered:", answer)

        # The agent wants to call a tool with side effects: a person must approve it.
        gate = agent.request_tool("slack.post", {"channel": "#eng", "text": "Summary..."})
        print("gate:", gate.status)
        assert gate.request_id is not None

        # The agent waits live for input_timeout seconds; nobody answers in time.
        clock.advance(80)
        hitl.tick()
        print("suspended:", hitl.runs.get(run.id).suspended)  # free the agent's worker

        # Much later the person approves and remembers the choice for this customer.
        decision = hitl.runs.approve(run.id, request_id=gate.request_id, remember=True)
        print("approved; resumed:", decision.resumed)  # True: restart the agent
        if agent.result(gate.request_id).status == "allowed":
            pass  # ... call the tool here ...

        # Later runs of the same customer skip the question for that tool.
        later = hitl.runs.create(
            human_in_the_loop=True, permission_mode="approval", user_id="cust_123"
        )
        print("next run:", hitl.agent(later.id).request_tool("slack.post").source)

        print("final:", agent.complete(output={"posted": True}).status)


if __name__ == "__main__":
    main()
