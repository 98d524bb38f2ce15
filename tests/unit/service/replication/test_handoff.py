"""A new node started with --bootstrap-from loads a live peer's state over HTTP (GET
/v1/state) and reads the topic only from the offsets that state covers; it then decides
exactly as a node that read the whole topic. Peers that refuse pass the turn; a stream
cut after keys were loaded keeps them and reads the whole topic."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from crdt.limiter import make_limiter
from crdt.store import BucketStore
from service.bootstrap import build_node
from service.http.app import create_app
from service.local.process import free_port
from service.node import Node
from service.replication import handoff
from service.replication.handoff import HandoffError, bucket_row, state_lines, window_row
from service.settings import load_settings
from service.testing import T0, ManualClock, MemoryLog, MemoryStateLog
from tests.service_helpers import clean_env, memory_node, sample, served, wait_for
from tests.strategies import Scenario, scenarios

USERS = [f"u{i}" for i in range(2 * handoff.CHUNK_KEYS + 150)]  # three chunks
TOKEN = "handoff-test-token-0123456789"
SLOW = {"rate": 0.01, "burst": 20}  # buckets stay in use through the test


@pytest.fixture(autouse=True)
def _no_ratelimiter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


class PausableStateLog(MemoryStateLog):
    """A peer's log whose reading can be held, so records exist that its state lacks."""

    paused = False

    async def fetch(self, timeout_s: float, max_records: int) -> list[Any]:
        return await super().fetch(timeout_s, 0 if self.paused else max_records)


@dataclass
class Peer:
    node: Node
    log: PausableStateLog
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        await self.node.stop()


async def serve_asgi(app: Any) -> tuple[str, uvicorn.Server, asyncio.Task[None]]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, 10, "the server listening")
    return f"http://127.0.0.1:{port}", server, task


async def serve_peer(log: MemoryLog, clock: ManualClock, token: str = TOKEN) -> Peer:
    settings = load_settings(
        kafka="127.0.0.1:1",
        rules_topic="none",
        node_id="peer",
        partitions=len(log.partitions),
        flush_ms=5,
        admin_token=token,
        **SLOW,
    )
    statelog = PausableStateLog(log)
    node = build_node(settings, clock=clock, state_log=statelog)
    await node.start()
    await node.wait_ready(5)
    url, server, task = await serve_asgi(served(create_app(settings, node)))
    return Peer(node, statelog, url, server, task)


async def started(node: Node) -> Node:
    await node.start()
    await node.wait_ready(10)
    return node


def consumed(node: Node, user: str) -> int:
    return node.engine.view(user, node.rules.default).consumed


def assert_same_views(node: Node, reference: Node, users: list[str]) -> None:
    rule = node.rules.default
    for user in users:
        mine, theirs = node.engine.view(user, rule), reference.engine.view(user, rule)
        assert mine.tokens == pytest.approx(theirs.tokens), user
        assert mine.contributions == theirs.contributions, user


@pytest.fixture
async def world() -> AsyncIterator[tuple[MemoryLog, ManualClock, Peer, Node]]:
    """A serving peer and a writer, each having admitted for every user (peer 3, writer 2),
    with the peer caught up on the writer's records."""
    clock = ManualClock(T0)
    log = MemoryLog(4, broker_clock=clock)
    peer = await serve_peer(log, clock)
    writer = await started(memory_node(log, clock, "writer", **SLOW))
    try:
        for user in USERS:
            assert peer.node.decide(user, 3, peer.node.rules.default).allowed
            assert writer.decide(user, 2, writer.rules.default).allowed
        assert writer.replicator is not None
        assert peer.node.replicator is not None
        await writer.replicator.flush()
        await peer.node.replicator.flush()
        await wait_for(
            lambda: all(consumed(peer.node, u) == 5 for u in USERS), 10, "the peer merged"
        )
        yield log, clock, peer, writer
    finally:
        with contextlib.suppress(Exception):
            await peer.stop()
        await writer.stop()


