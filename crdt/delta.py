"""What one replica ships about one key: its own cells per epoch, with the floor it knows."""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    """One epoch of one key as seen by the writer.

    `floor` is the writer's cascaded floor for the epoch (a max-register: the bucket's
    theoretical arrival time minus the epoch's consumption); `p` and `n` are the
    writer's own absolute consumed and refunded cells in that epoch.
    """

    epoch: int
    floor: float
    p: int
    n: int


class Delta(NamedTuple):
    """A writer's state for one key: absolute values, so applying it twice is harmless."""

    key: str
    replica: str
    entries: tuple[Entry, ...]
