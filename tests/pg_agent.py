"""The seed's payments agent on PostgresSaver, driven from a fresh process.

``python -m tests.pg_agent COMMAND URL THREAD [LEDGER]`` with COMMAND one of
``start``, ``resume``, ``state`` (one JSON line describing the state, as
tests/payments_agent.py prints it), or ``race EXPECTED_HEAD AT``: at the
Unix time AT, write one checkpoint continuing EXPECTED_HEAD and print
``ok`` or ``conflict``.
"""

from __future__ import annotations

import json
import sys
import time

from agentmatic import HumanMessage, ids
from agentmatic.checkpoint.base import thread_config
from agentmatic.checkpoint.postgres import PostgresSaver
from agentmatic.errors import ThreadConflict
from tests import payments_agent


def race(saver: PostgresSaver, thread_id: str, expected: str, at: float) -> str:
    head = saver.get_tuple(thread_config(thread_id, expected))
    assert head is not None
    checkpoint = dict(head.checkpoint, id=ids.checkpoint_id())
    saver.setup()
    time.sleep(max(0.0, at - time.time()))
    try:
        saver.put(
            head.config,
            checkpoint,
            {"source": "update", "step": 99, "parents": {}},
            {},
            expected_head=expected,
        )
    except ThreadConflict:
        return "conflict"
    return "ok"


def main(argv: list[str]) -> None:
    command, url, thread_id = argv[:3]
    saver = PostgresSaver(url)
    if command == "race":
        print(race(saver, thread_id, argv[3], float(argv[4])))
        return
    payments_agent.LEDGER = argv[3]
    agent = payments_agent.build(saver)
    config = {"configurable": {"thread_id": thread_id}}
    if command == "start":
        state = agent.invoke(
            {"messages": [HumanMessage("Refund order #42 for $250.")]}, config
        )
    elif command == "resume":
        state = agent.invoke(None, config)
    else:
        state = agent.get_state(config)
    call = state.next_tool_call
    print(
        json.dumps(
            {
                "next": list(state.next),
                "args": call.args if call else None,
                "last": state.values["messages"][-1].text,
                "checkpoint_id": state.checkpoint_id,
            }
        )
    )
    saver.close()


if __name__ == "__main__":
    main(sys.argv[1:])
