"""`ratelimiter inspect` against a real topic: offsets, sizes, a user's merged state, records."""

from __future__ import annotations

import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from crdt.policy import BucketPolicy
from crdt.store import BucketStore
from service.cli import main
from service.clock import system_clock, to_unix_ms
from service.kafka.topics import ensure_topic
from service.replication import codec
from service.replication.codec import partition_for_user
from service.replication.inspection import inspect_topic
from service.replication.topic import ensure_state_topic

pytestmark = pytest.mark.integration

PARTITIONS = 6


async def _publish(bootstrap: str, topic: str) -> int:
    """alice: 7 admitted by node-a, 5 by node-b (key records and a batch); bob: 3; a poison."""
    now = system_clock()
    stores = {r: BucketStore(BucketPolicy(10, 20), r) for r in ("node-a/1", "node-b/1")}
    for replica, user, cost in (("node-a/1", "alice", 7), ("node-b/1", "alice", 5)):
        for _ in range(cost):
            assert stores[replica].acquire(user, 1, now) >= 0
    for _ in range(3):
        stores["node-a/1"].acquire("bob", 1, now)
    ts = to_unix_ms(now)
    records = []
    for replica, store in stores.items():
        deltas = store.flush(now)
        batch = codec.encode_batch(replica, [("default", d) for d in deltas], ts - 20, ts)
        for delta in deltas:
            part = partition_for_user(delta.key, PARTITIONS)
            records.append((codec.batch_record_key(replica, part), batch, part))
            key = codec.key_record_key("default", delta.key, replica)
            records.append((key, codec.encode_key_record("default", delta, ts), part))
    records.append((b"junk", b"not json", partition_for_user("alice", PARTITIONS)))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value, part in records:
            await producer.send_and_wait(topic, value, key=key, partition=part)
    finally:
        await producer.stop()
    return len(records)


@pytest.fixture
async def state_topic(kafka_bootstrap: str) -> tuple[str, int]:
    topic = f"test.inspect.{uuid.uuid4().hex[:12]}"
    await ensure_state_topic(kafka_bootstrap, topic, PARTITIONS)
    return topic, await _publish(kafka_bootstrap, topic)


async def test_inspect_merges_a_users_state_per_writer(
    kafka_bootstrap: str, state_topic: tuple[str, int]
) -> None:
    topic, produced = state_topic

    report = await inspect_topic(kafka_bootstrap, topic, user="alice", newest=50)

    assert report["config"]["cleanup.policy"] == {"value": "compact", "expected": "compact"}
    assert len(report["partitions"]) == PARTITIONS
    assert sum(p["offsets"] for p in report["partitions"]) == produced
    alice_partition = partition_for_user("alice", PARTITIONS)
    held = report["partitions"][alice_partition]
    assert held["end_offset"] - held["beginning_offset"] >= 5
    assert held["log_bytes"] > 0
    user = report["user"]
    assert user["partition"] == alice_partition
    assert user["poison_records"] == 1
    state = user["rules"]["default"]
    assert state["consumed"] == 12
    assert 7.99 <= state["tokens"] < 20  # 20 - 12 at the admissions, refilling at 10/s since
    assert {r: s["contribution"] for r, s in state["replicas"].items()} == {
        "node-a/1": 7,
        "node-b/1": 5,
    }
    assert {r: s["raw_cells"] for r, s in state["replicas"].items()} == {
        "node-a/1": 7,
        "node-b/1": 5,
    }
    assert {r["kind"] for r in user["newest_records"]} == {"key", "batch"}
    kinds = {r["kind"] for r in report["newest_records"]}
    assert "poison (bad_json)" in kinds
    assert any(r["key"] == "alice | default | node-a/1" for r in report["newest_records"])


async def test_an_unknown_user_has_no_state(
    kafka_bootstrap: str, state_topic: tuple[str, int]
) -> None:
    report = await inspect_topic(kafka_bootstrap, state_topic[0], user="nobody")

    assert report["user"]["rules"] == {}
    assert report["user"]["partition"] == partition_for_user("nobody", PARTITIONS)


def test_cli_prints_json_and_tables(
    kafka_bootstrap: str, state_topic: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = state_topic[0]
    base = ["inspect", "--kafka", kafka_bootstrap, "--topic", topic, "--user", "alice"]

    assert main([*base, "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["user"]["rules"]["default"]["consumed"] == 12

    assert main(base) == 0
    text = capsys.readouterr().out
    assert f"{topic} on {kafka_bootstrap}: {PARTITIONS} partitions" in text
    assert "consumed 12" in text
    assert "node-a/1" in text
    assert "newest records" in text

    assert main(["inspect", "--kafka", kafka_bootstrap, "--topic", "no.such.topic.x1"]) == 1
    assert "does not exist" in capsys.readouterr().err


async def test_mirrored_copies_of_the_topic_are_shown_with_their_lag(
    kafka_bootstrap: str, state_topic: tuple[str, int]
) -> None:
    topic, _ = state_topic
    # What MirrorMaker 2 makes of region eu's topic here: `eu.<topic>`, CreateTime, the
    # source's stamps kept (this record was written 3 s ago at its source).
    mirrored = f"eu.{topic}"
    await ensure_topic(kafka_bootstrap, mirrored, 2, {"cleanup.policy": "compact"})
    written_ms = to_unix_ms(system_clock()) - 3000
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            mirrored, b"{}", key=b"k", partition=1, timestamp_ms=written_ms
        )
    finally:
        await producer.stop()
    report = await inspect_topic(kafka_bootstrap, topic)
    [row] = report["mirrored"]
    assert row["topic"] == mirrored
    assert row["region"] == "eu"
    assert row["partitions"] == 2
    assert row["offsets"] == 1
    assert row["newest_ms"] == written_ms
    assert 3.0 <= row["lag_s"] < 60
    assert row["timestamp_type"] == "CreateTime"