async def test_a_new_node_loads_a_peers_state_and_reads_only_the_rest(
    world: tuple[MemoryLog, ManualClock, Peer, Node],
) -> None:
    log, clock, peer, writer = world
    # Records the peer has not read: the new node must read them from the topic.
    peer.log.paused = True
    for user in USERS[:10]:
        assert writer.decide(user, 1, writer.rules.default).allowed
    assert writer.replicator is not None
    await writer.replicator.flush()
    assert consumed(peer.node, USERS[0]) == 5

    new = memory_node(log, clock, "new", bootstrap_from=peer.url, admin_token=TOKEN, **SLOW)
    fresh = memory_node(log, clock, "fresh", **SLOW)  # reads the whole topic
    try:
        await started(new)
        await started(fresh)
        assert new.replicator is not None
        assert new.replicator.snapshot_keys_loaded == len(USERS)
        assert sample(new, "ratelimiter_bootstrap_handoffs_total", outcome="loaded") == 1
        assert sample(new, "ratelimiter_bootstrap_keys_loaded", source="peer") == len(USERS)
        records = sum(map(len, log.partitions))
        assert sample(new, "ratelimiter_bootstrap_records") < records / 4  # only the rest
        assert_same_views(new, fresh, USERS)
        assert [consumed(new, u) for u in USERS] == [6] * 10 + [5] * (len(USERS) - 10)
        # The peer's own cells are the peer's on the new node, its own start from zero.
        contributions = new.engine.view(USERS[0], new.rules.default).contributions
        assert contributions[peer.node.replica] == 3
        assert new.replica not in contributions
        # A bootstrap started again (its task restarted after a broker error) reads on
        # from where it was: no second peer's offsets skip what its keys lack.
        await new.replicator.bootstrap(5)
        assert sample(new, "ratelimiter_bootstrap_handoffs_total", outcome="loaded") == 1
        assert_same_views(new, fresh, USERS)
    finally:
        await new.stop()
        await fresh.stop()


async def test_refusing_peers_pass_the_turn_and_the_topic_is_read_whole(
    world: tuple[MemoryLog, ManualClock, Peer, Node],
) -> None:
    log, clock, peer, _ = world
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    peers = f"{closed},{peer.url}"
    wrong = memory_node(
        log, clock, "wrong", bootstrap_from=peers, admin_token="another-token-0123456789", **SLOW
    )
    fresh = memory_node(log, clock, "fresh", **SLOW)
    written = sum(map(len, log.partitions))
    try:
        await started(wrong)
        await started(fresh)
        assert sample(wrong, "ratelimiter_bootstrap_handoffs_total", outcome="refused") == 2
        assert sample(wrong, "ratelimiter_bootstrap_handoffs_total", outcome="loaded") == 0
        assert wrong.replicator is not None
        assert wrong.replicator.snapshot_keys_loaded == 0
        assert sample(wrong, "ratelimiter_bootstrap_records") >= written
        assert_same_views(wrong, fresh, USERS)
    finally:
        await wrong.stop()
        await fresh.stop()


async def test_a_stream_cut_after_keys_were_loaded_keeps_them_and_reads_the_whole_topic(
    world: tuple[MemoryLog, ManualClock, Peer, Node],
) -> None:
    log, clock, peer, _ = world
    replicator = peer.node.replicator
    assert replicator is not None
    lines = [
        line
        async for line in state_lines(
            peer.node.engine, replicator.topic, replicator.log.partitions, replicator.merged_offsets
        )
    ]
    assert len(lines) == 5  # header, three chunks, end

    async def cut(scope: Scope, receive: Receive, send: Send) -> None:  # no end line
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(lines[:3])})

    url, server, task = await serve_asgi(cut)
    # The cut stream first; the whole peer after it must not be asked (its offsets need
    # not cover what was loaded).
    new = memory_node(
        log, clock, "new", bootstrap_from=f"{url},{peer.url}", admin_token=TOKEN, **SLOW
    )
    fresh = memory_node(log, clock, "fresh", **SLOW)
    written = sum(map(len, log.partitions))
    try:
        await started(new)
        await started(fresh)
        assert sample(new, "ratelimiter_bootstrap_handoffs_total", outcome="cut") == 1
        assert sample(new, "ratelimiter_bootstrap_handoffs_total", outcome="loaded") == 0
        assert sample(new, "ratelimiter_bootstrap_records") >= written
        assert_same_views(new, fresh, USERS)
    finally:
        server.should_exit = True
        await task
        await new.stop()
        await fresh.stop()


