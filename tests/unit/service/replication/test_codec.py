"""Wire format of the state topic: round trips, and every poison kind refused by name."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.delta import Delta, Entry
from service.engine import MAX_KEY_BYTES
from service.errors import InvalidParameter, PoisonRecord
from service.replication import codec
from service.rules.model import RULE_NAME_MAX

DELTA = Delta("alice", "node-a/1", (Entry(7, 12.5, 3, 0), Entry(8, 13.0, 5, 1)))


def test_key_record_round_trip() -> None:
    value = codec.encode_key_record("default", DELTA, ts_ms=1_700_000_000_123)

    decoded = codec.decode(value)

    assert decoded.items == [("default", DELTA)]
    assert decoded.ts_ms == decoded.since_ms == 1_700_000_000_123
    doc = orjson.loads(value)
    assert doc["v"] == codec.VERSION
    assert doc["kind"] == "key"


def test_records_of_one_writer_share_its_replica_id() -> None:
    """A key merged from a key record keeps its writer's id (the peer's cell inline): one
    string for every record of a writer, not one per record (80 MB for 1M key records)."""
    replicas = [
        codec.decode(codec.encode_key_record("default", d, ts_ms=1)).items[0][1].replica
        for d in (DELTA, DELTA._replace(key="bob"), DELTA._replace(key="carol"))
    ]
    assert replicas == ["node-a/1"] * 3
    assert replicas[0] is replicas[1] is replicas[2]


def test_batch_record_round_trip() -> None:
    other = Delta("bob", "node-a/1", (Entry(-3, -1.25, 0, 2),))
    items = [("default", DELTA), ("gold", other)]

    decoded = codec.decode(codec.encode_batch("node-a/1", items, since_ms=10, ts_ms=30))

    assert decoded.items == items
    assert (decoded.since_ms, decoded.ts_ms) == (10, 30)


def test_record_keys() -> None:
    assert codec.key_record_key("default", "alice", "a/1") == b"alice\x1fdefault\x1fa/1"
    assert codec.batch_record_key("a/1", 5) == b"\x1fbatch\x1fa/1\x1f5"


def test_tombstone_decodes_to_nothing() -> None:
    assert codec.decode(None).items == []


texts = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x1f"),
    min_size=1,
    max_size=40,
)
entries = st.builds(
    Entry,
    st.integers(-codec.MAX_EPOCH, codec.MAX_EPOCH),
    st.floats(-codec.MAX_ABS_FLOOR, codec.MAX_ABS_FLOOR, allow_nan=False),
    st.integers(0, codec.MAX_CELL),
    st.integers(0, codec.MAX_CELL),
)
entry_tuples = st.lists(entries, min_size=1, max_size=codec.MAX_ENTRIES).map(tuple)
rule_names = st.text("abcdefgh-_.0123456789", min_size=1, max_size=RULE_NAME_MAX)
times = st.integers(0, 2**53)
replicas = st.text(
    st.characters(exclude_categories=["Cs"]), min_size=1, max_size=codec.MAX_REPLICA_CHARS
)


@given(
    rule=rule_names,
    user=texts,
    replica=replicas,
    entries=entry_tuples,
    ts=times,
)
def test_key_record_round_trip_property(
    rule: str, user: str, replica: str, entries: tuple[Entry, ...], ts: int
) -> None:
    delta = Delta(user, replica, entries)

    decoded = codec.decode(codec.encode_key_record(rule, delta, ts))

    assert decoded.items == [(rule, delta)]
    assert decoded.ts_ms == ts


@given(
    replica=replicas,
    items=st.lists(st.tuples(rule_names, texts, entry_tuples), max_size=8),
    since=times,
    ts=times,
)
def test_batch_record_round_trip_property(
    replica: str,
    items: list[tuple[str, str, tuple[Entry, ...]]],
    since: int,
    ts: int,
) -> None:
    deltas = [(rule, Delta(user, replica, e)) for rule, user, e in items]

    decoded = codec.decode(codec.encode_batch(replica, deltas, since, ts))

    assert decoded.items == deltas
    assert (decoded.since_ms, decoded.ts_ms) == (since, ts)


_DROP = object()  # a field to leave out


def _key(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "v": 1,
        "kind": "key",
        "rule": "default",
        "user": "alice",
        "replica": "a/1",
        "entries": [[1, 2.0, 3, 0]],
        "ts": 5,
    }
    doc.update(changes)
    return orjson.dumps({k: v for k, v in doc.items() if v is not _DROP})


def _batch(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "v": 1,
        "kind": "batch",
        "replica": "a/1",
        "since": 1,
        "ts": 5,
        "items": [["default", "alice", [[1, 2.0, 3, 0]]]],
    }
    doc.update(changes)
    return orjson.dumps({k: v for k, v in doc.items() if v is not _DROP})


POISON: list[tuple[str, bytes]] = [
    ("bad_json", b"{not json"),
    ("bad_json", b"\xff\xfe"),
    ("bad_json", b""),
    ("bad_shape", b"[1, 2]"),
    ("bad_shape", b'"text"'),
    ("bad_shape", _key(kind="snapshot")),
    ("bad_shape", _key(entries=[])),
    ("bad_shape", _key(entries=[[1, 2.0, 3]])),
    ("bad_shape", _key(entries="none")),
    ("bad_shape", _key(entries=[[1, 2.0, 3, 0]] * (codec.MAX_ENTRIES + 1))),
    ("bad_shape", _batch(items={"a": 1})),
    ("unknown_version", _key(v=2)),
    ("unknown_version", _key(v="1")),
    ("unknown_version", _key(v=_DROP)),
    ("bad_field", _key(replica=_DROP)),
    ("bad_field", _key(replica="")),
    ("bad_field", _key(replica="r" * (codec.MAX_REPLICA_CHARS + 1))),
    ("bad_field", _key(rule=7)),
    ("bad_field", _key(user="")),
    ("bad_field", _key(entries=[[1, "2.0", 3, 0]])),
    ("bad_field", _key(entries=[[1, True, 3, 0]])),
    ("absurd_value", _key(ts=-1)),
    ("absurd_value", _key(ts=2**60)),
    ("absurd_value", _key(ts=1.5)),
    ("absurd_value", _batch(since=-5)),
    ("absurd_value", _key(entries=[[2**41, 2.0, 3, 0]])),
    ("absurd_value", _key(entries=[[1, 1e13, 3, 0]])),
    ("absurd_value", _key(entries=[[1, 2.0, -1, 0]])),
    ("absurd_value", _key(entries=[[1, 2.0, 3, codec.MAX_CELL + 1]])),
    ("absurd_value", _key(entries=[[1, 2.0, False, 0]])),
    ("huge_key", _key(user="u" * (MAX_KEY_BYTES + 1))),
    ("huge_key", _key(user="é" * 129)),  # 258 bytes in 129 characters
]


@pytest.mark.parametrize(("kind", "value"), POISON)
def test_poison_records_are_refused_by_kind(kind: str, value: bytes) -> None:
    with pytest.raises(PoisonRecord) as caught:
        codec.decode(value)

    assert caught.value.kind == kind
    assert str(caught.value)


def test_every_poison_kind_is_covered() -> None:
    assert {kind for kind, _ in POISON} == {
        "bad_json",
        "bad_shape",
        "unknown_version",
        "bad_field",
        "absurd_value",
        "huge_key",
    }


def test_user_of_exactly_the_limit_is_accepted() -> None:
    decoded = codec.decode(_key(user="u" * MAX_KEY_BYTES))

    assert decoded.items[0][1].key == "u" * MAX_KEY_BYTES


def test_integral_floor_decodes_as_float() -> None:
    [(_, delta)] = codec.decode(_key(entries=[[1, 2, 3, 0]])).items

    assert delta.entries == (Entry(1, 2.0, 3, 0),)
    assert isinstance(delta.entries[0].floor, float)


BAD_ITEMS: list[tuple[str, Any]] = [
    ("bad_shape", ["default", "alice"]),
    ("bad_field", [None, "alice", [[1, 2.0, 3, 0]]]),
    ("huge_key", ["default", "x" * 300, [[1, 2.0, 3, 0]]]),
    ("absurd_value", ["default", "bob", [[1, 2.0, -1, 0]]]),
    ("bad_shape", ["default", "bob", []]),
]


@pytest.mark.parametrize(("kind", "item"), BAD_ITEMS)
def test_a_bad_batch_item_skips_itself_only(kind: str, item: Any) -> None:
    good = ["default", "carol", [[1, 2.0, 3, 0]]]
    decoded = codec.decode(_batch(items=[good, item, good]))

    assert [delta.key for _, delta in decoded.items] == ["carol", "carol"]
    assert [k for k, _ in decoded.skipped] == [kind]


def test_empty_batch_decodes_to_no_items() -> None:
    assert codec.decode(_batch(items=[])).items == []


# Computed with org.apache.kafka.common.utils.Utils from kafka-clients 4.1.1:
# (UTF-8 text, Utils.murmur2 as a signed int, Utils.toPositive(murmur2) % 12).
JAVA_VECTORS = [
    ("", 275646681, 9),
    ("21", -973932308, 0),
    ("foobar", -790332482, 6),
    ("abc", 479470107, 3),
    ("alice", 1951417749, 9),
    ("bob", -2048144690, 6),
    ("user-42", 1459644460, 4),
    ("ünïcødé", 2147241326, 2),
    ("a-little-bit-longer-string", -1486304829, 11),
]


@pytest.mark.parametrize(("text", "java_hash", "java_partition"), JAVA_VECTORS)
def test_a_users_partition_is_kafkas_murmur2_partition_of_the_user_id(
    text: str, java_hash: int, java_partition: int
) -> None:
    assert codec.murmur2(text.encode()) == java_hash & 0xFFFFFFFF
    assert codec.partition_for_user(text, 12) == java_partition


@given(user=st.text(), n=st.integers(min_value=1, max_value=1000))
def test_every_record_of_a_user_shares_one_partition(user: str, n: int) -> None:
    partition = codec.partition_for_user(user, n)
    assert 0 <= partition < n
    assert partition == (codec.murmur2(user.encode()) & 0x7FFFFFFF) % n


def test_the_compiled_murmur2_is_built_by_the_install() -> None:
    # `make test` installs with a C compiler: the fallback must not pass for it silently.
    from service.replication import _murmur2

    assert codec.COMPILED_MURMUR2
    assert _murmur2.murmur2(b"") == codec.reference_murmur2(b"")


@given(data=st.binary(max_size=300))
def test_the_compiled_murmur2_equals_the_reference(data: bytes) -> None:
    from service.replication._murmur2 import murmur2

    assert murmur2(data) == codec.reference_murmur2(data)
    assert murmur2(bytearray(data)) == murmur2(memoryview(data)) == murmur2(data)


def test_the_compiled_murmur2_refuses_what_is_not_bytes() -> None:
    from service.replication._murmur2 import murmur2

    with pytest.raises(TypeError):
        murmur2("text")  # type: ignore[arg-type]


def test_zero_partitions_is_an_error() -> None:
    with pytest.raises(InvalidParameter, match="at least one partition"):
        codec.partition_for_user("alice", 0)
