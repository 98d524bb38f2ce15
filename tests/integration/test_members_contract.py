"""One MembersLog contract, run against the in-memory fake and a real Kafka topic."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Protocol

import pytest

from service.membership.log import KafkaMembersLog, MemberRecord, MembersLog
from service.membership.members import Membership
from service.metrics import Metrics
from service.testing import MemoryMembers, MemoryMembersLog
from tests.service_helpers import unique_topic, wait_for


class Backend(Protocol):
    async def client(self) -> MembersLog: ...


class MemoryBackend:
    def __init__(self, stack: AsyncExitStack) -> None:
        self.topic = MemoryMembers()
        self.stack = stack

    async def client(self) -> MembersLog:
        client = MemoryMembersLog(self.topic)
        await client.start()
        self.stack.push_async_callback(client.stop)
        return client


class KafkaBackend:
    def __init__(self, stack: AsyncExitStack, bootstrap: str) -> None:
        self.stack = stack
        self.bootstrap = bootstrap
        self.topic = unique_topic("members")
        self.count = 0

    async def client(self) -> MembersLog:
        self.count += 1
        client = KafkaMembersLog(self.bootstrap, self.topic, client_id=f"members-{self.count}")
        await client.start()
        self.stack.push_async_callback(client.stop)
        return client


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            yield MemoryBackend(stack)
        else:
            yield KafkaBackend(stack, request.getfixturevalue("kafka_bootstrap"))


async def fetch_until(log: MembersLog, count: int, within: float = 10.0) -> list[MemberRecord]:
    out: list[MemberRecord] = []
    deadline = time.monotonic() + within
    while len(out) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(out)} of {count} records within {within}s")
        out.extend(await log.fetch(0.1))
    return out


class TestMembersLogContract:
    async def test_records_are_read_back_in_order_with_the_logs_time(
        self, backend: Backend
    ) -> None:
        writer = await backend.client()
        before = int(time.time() * 1000)
        await writer.publish(b"a", b"1")
        await writer.publish(b"b", b"2")
        await writer.publish(b"a", None)
        after = int(time.time() * 1000)
        reader = await backend.client()
        records = await reader.read_to_end(10)
        assert [(r.key, r.value) for r in records] == [(b"a", b"1"), (b"b", b"2"), (b"a", None)]
        assert all(before - 1 <= r.timestamp_ms <= after + 1 for r in records)
        assert await reader.fetch(0.05) == []
        await writer.publish(b"c", b"3")
        [record] = await fetch_until(reader, 1)
        assert (record.key, record.value) == (b"c", b"3")

    async def test_membership_sees_peers_join_update_and_leave(self, backend: Backend) -> None:
        logs = [await backend.client() for _ in range(2)]
        a, b = (
            Membership(
                log, n, f"{n}/1", f"127.0.0.1:{port}", Metrics(n), heartbeat_s=0.1, expiry_s=30
            )
            for log, n, port in zip(logs, ("a", "b"), (1, 2), strict=True)
        )
        await a.start(10)
        follow = asyncio.create_task(a.follow_loop())
        try:
            await b.start(10)
            assert set(b.live()) == {"a", "b"}  # a's heartbeat was on the topic already
            b.set_ready(frozenset({3}))
            await b.announce()
            await wait_for(
                lambda: "b" in a.live() and a.live()["b"].ready == {3}, 10, "a sees b ready"
            )
            await b.stop()  # leaves with a tombstone
            await wait_for(lambda: set(a.live()) == {"a"}, 10, "b gone")
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
