"""Root exceptions of the project; the service's errors derive from these."""

from __future__ import annotations


class RateLimiterError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidParameter(RateLimiterError, ValueError):
    """A rate, capacity, cost, time or other parameter is out of its domain."""
