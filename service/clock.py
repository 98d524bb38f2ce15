"""The cluster clock: seconds since a fixed origin, kept on the broker's time.

Floors and epochs are absolute times on the wire, so a node whose clock runs ahead would
push every peer's view of a key into the future, and a clock stepping back would deny
users locally. Two defences live here:

- `AnchoredClock` reads the wall clock once and then advances with the monotonic clock:
  NTP steps of the wall clock (either way) never reach decisions.
- `DisciplinedClock` measures this node against the broker, which stamps every record of
  the state topic (`message.timestamp.type=LogAppendTime`): a publish sent at s and
  acknowledged at a (our clock) that the broker stamped b gives the offset b - (s + a) / 2
  within (a - s) / 2. In `correct` mode the clock steps by the offset of the tightest
  recent sample; in `refuse` mode it keeps its time and the node is not ready while the
  offset exceeds the maximum skew; `off` only measures.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol

# 2025-01-01T00:00:00Z. Every node must use the same origin: floors are absolute times
# on the wire. Small numbers keep float seconds precise to ~10 ns for decades.
ORIGIN = 1_735_689_600.0

ClockMode = Literal["correct", "refuse", "off"]
CLOCK_MODES: tuple[ClockMode, ...] = ("correct", "refuse", "off")
log = logging.getLogger("ratelimiter.clock")

SAMPLES = 8  # recent round trips considered; the tightest one is believed
STAMP_RESOLUTION_S = 0.001  # brokers stamp in milliseconds
MIN_STEP_S = 0.002  # offsets smaller than this (or than their uncertainty) are noise


class Clock(Protocol):
    """Seconds on the shared cluster clock."""

    def __call__(self) -> float: ...


def system_clock() -> float:
    """The wall clock since ORIGIN (follows every NTP step; see AnchoredClock)."""
    return time.time() - ORIGIN


class AnchoredClock:
    """The wall clock read once at construction, then advanced by the monotonic clock."""

    def __init__(
        self,
        wall: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._monotonic = monotonic if monotonic is not None else time.monotonic
        read_wall = wall if wall is not None else time.time
        self._anchor = read_wall() - ORIGIN - self._monotonic()

    def __call__(self) -> float:
        return self._monotonic() + self._anchor


class Stamp(NamedTuple):
    """One round trip to the broker: sent and acknowledged on our clock, stamped by it."""

    sent: float
    stamped: float
    acked: float


class Sample(NamedTuple):
    """Broker time minus ours (seconds), and how far off that can be."""

    offset: float
    uncertainty: float


class DisciplinedClock:
    """`source` (the node's own cluster clock) corrected towards the broker's time.

    `observe` takes each round trip; `offset` is broker time minus this clock as
    corrected, `raw_offset` the same for `source` alone; `problem` says why the node must
    not decide (readiness), None when it may.
    """

    def __init__(self, source: Clock, mode: ClockMode = "correct", max_skew_s: float = 1.0) -> None:
        self.source = source
        self.mode = mode
        self.max_skew_s = max_skew_s
        self.correction = 0.0
        self.steps = 0
        self._samples: deque[Sample] = deque(maxlen=SAMPLES)

    def __call__(self) -> float:
        return self.source() + self.correction

    @property
    def measured(self) -> Sample | None:
        """The tightest recent sample (offset of the corrected clock), None before any."""
        if not self._samples:
            return None
        return min(self._samples, key=lambda s: s.uncertainty)

    @property
    def offset(self) -> float:
        """Broker time minus this clock (NaN before the first round trip)."""
        best = self.measured
        return math.nan if best is None else best.offset

    @property
    def raw_offset(self) -> float:
        """Broker time minus the uncorrected source clock (NaN before the first round trip)."""
        return self.offset + self.correction

    def observe(self, stamp: Stamp) -> None:
        """Take one round trip; in `correct` mode, step to the broker's time when the
        tightest recent sample says this clock is off by more than its uncertainty."""
        sent, stamped, acked = stamp
        if not (math.isfinite(sent) and math.isfinite(stamped) and acked >= sent):
            return
        uncertainty = (acked - sent) / 2 + STAMP_RESOLUTION_S
        self._samples.append(Sample(stamped - (sent + acked) / 2, uncertainty))
        best = self.measured
        assert best is not None
        if self.mode != "correct" or best.uncertainty > self.max_skew_s:
            return
        if abs(best.offset) > max(best.uncertainty, MIN_STEP_S):
            step = best.offset
            self.correction += step
            self.steps += 1
            log.log(
                logging.WARNING if abs(step) > self.max_skew_s else logging.INFO,
                "clock stepped %+.3f s to the broker's time (within %.3f s; %+.3f s in all)",
                step,
                best.uncertainty,
                self.correction,
            )
            # Earlier samples measured the clock before this step: shift them with it.
            shifted = [Sample(s.offset - step, s.uncertainty) for s in self._samples]
            self._samples.clear()
            self._samples.extend(shifted)

    def problem(self) -> str | None:
        """Why this node's clock must not be trusted to decide, or None."""
        best = self.measured
        if best is None or self.mode == "off":
            return None
        if best.uncertainty > self.max_skew_s:
            return (
                f"the clock offset from the broker is unknown within {self.max_skew_s:g} s "
                f"(round trips take {2 * best.uncertainty:.3f} s)"
            )
        if self.mode == "refuse" and abs(best.offset) - best.uncertainty > self.max_skew_s:
            return (
                f"this node's clock is {-best.offset:+.3f} s from the broker's, beyond "
                f"--max-clock-skew-s {self.max_skew_s:g} (fix NTP, or run with "
                "--clock-mode correct)"
            )
        return None


def to_unix_ms(cluster_seconds: float) -> int:
    """Cluster seconds to Unix milliseconds (for Kafka timestamps and lag)."""
    return int((cluster_seconds + ORIGIN) * 1000)


def from_unix_ms(unix_ms: int) -> float:
    """Unix milliseconds (a record's timestamp) to cluster seconds."""
    return unix_ms / 1000 - ORIGIN
