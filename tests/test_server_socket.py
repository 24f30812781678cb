"""The socket `eventual-nb serve` listens on: connections accepted from it send without Nagle's delay.

uvicorn serves on the socket `eventual_nb.server.serve` binds (`listening_socket`) through asyncio's
`create_server(sock=...)`, which sets `TCP_NODELAY` on each accepted connection only when the listening
socket says it is TCP. Without it every answer, written in two parts, waited about 40 ms for the client's
delayed ACK (measured by `benchmarks.scale`'s HTTP burst: 42 ms per request on a kept-alive connection).
"""

from __future__ import annotations

import asyncio
import socket

from eventual_nb.server import listening_socket


async def _nodelay_of_accepted_connection(sock: socket.socket) -> int:
    port = sock.getsockname()[1]
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(30):
                return await accepted
        finally:
            writer.close()


def test_connections_accepted_by_the_server_socket_have_nagle_off() -> None:
    sock = listening_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    assert asyncio.run(_nodelay_of_accepted_connection(sock)) != 0
