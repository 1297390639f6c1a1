"""HTTP/1.1 spoken over a raw socket: framing and headers no HTTP client library would send."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HOST = "127.0.0.1"
# Longest a refusal may take to come back: generous, so a loaded CI machine does not flake. What
# the tests check is that an answer comes and the server keeps serving, not how fast.
ANSWER_TIMEOUT_S = 20.0


@dataclass
class RawReply:
    status: int | None  # None: the connection closed (or timed out) without a status line
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0

    def detail(self) -> str:
        return str(json.loads(self.body)["detail"])


def connect(port: int, timeout_s: float = ANSWER_TIMEOUT_S) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(
    port: int,
    pieces: bytes | Sequence[bytes],
    *,
    pause_s: float = 0.0,
    timeout_s: float = ANSWER_TIMEOUT_S,
) -> RawReply:
    """Send `pieces` (pausing between them), then read one answer (or none, if the server closes)."""
    started = time.monotonic()
    with connect(port, timeout_s) as sock:
        for number, piece in enumerate([pieces] if isinstance(pieces, bytes) else pieces):
            if number and pause_s:
                time.sleep(pause_s)
            try:
                sock.sendall(piece)
            except OSError:
                break  # the server answered and closed while we were still sending
        first = pieces if isinstance(pieces, bytes) else pieces[0]
        reply = ReplyReader(sock).next(body=not first.startswith(b"HEAD "))
    reply.seconds = time.monotonic() - started
    return reply


def read_reply(sock: socket.socket) -> RawReply:
    """One response: status, headers and a Content-Length body (what the gateway sends)."""
    return ReplyReader(sock).next()


class ReplyReader:
    """Responses read one after another from a connection (pipelined requests)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self, enough: Callable[[], bool]) -> None:
        try:
            while not enough():
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                self.buffer += chunk
        except (TimeoutError, ConnectionResetError):
            pass

    def next(self, *, body: bool = True) -> RawReply:
        """The next response; `body=False` for the answer to a HEAD request (its length, no body)."""
        self._fill(lambda: b"\r\n\r\n" in self.buffer)
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found or not head.startswith(b"HTTP/1."):
            self.buffer = b""
            return RawReply(None)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0")) if body else 0
        self.buffer = rest
        self._fill(lambda: len(self.buffer) >= length)
        content, self.buffer = self.buffer[:length], self.buffer[length:]
        return RawReply(int(lines[0].split()[1]), headers, content)


def request(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    length: bool = True,
) -> bytes:
    """A request's bytes; `length` adds Content-Length for a body."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body and length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, chunk_size: int) -> bytes:
    """A body in Transfer-Encoding: chunked framing."""
    pieces = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
