"""State record keys (`<user>\\x1f<replica>`) and the partitioner that hashes only the user part."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from aiokafka.partitioner import murmur2 as _murmur2

from service.errors import InvalidParameter

# ASCII "unit separator": HTTP header values cannot carry it, and replica ids never do,
# so the last separator in a key always splits user from writer.
KEY_SEPARATOR = "\x1f"
_SEPARATOR_BYTES = KEY_SEPARATOR.encode()


def record_key(user: str, replica: str) -> bytes:
    """The compacted record key of `replica`'s state for `user`: one writer per key."""
    if not replica or KEY_SEPARATOR in replica:
        raise InvalidParameter(f"replica id must be non-empty without \\x1f, got {replica!r}")
    return f"{user}{KEY_SEPARATOR}{replica}".encode()


def split_key(key: bytes) -> tuple[str, str]:
    """(user, replica) of a record key; raises InvalidParameter when it has no separator."""
    user, separator, replica = key.rpartition(_SEPARATOR_BYTES)
    if not separator:
        raise InvalidParameter(f"record key {key!r} has no user/replica separator")
    return user.decode(errors="replace"), replica.decode(errors="replace")


def user_of(key: bytes) -> str:
    """The user part of a record key."""
    return split_key(key)[0]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as `Utils.murmur2` in the Java client), as an unsigned 32-bit int."""
    return int(_murmur2(data))


@lru_cache(maxsize=65536)
def _positive_hash(user_bytes: bytes) -> int:
    # Java's Utils.toPositive: clear the sign bit (not abs(), which breaks on MIN_VALUE).
    return murmur2(user_bytes) & 0x7FFFFFFF


def partition_for_user(user: str, num_partitions: int) -> int:
    """The partition of every record of `user`: the Java default partitioner applied to it."""
    return _partition(user.encode(), num_partitions)


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition of a record key: hashes the user part only.

    A key without a separator is hashed whole, exactly as Kafka's default partitioner does.
    """
    user, separator, _ = key.rpartition(_SEPARATOR_BYTES)
    return _partition(user if separator else key, num_partitions)


def _partition(hashed: bytes, num_partitions: int) -> int:
    if num_partitions <= 0:
        raise InvalidParameter(f"the topic needs at least one partition, got {num_partitions}")
    return _positive_hash(hashed) % num_partitions


def user_partitioner(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """`AIOKafkaProducer(partitioner=user_partitioner)`: every record of a user on one partition.

    Uses all partitions, never only the available ones, so a leader change cannot move a
    user. A keyless record has no place on a compacted topic, so it is refused here.
    """
    if key is None:
        raise InvalidParameter("state records need a key; the compacted topic rejects keyless ones")
    return all_partitions[partition_for_key(key, len(all_partitions))]
