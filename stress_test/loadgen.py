"""A small keep-alive HTTP/1.1 client on asyncio streams, fast enough to load a node from
one Python process, and an open-loop schedule runner built on it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from crdt.policy import BucketPolicy
from crdt.reference import ReferenceBucket


class HttpError(Exception):
    """The server closed the connection or answered something unparsable."""


class Connection:
    """One persistent connection; requests on it are sequential."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body).

        Reconnects once when a reused connection was closed by the server while idle
        (nothing of a response read), so the request cannot have been processed twice.
        """
        for attempt in (0, 1):
            reused = self._writer is not None and not self._writer.is_closing()
            reader, writer = await self._open()
            lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
            lines += [f"{k}: {v}" for k, v in headers]
            lines.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            try:
                return await _read_response(reader)
            except asyncio.IncompleteReadError as exc:
                await self.close()
                if attempt or not reused or exc.partial:
                    raise
            except (HttpError, ConnectionError):
                await self.close()
                raise
        raise HttpError("unreachable")

    async def close(self) -> None:
        """Close the socket."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return int(parts[1]), headers, body


@dataclass
class Result:
    """One request's outcome."""

    sent: float
    user: str
    node: int
    status: int
    latency: float


@dataclass
class Schedule:
    """Open-loop load: every user sends `rps_per_user` requests/s for `seconds`,
    round-robin over `ports`; `offsets` spreads users' phases."""

    ports: Sequence[int]
    users: Sequence[str]
    rps_per_user: float
    seconds: float
    host: str = "127.0.0.1"
    path: str = "/protected"
    results: list[Result] = field(default_factory=list)
    errors: int = 0

    async def _user(self, index: int, user: str, start: float) -> None:
        conns = [Connection(self.host, p) for p in self.ports]
        interval = 1.0 / self.rps_per_user
        phase = (index / max(1, len(self.users))) * interval
        k = 0
        try:
            while True:
                at = start + phase + k * interval
                if at - start >= self.seconds:
                    return
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                node = (index + k) % len(conns)
                sent = time.monotonic()
                try:
                    status, _, _ = await conns[node].request(
                        "POST", self.path, [("X-User-ID", user)]
                    )
                except (HttpError, OSError, asyncio.IncompleteReadError):
                    self.errors += 1
                    status = 0
                self.results.append(Result(sent, user, node, status, time.monotonic() - sent))
                k += 1
        finally:
            for conn in conns:
                await conn.close()

    async def run(self) -> list[Result]:
        """Run every user to the end; returns all results."""
        start = time.monotonic() + 0.05
        await asyncio.gather(*(self._user(i, u, start) for i, u in enumerate(self.users)))
        return self.results


def ideal_admitted(results: Sequence[Result], rate: float, burst: int) -> int:
    """What one exact token bucket per user (crdt/reference.py) admits of the same
    requests at the same send times: the single-node ideal a cluster is measured against."""
    policy = BucketPolicy(rate, burst)
    admitted = 0
    for user in {r.user for r in results}:
        sent = sorted(r.sent for r in results if r.user == user)
        bucket = ReferenceBucket(policy, sent[0])
        admitted += sum(bucket.acquire(1, t) for t in sent)
    return admitted
