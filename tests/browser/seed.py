"""Give the browser tests' console something to show: `python -m tests.browser.seed`.

Runs in the console's environment (the variables the server gets) after
`migrate` and `demo_users`: one finished refund thread for the developer.
"""

from __future__ import annotations

import os

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentmatic_web.settings")
    django.setup()

    from agentmatic import HumanMessage
    from runs import services
    from runs.indexing import index_threads

    agent = services.get_agent("payments")
    assert agent is not None, "the payments agent is not registered"
    agent.invoke(
        {"messages": [HumanMessage("Please refund order #1042, $40.")]},
        {"configurable": {"thread_id": "dev-refund-1042"}},
        actor="seed",
    )
    index_threads()


if __name__ == "__main__":
    main()
