"""Wire format of the members topic: one compacted record per node id, versioned JSON.

Key: the node id. Value (a tombstone when the node left gracefully):
{"v":1,"node":ID,"replica":INCARNATION,"address":"host:port","ts":ms,"ready":[partitions]}
and "grpc":"host:port" when the node serves Envoy's rate limit service (--grpc-port).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from service.errors import PoisonRecord

VERSION = 1
MAX_PARTITION = 10_000
MAX_TEXT = 256


@dataclass(frozen=True, slots=True)
class Member:
    """A node as it announced itself: id, incarnation, HTTP address, heartbeat time (Unix
    ms), the partitions it has read to their end and answers for, and its gRPC address
    ("" when it serves no gRPC)."""

    node: str
    replica: str
    address: str
    heartbeat_ms: int
    ready: frozenset[int] = frozenset()
    grpc: str = ""


def encode_member(member: Member) -> bytes:
    """The value of a member record."""
    doc: dict[str, object] = {
        "v": VERSION,
        "node": member.node,
        "replica": member.replica,
        "address": member.address,
        "ts": member.heartbeat_ms,
        "ready": sorted(member.ready),
    }
    if member.grpc:
        doc["grpc"] = member.grpc
    return orjson.dumps(doc)


def decode_member(key: bytes | None, value: bytes) -> Member:
    """A member record's value; PoisonRecord(kind, message) when unusable."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord("bad_json", f"member record is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise PoisonRecord("unknown_version", "member record of an unknown version")
    node, replica, address = (_text(doc, name) for name in ("node", "replica", "address"))
    ts, ready = doc.get("ts"), doc.get("ready", [])
    if key is not None and key != node.encode():
        raise PoisonRecord("bad_key", f"member record key {key[:80]!r} is not its node id")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise PoisonRecord("bad_field", "ts must be a non-negative integer")
    if not isinstance(ready, list) or not all(
        type(p) is int and 0 <= p < MAX_PARTITION for p in ready
    ):
        raise PoisonRecord("bad_field", "ready must be a list of partition numbers")
    grpc = _text(doc, "grpc") if "grpc" in doc else ""
    for name, where in (("address", address), ("grpc", grpc)):
        host, _, port = where.rpartition(":")
        if where and (not host or not port.isdigit()):
            raise PoisonRecord("bad_field", f"{name} {where[:80]!r} is not host:port")
    return Member(node, replica, address, ts, frozenset(ready), grpc)


def _text(doc: dict[str, object], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise PoisonRecord("bad_field", f"{name} must be a string of 1-{MAX_TEXT} characters")
    return value
