"""The members topic as a port (MembersLog) and its Kafka adapter: one compacted partition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from service.kafka.compacted import CompactedLog
from service.kafka.record import LogRecord

DEFAULT_MEMBERS_TOPIC = "ratelimiter.members"
MEMBERS_TOPIC_CONFIG: Mapping[str, str] = {
    # The newest record per node id is its last heartbeat; a tombstone is a graceful leave.
    "cleanup.policy": "compact",
    # Heartbeats are stamped by the broker: a member's age is judged on one clock.
    "message.timestamp.type": "LogAppendTime",
    # A heartbeat a second per node: clean often so a new node reads little.
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
}


# A record of the members topic: node id, value (None: left), broker time (Unix ms).
MemberRecord = LogRecord


class MembersLog(Protocol):
    """The members topic as a port: one ordered partition, read from the beginning."""

    async def start(self) -> None:
        """Connect (creating the topic if missing); reading starts at the beginning.
        Starting a started log does nothing."""
        ...

    async def stop(self) -> None:
        """Disconnect."""
        ...

    async def read_to_end(self, timeout_s: float) -> list[MemberRecord]:
        """Every record up to the end offset taken now; TimeoutError after `timeout_s`."""
        ...

    async def fetch(self, timeout_s: float) -> list[MemberRecord]:
        """Records after the current position (possibly none once `timeout_s` passes)."""
        ...

    async def publish(self, key: bytes, value: bytes | None) -> None:
        """Return once the broker acknowledged the record; BrokerError otherwise."""
        ...


class KafkaMembersLog(CompactedLog):
    """The members topic on Kafka: a group-less reader of its one partition, and a writer
    started with it (every node heartbeats)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_MEMBERS_TOPIC,
        client_id: str = "ratelimiter-members",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            bootstrap,
            topic,
            MEMBERS_TOPIC_CONFIG,
            what="the members topic",
            client_id=client_id,
            options=options,
            eager_writer=True,
            publish_timeout_s=5.0,
        )
