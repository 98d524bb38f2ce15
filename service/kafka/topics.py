"""Topics on the broker: create one if missing, verify an existing one's partitions and config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from service.errors import BrokerError, ConfigError, TopicConfigMismatch

POLL_S = 0.1

# CreateTopics error codes that mean "your settings are wrong", not "the broker is unwell".
_TOPIC_EXISTS = 36
_SETTINGS_ERRORS = {37: "partitions", 38: "replication factor", 40: "config", 44: "policy"}
_UNKNOWN_TOPIC = 3


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """A topic as the broker holds it: partition count, replication and config values."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]


def topic_differences(
    description: TopicDescription, partitions: int, config: Mapping[str, str]
) -> list[str]:
    """Human-readable differences between the broker's topic and the wanted partitions and config.

    Only the keys in `config` are compared: anything else is a broker default we did not
    ask for. Numbers compare by value and comma lists as sets (`0.10` equals `0.1`).
    """
    differences: list[str] = []
    if description.partitions != partitions:
        differences.append(f"partitions is {description.partitions}, expected {partitions}")
    for key, wanted in sorted(config.items()):
        held = description.config.get(key)
        if held is None or _normalize(held) != _normalize(wanted):
            differences.append(f"{key} is {held!r}, expected {wanted!r}")
    return differences


def _normalize(value: str) -> tuple[str, ...]:
    items = []
    for item in value.split(","):
        text = item.strip()
        try:
            text = repr(float(text))
        except ValueError:
            text = text.lower()
        items.append(text)
    return tuple(sorted(items))


@asynccontextmanager
async def admin_client(
    bootstrap: str, options: Mapping[str, Any] | None = None
) -> AsyncIterator[Any]:
    """A started AIOKafkaAdminClient, closed on exit; BrokerError when Kafka is unreachable.

    `options` are extra client settings (TLS and SASL: see Settings.kafka_options).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="ratelimiter-topic", **(options or {})
    )
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        yield admin
    except KafkaError as exc:
        raise BrokerError(f"Kafka at {bootstrap} failed a topic request: {exc}") from exc
    finally:
        await admin.close()


async def describe_topic(
    bootstrap: str, name: str, options: Mapping[str, Any] | None = None
) -> TopicDescription | None:
    """The topic as the broker holds it, or None when it does not exist."""
    async with admin_client(bootstrap, options) as admin:
        return await _describe(admin, name)


async def describe_topic_config(bootstrap: str, name: str) -> dict[str, str]:
    """Every config value the broker holds for the topic (defaults included)."""
    description = await describe_topic(bootstrap, name)
    if description is None:
        raise BrokerError(f"topic {name!r} does not exist on {bootstrap}")
    return dict(description.config)


async def ensure_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    config: Mapping[str, str],
    *,
    replication_factor: int = 1,
    wait_s: float = 30.0,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Create topic `name` if missing; check an existing one has these partitions and config.

    Raises TopicConfigMismatch naming every difference. Replication is not compared: an
    operator may raise it by reassignment without changing what the topic means.
    """
    wanted = dict(config)
    deadline = time.monotonic() + wait_s
    async with admin_client(bootstrap, options) as admin:
        if name not in await admin.list_topics():
            await _create(admin, NewTopic(name, partitions, replication_factor, None, wanted))
        description = await _wait_until_led(admin, name, deadline)
    differences = topic_differences(description, partitions, wanted)
    if differences:
        raise TopicConfigMismatch(
            f"topic {name!r} on {bootstrap} exists with a different configuration: "
            + "; ".join(differences)
            + ". Use another topic name, or delete or reconfigure this one."
        )


async def _create(admin: Any, topic: NewTopic) -> None:
    response = await admin.create_topics([topic])
    for topic_name, code, message in response.topic_errors:
        if code in (0, _TOPIC_EXISTS):  # exists: another node won the race; verified next
            continue
        if code in _SETTINGS_ERRORS:
            raise ConfigError(
                f"Kafka refused the {_SETTINGS_ERRORS[code]} of topic {topic_name!r}: {message}"
            )
        raise BrokerError(f"creating topic {topic_name!r} failed (error {code}): {message}")


async def _wait_until_led(admin: Any, name: str, deadline: float) -> TopicDescription:
    """Describe the topic once every partition has a leader (fresh topics take a moment)."""
    while True:
        description = await _describe(admin, name, require_leaders=True)
        if description is not None:
            return description
        if time.monotonic() >= deadline:
            raise BrokerError(f"topic {name!r} has no leader for every partition yet")
        await asyncio.sleep(POLL_S)


async def _describe(
    admin: Any, name: str, *, require_leaders: bool = False
) -> TopicDescription | None:
    # list_topics first: a metadata request naming a missing topic would auto-create it
    # on brokers with auto.create.topics.enable (aiokafka allows auto-creation).
    if name not in await admin.list_topics():
        return None
    [metadata] = await admin.describe_topics([name])
    if metadata["error_code"] == _UNKNOWN_TOPIC:
        return None
    leaders_missing = any(p["leader"] < 0 for p in metadata["partitions"])
    if require_leaders and (metadata["error_code"] != 0 or leaders_missing):
        return None  # just created (here or by a peer): leaders are still being elected
    if metadata["error_code"] != 0:
        raise BrokerError(f"describing topic {name!r} failed (error {metadata['error_code']})")
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    [resource] = response.to_object()["resources"]
    if resource["error_code"] != 0:
        raise BrokerError(
            f"describing the config of topic {name!r} failed (error {resource['error_code']}): "
            f"{resource['error_message']}"
        )
    partitions = metadata["partitions"]
    return TopicDescription(
        name=name,
        partitions=len(partitions),
        replication_factor=len(partitions[0]["replicas"]) if partitions else 0,
        config={
            entry["config_names"]: entry["config_value"]
            for entry in resource["config_entries"]
            if entry["config_value"] is not None
        },
    )
