"""Record keys and the user partitioner agree with Kafka's Java default partitioner."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import InvalidParameter
from service.partitioner import (
    KEY_SEPARATOR,
    murmur2,
    partition_for_key,
    partition_for_user,
    record_key,
    split_key,
    user_of,
    user_partitioner,
)

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

replicas = st.text(min_size=1).filter(lambda s: KEY_SEPARATOR not in s)


@pytest.mark.parametrize(("text", "java_hash", "java_partition"), JAVA_VECTORS)
def test_murmur2_and_partition_match_the_java_client(
    text: str, java_hash: int, java_partition: int
) -> None:
    assert murmur2(text.encode()) == java_hash & 0xFFFFFFFF
    assert partition_for_user(text, 12) == java_partition


@pytest.mark.parametrize(("text", "java_hash", "java_partition"), JAVA_VECTORS)
def test_key_partition_ignores_the_replica(text: str, java_hash: int, java_partition: int) -> None:
    for replica in ("node-a", "node-b#7", "x"):
        assert partition_for_key(record_key(text, replica), 12) == java_partition


def test_key_without_separator_hashes_whole_like_the_default_partitioner() -> None:
    assert partition_for_key(b"foobar", 12) == 6


@given(user=st.text(), replica=replicas)
def test_record_key_round_trips(user: str, replica: str) -> None:
    key = record_key(user, replica)
    assert split_key(key) == (user, replica)
    assert user_of(key) == user


@given(user=st.text(), a=replicas, b=replicas, n=st.integers(min_value=1, max_value=1000))
def test_every_replica_of_a_user_shares_a_partition(user: str, a: str, b: str, n: int) -> None:
    first = partition_for_key(record_key(user, a), n)
    assert first == partition_for_key(record_key(user, b), n)
    assert 0 <= first < n
    assert first == (murmur2(user.encode()) & 0x7FFFFFFF) % n


@given(user=st.text(), replica=replicas, n=st.integers(min_value=1, max_value=64))
def test_aiokafka_partitioner_picks_from_all_partitions(user: str, replica: str, n: int) -> None:
    partitions = list(range(n))
    chosen = user_partitioner(record_key(user, replica), partitions, partitions[:1])
    assert chosen == partition_for_user(user, n)


def test_partitioner_maps_the_index_through_the_partition_list() -> None:
    key = record_key("foobar", "r1")
    assert user_partitioner(key, [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], []) == 16


@pytest.mark.parametrize("replica", ["", f"a{KEY_SEPARATOR}b"])
def test_record_key_rejects_bad_replica_ids(replica: str) -> None:
    with pytest.raises(InvalidParameter, match="replica id"):
        record_key("alice", replica)


def test_split_key_rejects_keys_without_separator() -> None:
    with pytest.raises(InvalidParameter, match="separator"):
        split_key(b"no-separator")


def test_partitioner_refuses_keyless_records() -> None:
    with pytest.raises(InvalidParameter, match="need a key"):
        user_partitioner(None, [0, 1], [0, 1])


def test_zero_partitions_is_an_error() -> None:
    with pytest.raises(InvalidParameter, match="at least one partition"):
        partition_for_user("alice", 0)


def test_user_containing_the_separator_still_splits_at_the_last_one() -> None:
    key = record_key(f"a{KEY_SEPARATOR}b", "r")
    assert split_key(key) == (f"a{KEY_SEPARATOR}b", "r")
    assert partition_for_key(key, 7) == partition_for_user(f"a{KEY_SEPARATOR}b", 7)
