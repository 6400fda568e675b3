"""The seed's snippets that need S3 or Redis, run as written.

`S3Saver(bucket="agents")` reaches the S3 server the `s3_server` fixture
starts on 127.0.0.1 through ``AWS_ENDPOINT_URL``, and `OpenAI()` the
OpenAI-compatible server of `fake_openai`.
"""

from __future__ import annotations

import uuid

from agentmatic import Agent, HumanMessage
from agentmatic.checkpoint.redis import RedisSaver
from agentmatic.checkpoint.s3 import S3Saver
from agentmatic.llms import OpenAI
from tests import seed
from tests.test_seed import SENT, namespace, read_account, transfer_funds


async def test_the_s3_snippet_runs_as_written(fake_openai, s3_server):
    assert seed.snippet_is_in_seed(seed.IMPORTS_AND_S3)
    ns = namespace()
    await seed.run_snippet(seed.IMPORTS_AND_S3, ns)
    agent = ns["agent"]
    assert isinstance(agent.saver, S3Saver)
    assert agent.saver.bucket == "agents"

    # The agent it builds checkpoints to that bucket and reads its threads back.
    thread_id = f"durable-{uuid.uuid4().hex[:8]}"
    state = await agent.ainvoke(
        {"messages": [HumanMessage("Hello")]},
        config={"configurable": {"thread_id": thread_id}},
    )
    history = agent.get_state_history(thread_id=thread_id)
    assert history[0].checkpoint_id == state.checkpoint_id
    assert history[-1].metadata["agent"] == "durable"
    agent.saver.delete_thread(thread_id)


async def test_the_hitl_flow_pauses_and_resumes_on_s3_and_redis(
    fake_openai, s3_saver, redis_saver
):
    for saver in (s3_saver, redis_saver):
        SENT.clear()

        def build(saver=saver):
            return (
                Agent.builder("payments")
                .llm(OpenAI())
                .tools([read_account, transfer_funds])
                .checkpoint(saver)
                .interrupt_before(["transfer_funds"])
                .build()
            )

        state = await build().ainvoke(
            {"messages": [HumanMessage("Refund order #42 for $250.")]},
            config={"configurable": {"thread_id": "case-42"}},
        )
        assert state.next == ("transfer_funds",)
        assert SENT == []
        await build().ainvoke(None, config={"configurable": {"thread_id": "case-42"}})
        assert [s[1] for s in SENT] == [250.0]


def test_the_seed_savers_import_as_the_seed_lists_them():
    from agentmatic.checkpoint import RedisSaver as Listed
    from agentmatic.checkpoint import S3Saver as ListedS3

    assert Listed is RedisSaver
    assert ListedS3 is S3Saver
