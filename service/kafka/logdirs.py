"""Partition sizes on the brokers' disks: Kafka's DescribeLogDirs (API 35 v1; not in aiokafka)."""

from __future__ import annotations

from typing import Any

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String

DESCRIBE_LOG_DIRS = 35


class DescribeLogDirsResponse_v1(Response):  # type: ignore[misc]  # aiokafka is untyped
    """Per log dir: per topic partition, its size in bytes."""

    API_KEY = DESCRIBE_LOG_DIRS
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            Array(
                ("error_code", Int16),
                ("log_dir", String("utf-8")),
                (
                    "topics",
                    Array(
                        ("name", String("utf-8")),
                        (
                            "partitions",
                            Array(
                                ("partition_index", Int32),
                                ("partition_size", Int64),
                                ("offset_lag", Int64),
                                ("is_future_key", Boolean),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    )


class DescribeLogDirsRequest_v1(RequestStruct):  # type: ignore[misc]
    """Sizes of the given topics' partitions (v1: the oldest version Kafka 4 still serves)."""

    API_KEY = DESCRIBE_LOG_DIRS
    API_VERSION = 1
    RESPONSE_TYPE = DescribeLogDirsResponse_v1
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirsRequest(Request[DescribeLogDirsRequest_v1]):  # type: ignore[misc]
    """DescribeLogDirs for some partitions of one topic."""

    API_KEY = DESCRIBE_LOG_DIRS

    def __init__(self, topic: str, partitions: list[int]) -> None:
        self._topic = topic
        self._partitions = partitions

    def build(self, request_struct_class: type[DescribeLogDirsRequest_v1]) -> Any:
        return request_struct_class([(self._topic, self._partitions)])


async def partition_sizes(admin: Any, topic: str, partitions: list[int]) -> dict[int, int]:
    """Bytes on disk per partition of `topic` (leader and replicas summed per broker dir:
    with replication factor 1 that is the log's size), asking every broker."""
    cluster = await admin.describe_cluster()
    sizes: dict[int, int] = {}
    for broker in cluster["brokers"]:
        response = await admin._client.send(
            broker["node_id"], DescribeLogDirsRequest(topic, partitions)
        )
        for error_code, _dir, topics in response.results:
            if error_code:
                continue
            for name, parts in topics:
                if name != topic:
                    continue
                for index, size, _lag, is_future in parts:
                    if not is_future:
                        sizes[index] = sizes.get(index, 0) + size
    return sizes
