"""Following work on Coder: list, read, send and stop, for Tasks and Chats, over HTTP
against the Coder fake (which answers as reference coder-tasks.md §13 and
coder-chats.md §12 say)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from service.coder.base import WorkSpec
from service.coder.chats import ChatsBackend
from service.coder.client import CoderClient
from service.coder.tasks import TasksBackend
from service.core.status import ChatSnapshot, TaskSnapshot
from tests.fakes.coder import FakeCoder
from tests.fakes.server import serve_in_thread

PR = "https://github.com/o/r/pull/9"


def spec(name: str, *, template: str = "tasks-docker") -> WorkSpec:
    return WorkSpec(delegation_key=f"github:1:{name}#1", name=name, prompt="Fix it",
                    display_name="o/r#1: Fix it", template=template, preset="",
                    organization="default")


@pytest.fixture
def served() -> Iterator[tuple[FakeCoder, str, str]]:
    fake = FakeCoder("tasks")
    fake.add_template("default", "tasks-docker")
    token = fake.add_user("alice")
    with serve_in_thread(fake.app()) as url:
        yield fake, url, token


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def tasks_backend(url: str, token: str, http: httpx.AsyncClient) -> TasksBackend:
    return TasksBackend(CoderClient(url, token, http=http, timeout=5), url)


async def test_tasks_are_listed_in_one_call_and_read_one_by_one(
    served: tuple[FakeCoder, str, str], http: httpx.AsyncClient,
) -> None:
    fake, url, token = served
    backend = tasks_backend(url, token, http)
    first = await backend.ensure(spec("cb-aaaa"), may_exist=False)
    second = await backend.ensure(spec("cb-bbbb"), may_exist=False)
    fake.set_task_state(first.id, status="active", state="working", message="Reading", uri=PR)
    before = len(fake.requests)

    listed = await backend.list_snapshots([first, second])
    assert fake.requests[before:] == [("GET", "/api/v2/tasks")]
    assert listed[first.id] == TaskSnapshot(exists=True, status="active", state="working",
                                            message="Reading", uri=PR,
                                            state_at=listed[first.id].state_at)
    assert listed[first.id].state_at is not None
    assert listed[second.id].status == "pending"

    assert (await backend.snapshot(second)).status == "pending"
    fake.delete_task_now(second.id)
    assert await backend.snapshot(second) == TaskSnapshot(exists=False)
    assert second.id not in await backend.list_snapshots([first, second])


async def test_a_follow_up_reaches_an_idle_task_and_waits_while_it_works(
    served: tuple[FakeCoder, str, str], http: httpx.AsyncClient,
) -> None:
    fake, url, token = served
    backend = tasks_backend(url, token, http)
    work = await backend.ensure(spec("cb-cccc"), may_exist=False)
    assert await backend.send(work, "more") == "not_ready"  # pending: 400, not active
    fake.set_task_state(work.id, status="active", state="working")
    assert await backend.send(work, "more") == "busy"  # 502: the agent works, no queue
    fake.set_task_state(work.id, status="active", state="idle")
    assert await backend.send(work, "more please") == "sent"
    assert fake.task_inputs(work.id) == [("alice", "more please")]
    fake.delete_task_now(work.id)
    assert await backend.send(work, "anyone?") == "gone"


async def test_stopping_pauses_a_task_or_deletes_it_where_coder_cannot_pause(
    http: httpx.AsyncClient,
) -> None:
    for mode, expected in (("tasks", "pause"), ("tasks-experimental", "delete")):
        fake = FakeCoder(mode)
        fake.add_template("default", "tasks-docker")
        token = fake.add_user("alice")
        with serve_in_thread(fake.app()) as url:
            backend = tasks_backend(url, token, http)
            work = await backend.ensure(spec("cb-dddd"), may_exist=False)
            await backend.stop(work)
            assert [call for call, *_ in fake.stops] == [expected], mode
            await backend.stop(work)  # again, or already gone: nothing breaks


@pytest.fixture
def chats() -> Iterator[tuple[FakeCoder, str, str]]:
    fake = FakeCoder("chats")
    token = fake.add_user("alice")
    with serve_in_thread(fake.app()) as url:
        yield fake, url, token


def chats_backend(url: str, token: str, http: httpx.AsyncClient) -> ChatsBackend:
    return ChatsBackend(CoderClient(url, token, http=http, timeout=5), url, base="/api/v2")


async def test_chats_are_listed_by_the_bridges_label_and_read_with_their_answer(
    chats: tuple[FakeCoder, str, str], http: httpx.AsyncClient,
) -> None:
    fake, url, token = chats
    backend = chats_backend(url, token, http)
    work = await backend.ensure(spec("cb-eeee", template=""), may_exist=False)
    fake.set_chat_state(work.id, "waiting", pr_url=PR, answer="I fixed the typo and opened a PR.")
    listed = await backend.list_snapshots([work])
    assert listed[work.id].status == "waiting" and listed[work.id].pr_url == PR
    read = await backend.snapshot(work)
    assert isinstance(read, ChatSnapshot)
    assert read.summary == "I fixed the typo and opened a PR."  # the newest assistant message
    fake.set_chat_state(work.id, "waiting", archived=True)
    assert work.id not in await backend.list_snapshots([work])  # archived: not listed
    assert (await backend.snapshot(work)).archived


async def test_a_chat_takes_follow_ups_queued_and_stops_by_interrupt_then_archive(
    chats: tuple[FakeCoder, str, str], http: httpx.AsyncClient,
) -> None:
    fake, url, token = chats
    backend = chats_backend(url, token, http)
    work = await backend.ensure(spec("cb-ffff", template=""), may_exist=False)
    assert await backend.send(work, "and the docs") == "sent"  # running: Coder queues it
    assert [m["content"][0]["text"] for m in fake.queued_messages(work.id)] == ["and the docs"]
    await backend.stop(work)
    assert [(call, chat) for call, chat, _ in fake.stops] == [("interrupt", work.id),
                                                               ("archive", work.id)]
    assert await backend.send(work, "hello?") == "gone"  # archived chats take no messages

