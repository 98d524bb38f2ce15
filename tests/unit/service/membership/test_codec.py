"""Member records: round trip, and unusable ones refused with a kind."""

from __future__ import annotations

import orjson
import pytest

from service.errors import PoisonRecord
from service.membership.codec import Member, decode_member, encode_member
from service.membership.roster import Roster


def test_round_trip() -> None:
    member = Member("n1", "n1/abc", "10.0.0.1:8000", 1234, frozenset({0, 5}))
    assert decode_member(b"n1", encode_member(member)) == member
    assert b"grpc" not in encode_member(member)  # as nodes wrote it before gRPC forwarding
    serving = Member("n1", "n1/abc", "10.0.0.1:8000", 1234, frozenset({0}), "10.0.0.1:8081")
    assert decode_member(b"n1", encode_member(serving)) == serving


@pytest.mark.parametrize(
    ("key", "doc", "kind"),
    [
        (b"n1", b"{", "bad_json"),
        (b"n1", {"v": 2}, "unknown_version"),
        (b"n2", {"v": 1, "node": "n1", "replica": "r", "address": "h:1", "ts": 1}, "bad_key"),
        (b"n1", {"v": 1, "node": "n1", "replica": "r", "address": "h", "ts": 1}, "bad_field"),
        (b"n1", {"v": 1, "node": "n1", "replica": "r", "address": "h:1", "ts": -1}, "bad_field"),
        (b"n1", {"v": 1, "node": "n1", "replica": "", "address": "h:1", "ts": 1}, "bad_field"),
        (
            b"n1",
            {"v": 1, "node": "n1", "replica": "r", "address": "h:1", "ts": 1, "grpc": "h"},
            "bad_field",
        ),
        (
            b"n1",
            {"v": 1, "node": "n1", "replica": "r", "address": "h:1", "ts": 1, "ready": [-1]},
            "bad_field",
        ),
    ],
)
def test_unusable_records_are_poison(key: bytes, doc: object, kind: str) -> None:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    with pytest.raises(PoisonRecord) as info:
        decode_member(key, raw)
    assert info.value.kind == kind


def test_roster_expires_silent_members_and_forgets_those_that_left() -> None:
    roster = Roster(expiry_s=5)
    a = Member("a", "a/1", "h:1", 0)
    b = Member("b", "b/1", "h:2", 0)
    roster.record("a", a, 100)
    roster.record("b", b, 103)
    assert set(roster.live(104)) == {"a", "b"}
    assert set(roster.live(105.5)) == {"b"}  # a silent for more than 5 s
    roster.record("b", None, 106)
    assert roster.live(106) == {}
    roster.record("a", a, 90)  # an older record never wins over a newer one
    roster.record("a", a, 107)
    assert set(roster.live(107)) == {"a"}
