"""Request ids: a usable given id is kept, anything else replaced by a fresh one that the
node never repeats; the log filter gives every record the id of its request."""

from __future__ import annotations

import logging
import re

import pytest

from service.observability.request_id import MAX_LENGTH, RequestIdFilter, RequestIds, current

MADE = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "given",
    [b"a", b"0f8fad5b-d9cb-469f-a165-70867728950e", b"~!#$%&'()*+,-./:;<=>?@[]^_`{|}", b"z" * 128],
)
def test_usable_ids_are_kept(given: bytes) -> None:
    ids = RequestIds("n1")
    assert ids.take([(b"x-user-id", b"u"), (b"x-request-id", given)]) == given.decode()
    assert ids.take_metadata([("x-request-id", given.decode())]) == given.decode()
    assert ids.take_metadata([("x-request-id", given)]) == given.decode()


@pytest.mark.parametrize(
    "given",
    [
        b"",
        b" lead",
        b"in side",
        b"x" * (MAX_LENGTH + 1),
        b"\xc3\xa9",
        b"a\r\nSet-Cookie: x",
        b"\x7f",
    ],
)
def test_unusable_ids_are_replaced(given: bytes) -> None:
    ids = RequestIds("n1")
    made = ids.take([(b"x-request-id", given)])
    assert MADE.fullmatch(made)
    made_grpc = ids.take_metadata([("x-request-id", given.decode("latin-1"))])
    assert MADE.fullmatch(made_grpc)
    assert made != made_grpc


def test_the_first_header_counts() -> None:
    ids = RequestIds("n1")
    assert ids.take([(b"x-request-id", b"one"), (b"x-request-id", b"two")]) == "one"
    assert MADE.fullmatch(ids.take([(b"x-request-id", b"bad id"), (b"x-request-id", b"two")]))


def test_made_ids_never_repeat_in_a_node_and_differ_between_nodes() -> None:
    one, other = RequestIds("n1"), RequestIds("n2")
    made = [one.take([]) for _ in range(1000)] + [other.take_metadata(None) for _ in range(1000)]

    assert len(set(made)) == 2000
    assert all(MADE.fullmatch(rid) for rid in made)
    assert one.prefix != other.prefix


def test_the_filter_gives_records_the_current_id() -> None:
    def record() -> logging.LogRecord:
        r = logging.LogRecord("ratelimiter", logging.INFO, __file__, 1, "m", None, None)
        RequestIdFilter().filter(r)
        return r

    outside = record()
    token = current.set("req-9")
    try:
        inside = record()
    finally:
        current.reset(token)

    assert outside.request_id == "-"  # type: ignore[attr-defined]
    assert inside.request_id == "req-9"  # type: ignore[attr-defined]
