"""A TCP proxy a test can cut and restore: partitions one client from a server (Kafka)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

LOOPBACK = "127.0.0.1"


class FaultProxy:
    """Forwards `listen_port` to `target_port` on 127.0.0.1 until `cut()`.

    While cut, open connections are dropped and new ones are closed on arrival: the
    client sees the server as gone (as in a network partition), then `restore()` lets
    it reconnect. Runs its own event loop in a thread, so blocking tests can drive it.
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.connections = 0

    def start(self) -> FaultProxy:
        """Listen (returns once the port is bound)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, self.listen_port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        asyncio.run_coroutine_threadsafe(self._set_cut(True), self._loop).result(timeout=10)

    def restore(self) -> None:
        """Accept and forward again."""
        asyncio.run_coroutine_threadsafe(self._set_cut(False), self._loop).result(timeout=10)

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if cut:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

    def stop(self) -> None:
        """Close everything and end the thread."""

        async def _close() -> None:
            await self._set_cut(True)
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
