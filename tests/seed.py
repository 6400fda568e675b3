"""The seed's code snippets, copied as written, and a way to run them.

Each snippet is executed inside an async function, so its top-level `await`
lines work as they would in a notebook cell. Tests provide what the seed
leaves to the reader (the tool functions, `new_input`, `a_history`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

SEED_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "seeds"

IMPORTS_AND_S3 = """
from agentmatic.checkpoint import (
    MemorySaver,           # in-process, for dev
    SQLiteSaver,           # single-host durability
    PostgresSaver,         # multi-host, transactional
    RedisSaver,            # fast, ephemeral-friendly
    S3Saver,               # cheap, geo-replicated
)

agent = Agent.builder("durable").llm(OpenAI()).checkpoint(S3Saver(bucket="agents")).build()
"""

TIME_TRAVEL = """
# List the history of a run.
history = agent.get_state_history(thread_id="run-42")
for state in history:
    print(state.next, state.config["configurable"]["checkpoint_id"])

# Fork from superstep 3.
checkpoint_id = history[3].config["configurable"]["checkpoint_id"]

# Replay with new input.
result = agent.invoke(
    {"messages": [HumanMessage("Try a different approach this time.")]},
    config={"configurable": {"thread_id": "run-42", "checkpoint_id": checkpoint_id}},
)
"""

HITL = """
agent = (Agent.builder("payments")
    .llm(OpenAI())
    .tools([read_account, transfer_funds])
    .checkpoint(PostgresSaver.from_env())
    .interrupt_before(["transfer_funds"])
    .build())

# Run pauses at the first transfer_funds call.
state = await agent.ainvoke(
    {"messages": [HumanMessage("Refund order #42 for $250.")]},
    config={"configurable": {"thread_id": "case-42"}},
)
print(state.next)  # ('transfer_funds',)

# A different process, hours later, resumes after approval.
await agent.ainvoke(None, config={"configurable": {"thread_id": "case-42"}})
"""

# The seed shows this as a fragment of the builder chain; the test completes
# the chain around it.
CONDITIONAL = """
.interrupt_before_when(
    tool="transfer_funds",
    predicate=lambda args: args["amount"] >= 100,
)
"""

MODIFY = """
# Inspect the proposed tool call.
state = await agent.aget_state({"configurable": {"thread_id": "case-42"}})
proposed = state.next_tool_call
print(proposed.args)  # {"to": "...", "amount": 250}

# Override.
await agent.update_state(
    {"configurable": {"thread_id": "case-42"}},
    {"messages": [HumanMessage("Approved, but amount should be 245.")]},
)
await agent.ainvoke(None, config={"configurable": {"thread_id": "case-42"}})
"""

BRANCHING = """
# A is the original run.
# B starts from A's superstep 5 with a new prompt.
await agent.ainvoke(
    new_input,
    config={"configurable": {"thread_id": "branch-B", "checkpoint_id": a_history[5].checkpoint_id}},
)
"""

COMPACT = """
from agentmatic.checkpoint.postgres import compact

await compact(POSTGRES_URL, retention_days=30)
"""

UPGRADE = """
from agentmatic.checkpoint.postgres import upgrade
await upgrade(POSTGRES_URL)  # idempotent
"""

RETENTION_SQL = (
    "DELETE FROM agentmatic_checkpoints WHERE created_at < NOW() - INTERVAL '30 days';"
)

SNIPPETS = {
    "imports_and_s3": IMPORTS_AND_S3,
    "time_travel": TIME_TRAVEL,
    "hitl": HITL,
    "conditional": CONDITIONAL,
    "modify": MODIFY,
    "branching": BRANCHING,
    "compact": COMPACT,
    "upgrade": UPGRADE,
    "retention_sql": RETENTION_SQL,
}


def seed_text() -> str:
    return "\n".join(p.read_text() for p in sorted(SEED_DIR.glob("*.txt")))


def _normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def snippet_is_in_seed(snippet: str) -> bool:
    """Return True when the snippet stands in the seed, line for line."""
    seed = _normalised(seed_text())
    return _normalised(snippet) in seed


async def run_snippet(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run `code` as the body of an async function; return its local names."""
    body = textwrap.indent(textwrap.dedent(code), "    ")
    source = f"async def __snippet__():\n{body}\n    return locals()\n"
    exec(compile(source, "<seed>", "exec"), namespace)
    result: dict[str, Any] = await namespace["__snippet__"]()
    namespace.update(result)
    return result
