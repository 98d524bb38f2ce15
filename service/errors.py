"""Errors of the node and its tools, rooted in the core's RateLimiterError."""

from __future__ import annotations

from crdt.errors import InvalidParameter, RateLimiterError

__all__ = [
    "BrokerError",
    "ConfigError",
    "InvalidParameter",
    "RateLimiterError",
    "TopicConfigMismatch",
]


class ConfigError(RateLimiterError):
    """Settings or a rules file are invalid; the message names the setting."""

    exit_code = 2


class BrokerError(RateLimiterError):
    """The local Kafka broker could not be fetched, started, reached or stopped."""

    exit_code = 1


class TopicConfigMismatch(RateLimiterError):
    """The state topic exists with a configuration different from ours."""

    exit_code = 1
