"""Live updates: the WebSocket consumers pass run events to allowed viewers only."""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from agentmatic_web.asgi import application
from runs import services

# Consumers read users in worker threads, so the data must be committed;
# serialized_rollback restores the role groups the migrations create.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture
def cookie_of(client):
    """Return a function giving a user's session cookie header (set up in sync)."""

    def cookie(user) -> tuple[bytes, bytes]:
        client.force_login(user)
        return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())

    return cookie


@pytest.fixture
def developer_cookie(cookie_of, developer):
    return cookie_of(developer)


@pytest.fixture
def operator_cookie(cookie_of, operator):
    return cookie_of(operator)


@pytest.fixture
def outsider_cookie(cookie_of, outsider):
    return cookie_of(outsider)


async def connect(path: str, *headers: tuple[bytes, bytes]):
    communicator = WebsocketCommunicator(application, path, headers=list(headers))
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_a_developer_receives_the_events_of_the_thread_it_watches(
    developer_cookie,
):
    cookie = developer_cookie
    watcher, connected, _ = await connect("/ws/threads/case-42/", ORIGIN, cookie)
    assert connected

    await sync_to_async(services.publish)("case-42", {"status": "waiting"})
    await sync_to_async(services.publish)("other-thread", {"status": "finished"})

    event = await watcher.receive_json_from()
    assert event == {"thread_id": "case-42", "status": "waiting"}
    assert await watcher.receive_nothing()
    await watcher.disconnect()


async def test_an_operator_s_queue_hears_of_every_run(operator_cookie):
    cookie = operator_cookie
    queue, connected, _ = await connect("/ws/approvals/", ORIGIN, cookie)
    assert connected

    await sync_to_async(services.publish)("case-7", {"status": "finished"})

    assert (await queue.receive_json_from())["thread_id"] == "case-7"
    await queue.disconnect()


async def test_thread_ids_with_unusual_characters_are_routed(developer_cookie):
    cookie = developer_cookie
    watcher, connected, _ = await connect("/ws/threads/refund req 7 ✓/", ORIGIN, cookie)
    assert connected

    await sync_to_async(services.publish)("refund req 7 ✓", {"status": "running"})

    assert (await watcher.receive_json_from())["status"] == "running"
    await watcher.disconnect()


async def test_an_anonymous_visitor_is_refused():
    _, connected, _code = await connect("/ws/threads/case-42/", ORIGIN)

    assert not connected


async def test_a_user_without_the_role_is_refused(outsider_cookie):
    cookie = outsider_cookie

    _, thread_ok, _ = await connect("/ws/threads/case-42/", ORIGIN, cookie)
    _, queue_ok, _ = await connect("/ws/approvals/", ORIGIN, cookie)

    assert not thread_ok and not queue_ok


async def test_a_page_from_another_origin_is_refused(developer_cookie):
    cookie = developer_cookie

    _, connected, _ = await connect(
        "/ws/threads/case-42/", (b"origin", b"https://evil.example"), cookie
    )

    assert not connected


async def test_the_socket_ignores_what_the_browser_sends(developer_cookie):
    cookie = developer_cookie
    watcher, connected, _ = await connect("/ws/threads/case-42/", ORIGIN, cookie)
    assert connected

    await watcher.send_json_to({"type": "run.event", "status": "forged"})

    assert await watcher.receive_nothing()
    await watcher.disconnect()
