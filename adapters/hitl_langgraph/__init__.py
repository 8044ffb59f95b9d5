"""hitl-core for LangGraph and LangChain v1: every tool call goes through hitl-core's tool
gate, a pending call pauses the graph with LangGraph's own `interrupt()`, and resuming
reads the decision from hitl-core. Needs `pip install 'hitl-core[langgraph]'`."""

from ._gate import INTERRUPT_TYPE
from ._graph import HitlToolNode, resume_command, run_config, waiting_on
from ._middleware import HitlMiddleware

__all__ = [
    "INTERRUPT_TYPE",
    "HitlMiddleware",
    "HitlToolNode",
    "resume_command",
    "run_config",
    "waiting_on",
]
