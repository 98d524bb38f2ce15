"""Forwarding a request to a node that answers for its user, over pooled keep-alive HTTP/1.1.

A forwarded request carries `X-RateLimiter-Forwarded`: its receiver always answers it
itself, so a request is forwarded at most once (no loops while members disagree).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from prometheus_client import Counter, Histogram

from service.membership.codec import Member
from service.metrics import Metrics

log = logging.getLogger("ratelimiter.forward")

FORWARDED = b"x-ratelimiter-forwarded"
ANSWERED_BY = b"x-ratelimiter-answered-by"
# Hop-by-hop headers (RFC 9110 section 7.6.1) and those this client sets itself.
_REQUEST_DROP = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"content-length",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"proxy-connection",
        FORWARDED,
    }
)
# The server that answers the client sets these again itself.
_RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
)
MAX_IDLE = 64  # idle connections kept per peer
IDLE_S = 3.0  # an idle connection older than this is closed (uvicorn drops them after 5 s)
_OUTCOMES = ("forwarded", "unreachable", "no_owner", "spans_owners")
_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

Headers = list[tuple[bytes, bytes]]
Response = tuple[int, Headers, bytes]


class ProtocolError(Exception):
    """The peer answered something this client does not read (it is tried no further)."""


class _Conn:
    __slots__ = ("reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = time.monotonic()


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections per peer address (host:port), reused one request at
    a time; responses must carry Content-Length (every node's do)."""

    def __init__(self) -> None:
        self._idle: dict[str, list[_Conn]] = {}

    async def request(self, address: str, head: bytes, body: bytes) -> Response:
        """Send one request (head ends with the blank line) and read its response."""
        conn = self._take(address)
        if conn is not None:
            try:
                return await self._exchange(address, conn, head, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the peer closed the idle connection meanwhile: once more on a new one
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        return await self._exchange(address, _Conn(reader, writer), head, body)

    async def _exchange(self, address: str, conn: _Conn, head: bytes, body: bytes) -> Response:
        try:
            conn.writer.write(head + body)
            status, headers, payload, keep = await _read_response(conn.reader)
        except BaseException:
            conn.writer.close()  # cancelled (the budget) or broken: never reused
            raise
        if keep:
            conn.used = time.monotonic()
            idle = self._idle.setdefault(address, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return status, headers, payload
        conn.writer.close()
        return status, headers, payload

    def _take(self, address: str) -> _Conn | None:
        idle = self._idle.get(address)
        stale = time.monotonic() - IDLE_S
        while idle:
            conn = idle.pop()
            if conn.used >= stale and not conn.reader.at_eof():
                return conn
            conn.writer.close()
        return None

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in idle:
                conn.writer.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, Headers, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: Headers = []
    length = -1
    keep = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"connection":
            keep = value.lower() != b"close"
        elif name == b"transfer-encoding":
            raise ProtocolError("chunked responses are not read")
        headers.append((name, value))
    if length < 0:
        raise ProtocolError("a response without Content-Length")
    body = await reader.readexactly(length)
    return int(parts[1]), headers, body, keep


class Forwarder:
    """Forwards a request to the members answering for its user, one after another within
    `budget_s`; counts each outcome in ratelimiter_forwarded_total."""

    def __init__(self, node_id: str, metrics: Metrics, budget_s: float) -> None:
        self.node_id = node_id.encode()
        self.budget_s = budget_s
        self.pool = ConnectionPool()
        self.outcomes = Counter(
            "ratelimiter_forwarded",
            "Requests for users whose partition this node does not answer for, by outcome: "
            "forwarded (an owner answered), unreachable and no_owner (decided here under "
            "--fail-mode), spans_owners (a /v1/check batch whose keys no one node answers "
            "for, refused with 400)",
            ["outcome"],
            registry=metrics.registry,
        )
        for outcome in _OUTCOMES:
            self.outcomes.labels(outcome)
        self.seconds = Histogram(
            "ratelimiter_forward_seconds",
            "Time from forwarding a request to the owner's answer",
            buckets=_BUCKETS,
            registry=metrics.registry,
        )

    def head(self, method: str, target: bytes, headers: Headers, address: str, size: int) -> bytes:
        """The request line and headers sent to `address`."""
        lines = [f"{method} ".encode() + target + b" HTTP/1.1", b"host: " + address.encode()]
        lines.extend(name + b": " + value for name, value in headers if name not in _REQUEST_DROP)
        lines.append(FORWARDED + b": " + self.node_id)
        lines.append(b"content-length: " + str(size).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def forward(
        self,
        targets: Sequence[Member],
        method: str,
        target: bytes,
        headers: Headers,
        body: bytes,
    ) -> Response | None:
        """The first answer of `targets` within the budget, or None (decide locally)."""
        if not targets:
            self.outcomes.labels("no_owner").inc()
            return None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.budget_s):
                for member in targets:
                    head = self.head(method, target, headers, member.address, len(body))
                    try:
                        status, got, payload = await self.pool.request(member.address, head, body)
                    except (
                        OSError,
                        asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError,
                        ProtocolError,
                    ) as exc:
                        log.debug("forwarding to %s failed: %r", member.node, exc)
                        continue
                    self.seconds.observe(time.perf_counter() - started)
                    self.outcomes.labels("forwarded").inc()
                    kept = [(n, v) for n, v in got if n not in _RESPONSE_DROP]
                    kept.append((ANSWERED_BY, member.node.encode()))
                    return status, kept, payload
        except TimeoutError:
            pass
        self.outcomes.labels("unreachable").inc()
        return None

    def close(self) -> None:
        """Close the pooled connections."""
        self.pool.close()


def forwarded(headers: Headers) -> bool:
    """The request was forwarded by a peer (answer it here, never forward it again)."""
    return any(name == FORWARDED for name, _ in headers)
