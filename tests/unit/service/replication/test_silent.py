"""Records of silent writers: what is kept of them at bootstrap, and when they go."""

from __future__ import annotations

import pytest

from crdt.delta import Delta, Entry
from service.clock import from_unix_ms
from service.replication import codec
from service.replication.silent import SilentWriters
from service.replication.statelog import LogRecord

T_MS = 1_700_000_000_000
THRESHOLD_MS = T_MS + 600_000  # records before it are silent writers' (if nothing later)


def key_record(user: str, writer: str, ts_ms: int, partition: int = 0) -> LogRecord:
    delta = Delta(user, writer, (Entry(10, 10.0, 1, 0),))
    key = codec.key_record_key("default", user, writer)
    return LogRecord(key, codec.encode_key_record("default", delta, ts_ms), partition, 0, ts_ms)


def batch_record(writer: str, users: list[str], ts_ms: int, partition: int) -> LogRecord:
    items = [("default", Delta(u, writer, (Entry(10, 10.0, 1, 0),))) for u in users]
    key = codec.batch_record_key(writer, partition)
    return LogRecord(key, codec.encode_batch(writer, items, ts_ms, ts_ms), partition, 1, ts_ms)


def test_key_records_are_kept_by_key_without_decoding_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A past deploy's million key records are a million entries: their keys name user
    and rule, so their values are never decoded (nor kept)."""
    decoded: list[bytes] = []
    real = codec.decode

    def counting(value: bytes) -> codec.Decoded:
        decoded.append(value)
        return real(value)

    monkeypatch.setattr(codec, "decode", counting)
    writers = SilentWriters("me")
    for i in range(50):
        writers.note(key_record(f"user-{i}", "old", T_MS + i, partition=i % 4), THRESHOLD_MS)
    writers.note(batch_record("old", ["user-0", "user-99"], T_MS, 2), THRESHOLD_MS)
    writers.history_read()
    assert decoded == [batch_record("old", ["user-0", "user-99"], T_MS, 2).value]
    assert "old" in writers
    assert writers.records() == 51
    asked: set[tuple[str, str]] = set()

    def settled(rule: str, user: str, written: float) -> bool:
        asked.add((rule, user))
        return True

    out = writers.expire(1000, settled)
    assert asked == {("default", f"user-{i}") for i in (*range(50), 99)}
    assert out == {
        **{codec.key_record_key("default", f"user-{i}", "old"): i % 4 for i in range(50)},
        codec.batch_record_key("old", 2): 2,
    }


def test_records_go_once_settled_each_on_its_partition_judged_at_the_writers_newest() -> None:
    writers = SilentWriters("me")
    writers.note(key_record("a", "old", T_MS, partition=1), THRESHOLD_MS)
    writers.note(key_record("b", "old", T_MS + 5_000, partition=3), THRESHOLD_MS)
    writers.note(batch_record("old", ["a", "c"], T_MS + 1_000, 2), THRESHOLD_MS)
    writers.note(key_record("x", "me", T_MS, partition=0), THRESHOLD_MS)  # our own: not kept
    writers.history_read()
    asked: list[tuple[str, str, float]] = []
    busy = {"c"}

    def settled(rule: str, user: str, written: float) -> bool:
        asked.append((rule, user, written))
        return user not in busy

    out = writers.expire(100, settled)
    assert out == {codec.key_record_key("default", "a", "old"): 1,
                   codec.key_record_key("default", "b", "old"): 3}  # fmt: skip
    newest = from_unix_ms(T_MS + 5_000)
    assert {written for _, _, written in asked} == {newest}
    assert writers.records() == 1  # the batch holding busy "c" waits for the next pass
    busy.clear()
    assert writers.expire(100, settled) == {codec.batch_record_key("old", 2): 2}
    assert writers.expire(100, settled) == {}
    assert "old" not in writers
    assert not writers


def test_a_group_not_settled_does_not_starve_the_others() -> None:
    """A pass visits every (partition, rule) group once: users that stay busy are looked at
    again in the next pass, after the other groups."""
    writers = SilentWriters("me")
    for i in range(30):
        writers.note(key_record(f"busy-{i}", "old", T_MS, partition=0), THRESHOLD_MS)
    writers.note(key_record("idle", "old", T_MS, partition=1), THRESHOLD_MS)
    writers.history_read()
    gone: dict[bytes, int] = {}
    for _ in range(8):
        gone.update(writers.expire(10, lambda rule, user, written: not user.startswith("busy")))
    assert gone == {codec.key_record_key("default", "idle", "old"): 1}
    assert writers.records() == 30


def test_a_pass_is_cut_into_slices_and_a_writer_heard_again_is_forgotten() -> None:
    writers = SilentWriters("me")
    for i in range(10):
        writers.note(key_record(f"u{i}", "old", T_MS, partition=i % 2), THRESHOLD_MS)
        writers.note(key_record(f"v{i}", "back", T_MS, partition=0), THRESHOLD_MS)
    writers.history_read()
    writers.heard("back")
    assert "back" not in writers
    first = writers.expire(4, lambda rule, user, written: True)
    assert len(first) == 4
    rest = writers.expire(100, lambda rule, user, written: True)
    assert len(rest) == 6
    assert not first.keys() & rest.keys()
    assert not writers


def test_a_writer_that_wrote_lately_and_tombstoned_records_are_not_kept() -> None:
    writers = SilentWriters("me")
    writers.note(key_record("a", "live", T_MS), THRESHOLD_MS)
    writers.note(key_record("b", "live", THRESHOLD_MS + 1), THRESHOLD_MS)  # wrote lately
    writers.note(key_record("a", "old", T_MS), THRESHOLD_MS)
    tombstone = key_record("a", "old", T_MS)._replace(value=None)
    writers.note(tombstone, THRESHOLD_MS)  # already tombstoned on the topic
    writers.note(key_record("c", "old", T_MS), THRESHOLD_MS)
    writers.history_read()
    assert "live" not in writers
    assert writers.expire(10, lambda rule, user, written: True) == {
        codec.key_record_key("default", "c", "old"): 0
    }
