"""The shared LangGraph fixture opens in the console, read-only and faithful.

The file was written by LangGraph itself; its `.expected.json` records what
LangGraph reports about each thread. The console must show the same counts,
sources, steps and next nodes, without writing to the file.
"""

import hashlib
import json

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.web.console_support import LANGGRAPH_EXPECTED, configure

pytestmark = pytest.mark.django_db


@pytest.fixture
def expected():
    return json.loads(LANGGRAPH_EXPECTED.read_text())


@pytest.fixture
def console(settings, tmp_path, langgraph_file):
    configure(settings, tmp_path / "store.sqlite", [langgraph_file])
    return langgraph_file


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_thread_of_the_file_is_listed_read_only(
    client, developer, console, expected
):
    client.force_login(developer)

    response = client.get(reverse("runs:threads"))

    records = {r.thread_id: r for r in response.context["page"].records}
    assert set(records) == set(expected)
    assert all(r.is_readonly for r in records.values())
    assert all("langgraph-shared.sqlite" in r.readonly_reason for r in records.values())
    for thread_id, facts in expected.items():
        status = "waiting" if facts["next"] else "finished"
        assert records[thread_id].status == status


def test_each_timeline_shows_what_langgraph_recorded(
    client, developer, console, expected
):
    before = digest(console)
    client.force_login(developer)

    for thread_id, facts in expected.items():
        response = client.get(reverse("runs:thread", args=[thread_id]))
        rows = response.context["timeline"].rows

        assert len(rows) == facts["checkpoints"], thread_id
        assert [r.state.source for r in rows] == facts["sources"], thread_id
        assert [r.state.step for r in rows] == facts["steps"], thread_id
        assert rows[0].checkpoint_id == facts["latest_checkpoint_id"]
        assert list(rows[0].state.next) == facts["next"], thread_id
        page = response.content.decode()
        assert "Read-only." in page
        for node in facts["next"]:
            assert node in page

    assert digest(console) == before


def test_the_newest_checkpoint_opens_as_a_conversation(
    client, developer, console, expected
):
    client.force_login(developer)

    for thread_id, facts in expected.items():
        response = client.get(
            reverse("runs:thread", args=[thread_id]),
            {"at": facts["latest_checkpoint_id"]},
        )
        state = response.context["detail"]["state"]

        assert len(state.messages) == facts["message_count"], thread_id
        assert state.messages[-1].type == facts["last_message_type"], thread_id
        assert response.context["detail"]["turns"]


def test_the_branch_inside_case_done_is_drawn(client, developer, console):
    client.force_login(developer)

    response = client.get(reverse("runs:thread", args=["case-done"]))

    rows = response.context["timeline"].rows
    assert {r.lane for r in rows} == {0, 1}
    labels = [label for r in rows for label in r.labels]
    assert any("new line: new input" in label for label in labels)
    assert any("branch point: 2 lines" in label for label in labels)


def test_the_api_reads_the_file_too(developer, console, expected):
    api = APIClient()
    api.force_authenticate(developer)

    for thread_id, facts in expected.items():
        body = api.get(reverse("api:history", args=[thread_id]), {"limit": 50}).json()

        assert [c["source"] for c in body["results"]] == facts["sources"]
        assert [c["step"] for c in body["results"]] == facts["steps"]
        assert body["results"][0]["next"] == facts["next"]
