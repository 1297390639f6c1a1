"""A lean HTTP/1.1 keep-alive client for load generation (bench scripts only).

The load generator shares the machine with the services it measures. httpx
spends about 1.2 ms of CPU per request here, which on two cores is taken from
the gateway and the encoder and shows up in the very latency being measured;
like `wrk`, this client does the least a request needs: one connection per
worker, a pre-encoded request, and Content-Length framing of the reply.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class HttpStatusError(RuntimeError):
    pass


class KeepAliveConnection:
    """One persistent connection to a local HTTP/1.1 server (no TLS, no chunked replies)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveConnection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    async def post_json(self, path: str, body: dict[str, Any]) -> bytes:
        """POST `body` as JSON; the reply body, or HttpStatusError for a non-2xx status."""
        status, reply, _ = await self.post_json_status(path, body)
        if not 200 <= status < 300:
            raise HttpStatusError(f"{path}: HTTP {status}: {reply[:200]!r}")
        return reply

    async def post_json_status(self, path: str, body: dict[str, Any]) -> tuple[int, bytes, bool]:
        """POST `body` as JSON: (status, reply body, whether the server closes the connection)."""
        assert self._reader is not None, "use `async with`"
        assert self._writer is not None, "use `async with`"
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self._writer.write(head + payload)
        header = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = header.decode("latin-1").split("\r\n")
        length, closes = 0, False
        for line in lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                closes = value.strip().lower() == "close"
        reply = await self._reader.readexactly(length)
        return int(status_line.split(" ", 2)[1]), reply, closes


async def post_politely(http: Any, path: str, *, tries: int = 20, **kwargs: Any) -> Any:
    """POST with an httpx.AsyncClient, as a polite client does: a refusal for load (503 or 429)
    is retried after the Retry-After it names (1 s when none), up to `tries` times."""
    for _ in range(tries - 1):
        reply = await http.post(path, **kwargs)
        if reply.status_code not in (429, 503):
            return reply
        await asyncio.sleep(float(reply.headers.get("retry-after", "1")))
    return await http.post(path, **kwargs)
