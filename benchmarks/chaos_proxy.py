"""A TCP proxy that can cut a worker off from PostgreSQL and let it back: a network partition.

While cut, the proxy forwards nothing in either direction and holds new connections before they
reach the server, but keeps every byte it has read: when the cut ends, what the worker wrote
meanwhile (a heartbeat, a step's commit, an outcome) reaches the server late. A cut longer than
the worker's lease makes it a zombie whose late writes pgqueue must reject.
"""

from __future__ import annotations

import asyncio
import contextlib


class PartitionProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._open.set()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        try:
            await self._open.wait()  # a connection attempt during a cut hangs, as over a dead network
            try:
                server_reader, server_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            self.connections += 1
            self._writers.add(server_writer)
            try:
                await asyncio.gather(self._pipe(client_reader, server_writer),
                                     self._pipe(server_reader, client_writer))
            finally:
                self._writers.discard(server_writer)
                server_writer.close()
        finally:
            self._writers.discard(client_writer)
            client_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                await self._open.wait()  # held, not dropped, while cut
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
