"""The payments agent on Redis or S3, driven from a fresh process.

``python -m tests.backend_agent COMMAND SPEC THREAD [ARGS]`` where SPEC is
``redis|<url>|<prefix>`` or ``s3|<bucket>|<prefix>`` (S3 through the
``AWS_*`` environment the test sets). Commands:

- ``start``, ``resume``, ``state``: run or read the seed's payments flow and
  print one JSON line describing the state (as tests/payments_agent.py);
- ``race EXPECTED_HEAD AT``: at the Unix time AT, write one checkpoint that
  continues EXPECTED_HEAD and print ``ok`` or ``conflict``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from agentmatic import HumanMessage, ids
from agentmatic.checkpoint.base import thread_config
from agentmatic.errors import ThreadConflict
from tests import payments_agent


def open_saver(spec: str) -> Any:
    kind, where, prefix = spec.split("|")
    if kind == "redis":
        from agentmatic.checkpoint.redis import RedisSaver

        return RedisSaver(where, prefix=prefix)
    from agentmatic.checkpoint.s3 import S3Saver

    return S3Saver(bucket=where, prefix=prefix)


def race(saver: Any, thread_id: str, expected: str, at: float) -> str:
    head = saver.get_tuple(thread_config(thread_id, expected))
    checkpoint = dict(head.checkpoint, id=ids.checkpoint_id())
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
    command, spec, thread_id = argv[:3]
    saver = open_saver(spec)
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


if __name__ == "__main__":
    main(sys.argv[1:])
