"""The local single-node KRaft Kafka broker: jars from Maven Central, no Docker needed."""

from __future__ import annotations

from service.broker.manager import DEFAULT_PORT, BrokerStatus, LocalBroker, default_data_dir

__all__ = ["DEFAULT_PORT", "BrokerStatus", "LocalBroker", "default_data_dir"]
