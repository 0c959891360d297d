"""A loopback proxy that counts round trips to PostgreSQL, for tests and ``make bench``.

It listens on 127.0.0.1 and forwards every byte to the server. On each
client connection it counts a *round trip* each time the client sends
after the server has sent (the first send counts too): bytes a client
writes in one go, or in several writes without waiting for an answer, are
one round trip; every answer it waits for before sending again starts
another.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit


class CountingProxy:
    """127.0.0.1:port -> the server, counting client sends that follow a server send."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.round_trips = 0
        self.listen_port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            client_writer.close()
            return
        server_spoke = True

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_client: bool) -> None:
            nonlocal server_spoke
            try:
                while data := await reader.read(65536):
                    if from_client:
                        if server_spoke:
                            self.round_trips += 1
                            server_spoke = False
                    else:
                        server_spoke = True
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pump(client_reader, server_writer, True), pump(server_reader, client_writer, False))

    def url_through(self, url: str) -> str:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.listen_port}" if userinfo else f"127.0.0.1:{self.listen_port}"
        return urlunsplit(parts._replace(netloc=netloc))
