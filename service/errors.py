"""Errors of the node and its tools, rooted in the core's RateLimiterError."""

from __future__ import annotations

from crdt.errors import InvalidParameter, RateLimiterError

__all__ = [
    "BadRequest",
    "BrokerError",
    "ConfigError",
    "InvalidParameter",
    "PoisonRecord",
    "RateLimiterError",
    "TopicConfigMismatch",
    "Unauthorized",
    "Unavailable",
    "UnknownRule",
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


class UnknownRule(RateLimiterError):
    """A request named a limit that no rule defines."""

    http_status = 404


class BadRequest(RateLimiterError):
    """The request is malformed (headers, body); the message says how."""

    http_status = 400


class PoisonRecord(RateLimiterError):
    """A record on the state topic that cannot be applied; `kind` labels the metric."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Unavailable(RateLimiterError):
    """The node refuses to decide (fail mode `closed` while the broker is away)."""

    http_status = 503


class Unauthorized(RateLimiterError):
    """An admin request without the right bearer token (or admin endpoints disabled)."""

    http_status = 401
