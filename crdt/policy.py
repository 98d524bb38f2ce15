"""Validated limit parameters: rates, capacities, costs, windows and sync timing."""

from __future__ import annotations

import math
from dataclasses import dataclass

from crdt.errors import InvalidParameter

# Admission tolerance in seconds of bucket time: absorbs float rounding of
# `floor + used * interval` so that exactly C requests fit a bucket of capacity C.
EPS_TIME = 1e-7
# Bounds of a deployable limit, within which every answer derived from it stays finite
# and representable (headers, epochs, floors); the core itself computes beyond them.
# A bucket refills fully, or a window spans, at most about a year; a window lasts at
# least a millisecond; at most a billion tokens a second.
MAX_FULL_S = 366 * 86_400.0
MIN_WINDOW_S = 0.001
MAX_RATE = 1e9


def positive_rate(name: str, value: object) -> float:
    """A finite real number > 0 (tokens per second or a duration), or InvalidParameter."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidParameter(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def positive_int(name: str, value: object) -> int:
    """An integer >= 1 (capacities, limits, costs), or InvalidParameter."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        else:
            raise InvalidParameter(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise InvalidParameter(f"{name} must be >= 1, got {value!r}")
    return value


def finite_time(name: str, value: object) -> float:
    """A finite timestamp in seconds, or InvalidParameter."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidParameter(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def bucket_problem(rate: float, capacity: int) -> str | None:
    """Why a bucket of `capacity` at `rate` per second is out of bounds (None: it is not)."""
    if rate > MAX_RATE:
        return f"rate: at most {MAX_RATE:g} per second, got {rate:g}"
    if capacity / rate > MAX_FULL_S:
        return (
            f"rate: a bucket of {capacity} must refill within {MAX_FULL_S / 86_400:g} days, "
            f"so rate >= {capacity / MAX_FULL_S:.3g} per second; got {rate:g}"
        )
    return None


def window_problem(window: float) -> str | None:
    """Why a window of `window` seconds is out of bounds (None: it is not)."""
    if not MIN_WINDOW_S <= window <= MAX_FULL_S:
        return f"window_s: from {MIN_WINDOW_S:g} s to {MAX_FULL_S:g} s, got {window:g}"
    return None


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    """A token bucket: `capacity` tokens at most, refilled at `rate` tokens per second."""

    rate: float
    capacity: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", positive_rate("rate", self.rate))
        object.__setattr__(self, "capacity", positive_int("capacity", self.capacity))

    @property
    def interval(self) -> float:
        """Seconds of refill per token (GCRA emission interval)."""
        return 1.0 / self.rate


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """At most `limit` cost per window of `window` seconds (fixed or sliding)."""

    limit: int
    window: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "limit", positive_int("limit", self.limit))
        object.__setattr__(self, "window", positive_rate("window", self.window))


@dataclass(frozen=True, slots=True)
class SyncTiming:
    """How consumption is grouped in time and when a group can no longer change.

    `epoch` is the width of a consumption epoch; `seal_after` is how long after an
    epoch ends every replica must have received its cells (sync delay bound). Cells
    of sealed epochs are folded away; cells arriving later are applied as debt.
    """

    epoch: float = 1.0
    seal_after: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epoch", positive_rate("epoch", self.epoch))
        object.__setattr__(self, "seal_after", positive_rate("seal_after", self.seal_after))
        if self.seal_after <= self.epoch:
            # Writers repeat their previous epoch's cell during the next epoch, so
            # receivers must keep an epoch open for longer than one epoch.
            raise InvalidParameter(
                f"seal_after ({self.seal_after}) must exceed epoch ({self.epoch})"
            )


def check_cost(cost: object) -> int:
    """A request cost: an integer >= 1."""
    return positive_int("cost", cost)
