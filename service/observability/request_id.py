"""Request ids: taken from `X-Request-ID` (when usable) or made here, kept for the log.

The id of the request being handled lives in a contextvar: every log line emitted while
handling it carries it (`RequestIdFilter`), and the answer echoes it. An id sent by the
client is kept when it is 1-128 visible ASCII characters, else replaced by a new one.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import secrets
from collections.abc import Iterable
from contextvars import ContextVar

HEADER = b"x-request-id"  # HTTP (lower case, as ASGI gives header names)
METADATA_KEY = "x-request-id"  # gRPC metadata
MAX_LENGTH = 128
NO_REQUEST = "-"  # in log lines emitted outside any request

_VALID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_LENGTH)
_PROCESS_KEY = secrets.token_bytes(16)

current: ContextVar[str] = ContextVar("ratelimiter_request_id", default=NO_REQUEST)


class RequestIds:
    """Makes request ids for one node: 32 hex digits, unique for the node's process.

    The first 16 digits are the node id hashed with a key drawn at process start, the
    last 16 a counter: cheaper than a uuid4 on the request path, and never repeated by
    the node (another process draws another key).
    """

    def __init__(self, node_id: str) -> None:
        self.prefix = hashlib.blake2b(node_id.encode(), key=_PROCESS_KEY, digest_size=8).hexdigest()
        # From 2^60 the counter has 16 hex digits without padding (formatting with a width
        # costs twice as much on the request path); 15 x 2^60 ids before it grows.
        self._counter = itertools.count(1 << 60)

    def new(self) -> str:
        """A fresh id."""
        return f"{self.prefix}{next(self._counter):x}"

    def take(self, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The first `X-Request-ID` of raw (ASGI) headers when usable, else a fresh id."""
        for name, value in headers:
            if name == HEADER:
                return value.decode("ascii") if _VALID.fullmatch(value) else self.new()
        return self.new()

    def take_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The first `x-request-id` of gRPC invocation metadata when usable, else a fresh id."""
        for name, value in metadata or ():
            if name == METADATA_KEY:
                raw = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
                return raw.decode("ascii") if _VALID.fullmatch(raw) else self.new()
        return self.new()


class RequestIdFilter(logging.Filter):
    """Gives every record `request_id`: the id of the request being handled, or "-"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current.get()
        return True