async def test_the_state_endpoint_needs_the_admin_token_and_a_ready_replicating_node(
    world: tuple[MemoryLog, ManualClock, Peer, Node],
) -> None:
    _, _, peer, _ = world
    async with httpx.AsyncClient(base_url=peer.url) as client:
        assert (await client.get(handoff.PATH)).status_code == 401
        bad = {"Authorization": "Bearer not-the-token-0123456789"}
        assert (await client.get(handoff.PATH, headers=bad)).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        answer = await client.get(handoff.PATH, headers=good)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(handoff.MEDIA_TYPE)
    docs = [orjson.loads(line) for line in answer.content.splitlines()]
    header, chunks, end = docs[0], docs[1:-1], docs[-1]
    assert header["v"] == handoff.VERSION
    assert header["writer"] == peer.node.replica
    assert sum(header["offsets"].values()) > 0
    assert all(len(chunk["rows"]) <= handoff.CHUNK_KEYS for chunk in chunks)
    assert end == {"end": len(USERS)} == {"end": sum(len(c["rows"]) for c in chunks)}

    standalone_settings = load_settings(kafka="none", admin_token=TOKEN)
    app = create_app(standalone_settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        answer = await client.get(handoff.PATH, headers=good)
    assert answer.status_code == 503
    assert "standalone" in answer.json()["message"]


async def test_the_peer_answers_requests_between_chunks(
    world: tuple[MemoryLog, ManualClock, Peer, Node],
) -> None:
    _, _, peer, _ = world
    replicator = peer.node.replicator
    assert replicator is not None
    loop = asyncio.get_running_loop()
    turns = [0]
    streaming = True

    def watch() -> None:  # runs once per turn of the event loop while the stream is made
        turns[0] += 1
        if streaming:
            loop.call_soon(watch)

    loop.call_soon(watch)
    seen = []
    async for _ in state_lines(
        peer.node.engine, replicator.topic, replicator.log.partitions, replicator.merged_offsets
    ):
        seen.append(turns[0])
    streaming = False
    chunks = seen[1:-1]
    assert len(chunks) == 3
    assert chunks[0] < chunks[1] < chunks[2], "the event loop ran between chunks"


def rows_of(lines: list[bytes]) -> list[Any]:
    return [row for line in lines[1:-1] for row in orjson.loads(line)["rows"]]


async def test_malformed_or_foreign_streams_are_refused_with_nothing_wrong_loaded(
    world: tuple[MemoryLog, ManualClock, Peer, Node],
) -> None:
    log, clock, peer, _ = world
    replicator = peer.node.replicator
    assert replicator is not None
    engine, topic = peer.node.engine, replicator.topic
    good = [line async for line in state_lines(engine, topic, 4, dict(replicator.merged_offsets))]
    header = orjson.loads(good[0])
    name = next(iter(header["limiters"]))
    row = rows_of(good)[0]

    def chunk(*rows: Any) -> bytes:
        return orjson.dumps({"l": name, "rows": list(rows)}) + b"\n"

    def end(count: int) -> bytes:
        return orjson.dumps({"end": count}) + b"\n"

    def with_header(**changes: Any) -> bytes:
        return orjson.dumps({**header, **changes}) + b"\n"

    bad_streams = {
        "another topic": [with_header(topic="other"), end(0)],
        "another version": [with_header(v=99), end(0)],
        "its own writer": [with_header(writer="{replica}"), end(0)],
        "an offset past the partitions": [with_header(offsets={"7": 1}), end(0)],
        "a partition in other digits": [with_header(offsets={"\u00b2": 1}), end(0)],
        "a negative offset": [with_header(offsets={"1": -1}), end(0)],
        "a string where a number goes": [good[0], chunk([row[0], "1", *row[2:]]), end(1)],
        "a row too short": [good[0], chunk(row[:3]), end(1)],
        "a bool epoch": [good[0], chunk([row[0], True, *row[2:]]), end(1)],
        "an empty key": [good[0], chunk(["", *row[1:]]), end(1)],
        "a wrong row count": [good[0], chunk(row), end(2)],
        "no end line": [good[0], chunk(row)],
        "not JSON": [good[0], b"{nope\n", end(0)],
    }
    for what, lines in bad_streams.items():
        target = memory_node(log, clock, "target", **SLOW)
        body = b"".join(lines).replace(b"{replica}", target.replica.encode())

        async def app(scope: Scope, receive: Receive, send: Send, body: bytes = body) -> None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        url, server, task = await serve_asgi(app)
        try:
            with pytest.raises(HandoffError) as raised:
                await handoff.load_from_peer(url, TOKEN, target.engine, topic, 4, 5)
            # A whole row before a bad end is real consumption: it stays, and is counted
            # (the node then reads the whole topic rather than ask another peer).
            kept = 1 if what in ("no end line", "a wrong row count") else 0
            assert len(target.engine.limiters[name]) == kept, what
            assert raised.value.loaded == kept, what
        finally:
            server.should_exit = True
            await task


# -- rows through JSON -------------------------------------------------------------------


@given(scenarios(refunds=True), st.randoms(use_true_random=False))
def test_bucket_rows_through_json_load_with_the_same_views(
    scenario: Scenario, rnd: random.Random
) -> None:
    """Every shape `export_keys` writes (older epochs, sealed totals, late marks, -inf
    floors) survives JSON and the row checks: the loaded keys decide as the exported."""
    cluster = scenario.play(sweep=rnd.random() < 0.5)
    old = cluster.stores[0]
    now = cluster.final_seconds()
    new = BucketStore(scenario.limit.policy, "new", scenario.timing)
    rows = [bucket_row(row) for row in orjson.loads(orjson.dumps(old.export_keys()))]
    assert new.import_keys(rows, old.replica) == len(old)
    held = old.keys()
    for key in held:
        before, after = old.view(key, now), new.view(key, now)
        assert after.tokens == before.tokens
        assert after.contributions == before.contributions
        assert after.open_epochs == before.open_epochs


@pytest.mark.parametrize("algorithm", ["sliding_window", "fixed_window"])
def test_window_rows_through_json_load_with_the_same_views(algorithm: str) -> None:
    a = make_limiter(algorithm, "a", rate=10, burst=10, window=1.0)
    b = make_limiter(algorithm, "b", rate=10, burst=10, window=1.0)
    for i in range(50):
        now = 100.0 + i * 0.07  # across windows: previous and current cells
        a.acquire(f"k{i % 7}", 1, now)
        b.acquire(f"k{i % 5}", 1, now)
        for delta in b.flush(now):
            a.apply(delta, now)
    now = 100.0 + 50 * 0.07
    new = make_limiter(algorithm, "new", rate=10, burst=10, window=1.0)
    rows = [window_row(row) for row in orjson.loads(orjson.dumps(a.export_keys()))]
    assert new.import_keys(rows, "a") == len(a) == 7
    held = a.keys()
    for key in held:
        before, after = a.view(key, now), new.view(key, now)
        assert after.tokens == pytest.approx(before.tokens)
        assert after.contributions == before.contributions
