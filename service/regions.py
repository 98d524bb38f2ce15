"""Regions: which mirrored state topics a node merges, and how fresh each remote region is.

Each region has its own Kafka cluster; MirrorMaker 2 copies every region's state topic to
the others as `<region>.<topic>` (its DefaultReplicationPolicy). A node merges its local
topic and those copies exactly like its local peers' records: cells are absolute and per
writer, so late and repeated records are harmless.

Freshness: every node of a region writes at least once per --region-heartbeat-s (an empty
record when it has nothing else to say), stamped by its own broker (LogAppendTime), and
MirrorMaker keeps that stamp. A remote region's lag is now (this node's clock, kept on
its own broker's) minus the stamp of the newest record merged from it: an idle region
keeps writing heartbeats, so it is fresh; a cut mirror, a dead remote cluster or a region
whose every node is gone all look the same from here: stale once the lag passes
--region-stale-s. Pure logic: no Kafka, no clock reads (time is a parameter).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

SEP = "."  # MirrorMaker's replication policy separator: <source alias>.<topic>
_NAME_LIST = re.compile(r"^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$")

RegionState = Literal["fresh", "stale", "catching_up"]


def region_of(topic: str) -> str:
    """The source region of a mirrored topic: its name up to the first '.'."""
    return topic.partition(SEP)[0]


@dataclass(frozen=True, slots=True)
class TopicSelector:
    """The mirrored state topics a node of `region` merges beside its `local_topic`:
    `names` (expected even before they exist) or every topic `pattern` matches in full."""

    local_topic: str
    region: str
    names: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, value: str | None, local_topic: str, region: str) -> TopicSelector:
        """From --remote-topics: topic names and commas only is a list; anything else is a
        regular expression; unset is every `<region>.<local_topic>`. ValueError when bad."""
        if value is None:
            pattern = re.compile(r"[A-Za-z0-9_-]+" + re.escape(SEP + local_topic))
            return cls(local_topic, region, pattern=pattern)
        text = value.replace(" ", "")
        if _NAME_LIST.match(text):
            names = tuple(dict.fromkeys(text.split(",")))
            for name in names:
                if SEP not in name or not region_of(name):
                    raise ValueError(f"{name!r} names no source region (<region>.<topic>)")
                if name == local_topic or region_of(name) == region:
                    raise ValueError(f"{name!r} is this region's own topic, not a remote one")
            return cls(local_topic, region, names=names)
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"neither topic names nor a regular expression: {exc}") from exc
        return cls(local_topic, region, pattern=pattern)

    def matches(self, topic: str) -> bool:
        """Whether `topic` is a remote region's state topic this node merges."""
        if topic == self.local_topic or SEP not in topic or region_of(topic) == self.region:
            return False
        if self.pattern is not None:
            return self.pattern.fullmatch(topic) is not None
        return topic in self.names

    def expected_regions(self) -> tuple[str, ...]:
        """Regions named up front (a list): they count, stale, before their topic appears."""
        return tuple(dict.fromkeys(region_of(name) for name in self.names))


@dataclass(slots=True)
class RegionLink:
    """What this node knows of one remote region."""

    region: str
    topics: set[str] = field(default_factory=set)
    newest: float = -math.inf  # source stamp (cluster seconds) of the newest record merged
    records: int = 0
    # When its topic was found (cluster seconds): a region found just now, with nothing
    # mirrored yet, gets --region-stale-s to show up before it counts as stale.
    found_at: float = -math.inf
    catching_up: bool = False  # a topic of it is being read to its end


class RegionTracker:
    """Lag and freshness of every remote region, from the source stamps of their records."""

    def __init__(self, stale_s: float, expected: tuple[str, ...] = ()) -> None:
        self.stale_s = stale_s
        self.links: dict[str, RegionLink] = {name: RegionLink(name) for name in expected}

    @property
    def count(self) -> int:
        """R: this region and every remote one known."""
        return 1 + len(self.links)

    def add_topic(self, topic: str, now: float = -math.inf) -> RegionLink:
        """A remote topic found at `now`: its region is known from now on."""
        region = region_of(topic)
        link = self.links.get(region)
        if link is None:
            link = self.links[region] = RegionLink(region)
        if topic not in link.topics:
            link.topics.add(topic)
            link.found_at = max(link.found_at, now)
        return link

    def observe(self, region: str, stamp: float, records: int = 1) -> None:
        """`records` merged from `region`, the newest stamped `stamp` by its broker."""
        link = self.links.get(region)
        if link is None:
            link = self.links[region] = RegionLink(region)
        if stamp > link.newest:
            link.newest = stamp
        link.records += records

    def lag(self, region: str, now: float) -> float:
        """Seconds since the newest record merged from `region` was written (inf: none)."""
        link = self.links.get(region)
        if link is None or link.newest == -math.inf:
            return math.inf
        return max(0.0, now - link.newest)

    def state(self, region: str, now: float) -> RegionState:
        """`fresh` within --region-stale-s, `catching_up` while its history is read."""
        link = self.links.get(region)
        if link is None:
            return "stale"
        if link.catching_up:
            return "catching_up"
        heard = max(link.newest, link.found_at)
        return "fresh" if now - heard <= self.stale_s else "stale"

    def stale(self, now: float) -> list[str]:
        """Remote regions stale now, by name (not those being read: their news is coming)."""
        return sorted(r for r in self.links if self.state(r, now) == "stale")
