"""The live members as this node sees them: the newest record per node id, expired when silent."""

from __future__ import annotations

from service.membership.codec import Member


class Roster:
    """Members by node id with the time each was last heard of; silent ones expire.

    Times are seconds on one clock given by the caller (never read here).
    """

    def __init__(self, expiry_s: float) -> None:
        self.expiry_s = expiry_s
        self.members: dict[str, Member] = {}
        self.heard: dict[str, float] = {}

    def record(self, node: str, member: Member | None, at: float) -> None:
        """A heartbeat of `node` heard at `at` (None: it left)."""
        if member is None:
            self.members.pop(node, None)
            self.heard.pop(node, None)
            return
        if at >= self.heard.get(node, float("-inf")):
            self.members[node] = member
            self.heard[node] = at

    def live(self, now: float) -> dict[str, Member]:
        """Members heard within the expiry time before `now`."""
        since = now - self.expiry_s
        return {n: m for n, m in self.members.items() if self.heard[n] >= since}

    def forget_expired(self, now: float) -> None:
        """Drop members silent for ten expiry times (they are not coming back as they were)."""
        since = now - 10 * self.expiry_s
        for node in [n for n, at in self.heard.items() if at < since]:
            del self.members[node]
            del self.heard[node]
