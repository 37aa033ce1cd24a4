"""Connection limits uvicorn does not have: a deadline for the request headers, one for the body, one for a
client that reads nothing of its reply, a cap on the size of the headers, and a hard cap on open connections.
`bandit-router serve` runs uvicorn with `http=GuardedHttpToolsProtocol`.

uvicorn's httptools protocol closes an idle keep-alive connection after `timeout_keep_alive`, but only once a
response was sent: a connection that sends nothing, half a request line, or headers without their body stays
open for as long as the client likes (measured: 200 such connections were all still open after 70 s). Here

- `header_timeout_s`: from the moment a connection opens (or its previous response was sent) its next request's
  headers must be complete within this many seconds, however slowly the bytes trickle in; else the connection
  is closed (after a `408` when a request had begun);
- `body_timeout_s`: once the headers are in, the whole body must arrive within this many seconds, else the
  connection is closed (the handler sees a disconnect);
- `write_timeout_s`: once the connection's send buffer is full (the transport paused writing), a stretch of this
  many seconds in which the client reads none of the reply aborts the connection (the handler sees a
  disconnect), like nginx's `send_timeout`. uvicorn waits for a paused transport forever: a client that
  pipelined 300 `GET /openapi.json` and read nothing held its connection (and 2.8 MB of kernel buffer) for as
  long as it liked, no key needed, so `max_connections` such clients shut everyone else out. What the client
  has not read (the transport's buffer plus, on Linux, the kernel's send queue) is measured only when the
  deadline expires, which re-arms it if that shrank: the write path pays nothing, a client that reads nothing
  is cut off after `write_timeout_s`, one that stops reading within twice that, and one that keeps reading
  keeps its connection. (The transport resumes writing only once its buffer is nearly empty: a deadline that
  only that ended cut off a client reading a 1 MB reply at a steady 50 KB/s after 209 KB, with
  `write_timeout_s` 2 and a 64 KB kernel send buffer);
- `max_connections`: a connection beyond this many open ones gets `503` and is closed at once;
- `max_header_bytes`: a request whose request line and headers pass this many bytes gets `431` and the
  connection is closed. httptools keeps headers of any size, and joins a header that arrives in many pieces by
  copying what it has so far for each piece: one connection sending 60 MB of one header held the event loop
  (every other request waited seconds) and the memory (measured: 500 MB of headers grew the process by 500 MB).
  The bytes are counted as they arrive, before the parser sees them, so the cost is one addition per read.

The limits come from the environment variable `BANDIT_ROUTER_SERVE_LIMITS` (JSON, set by `serve` before
uvicorn starts, so worker processes see it too), else the defaults of `Limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import sys
from dataclasses import asdict, dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REFUSED = "connection refused: %d open connections (max_connections)"
ABORTED = "connection aborted: its client read none of its reply for %g s (write_timeout_s)"
RECURRING = (REFUSED, ABORTED, "Invalid HTTP request received.")
"""uvicorn's error log's messages about one connection (that last one uvicorn's own), which a flood of connections
or a scanner repeats for each: logged at most once a minute each (`dbguard.rate_limit_logger`, `create_app`)."""
LIMITS_VARIABLE = "BANDIT_ROUTER_SERVE_LIMITS"

if sys.platform == "linux":
    import fcntl
    import termios

    def _kernel_send_queue(fd: int) -> int:
        """Bytes in a TCP socket's kernel send queue, not yet sent or not yet acknowledged (`SIOCOUTQ`)."""
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])
else:
    def _kernel_send_queue(fd: int) -> int:
        return 0


@dataclass(frozen=True)
class Limits:
    """Per-connection deadlines (seconds) and the connection cap; see the module docstring."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    max_header_bytes: int = 65_536
    write_timeout_s: float = 30.0

    def to_environment(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> Limits:
        raw = os.environ.get(LIMITS_VARIABLE)
        return cls(**json.loads(raw)) if raw else cls()


def _reply(status: bytes, code: str, message: str, *extra: bytes) -> bytes:
    """A complete HTTP/1.1 reply with a JSON error body, closing the connection."""
    body = json.dumps({"error": code, "message": message}).encode()
    head = [b"HTTP/1.1 " + status, b"content-type: application/json", b"connection: close", *extra,
            b"content-length: " + str(len(body)).encode()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


REPLY_408 = _reply(b"408 Request Timeout", "request_timeout", "the request headers did not arrive in time "
                   "(header_timeout_s)")
REPLY_431 = _reply(b"431 Request Header Fields Too Large", "headers_too_large", "the request line and headers "
                   "are larger than the server accepts (max_header_bytes)")
REPLY_503 = _reply(b"503 Service Unavailable", "unavailable", "too many open connections (max_connections)",
                   b"retry-after: 1")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a body deadline, a write deadline, a header size cap
    and a connection cap."""

    limits: Limits | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.limits is None:
            cls.limits = Limits.from_environment()
        self._limits: Limits = cls.limits
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False
        self._reading_headers = True
        """Between requests or within a request's headers: what arrives counts towards `max_header_bytes`."""
        self._header_bytes = 0
        self._write_deadline: asyncio.TimerHandle | None = None
        self._write_buffered = 0
        """The send buffer's size when the write deadline was armed."""

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._in_request:  # a request line had begun, its headers did not complete
            self.transport.write(REPLY_408)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self.logger.warning(REFUSED, len(self.connections))
            transport.write(REPLY_503)
            transport.close()
            return
        self._arm(self._limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_write()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The send buffer is full: the client has `write_timeout_s` to read some of it."""
        super().pause_writing()
        if self._write_deadline is None:
            self._arm_write()

    def resume_writing(self) -> None:
        self._disarm_write()
        super().resume_writing()

    def _arm_write(self) -> None:
        """Check in `write_timeout_s` whether the buffer shrank below its size now (`resume_writing` comes only when
        it is nearly empty, which a large reply to a slow reader reaches long after its first bytes were read)."""
        self._write_buffered = self._unread()
        self._write_deadline = self.loop.call_later(self._limits.write_timeout_s, self._write_expired)

    def _unread(self) -> int:
        """Bytes written that the client has not read: the transport's buffer and the kernel's send queue (Linux;
        elsewhere the buffer alone). The kernel queue matters where it is large (on loopback Linux grows it to
        4 MB): the transport's buffer shrinks only when a good part of the queue has gone, and a client steadily
        reading 300 KB/s saw no shrink for 2 s."""
        unread = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile
                unread += _kernel_send_queue(sock.fileno())
        return unread

    def _disarm_write(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_expired(self) -> None:
        """Re-armed if the client read something since the deadline was armed, else the connection is aborted."""
        self._write_deadline = None
        if self.transport is None:
            return
        if self._unread() < self._write_buffered:  # also while closing: a last reply
            self._arm_write()
            return
        if not self.transport.is_closing():
            self.logger.info(ABORTED, self._limits.write_timeout_s)
        self.transport.abort()  # `close` would wait for the buffer this client does not read

    def data_received(self, data: bytes) -> None:
        """Fed to the parser, then refused (431, closed) when the headers being read have passed the cap: a read
        holds at most the transport's buffer, and one that also completes the headers (a body behind them) is
        not counted against them."""
        if not self._reading_headers:
            super().data_received(data)
            return
        self._header_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and self._header_bytes > self._limits.max_header_bytes:
            self._refuse_headers()

    def _refuse_headers(self) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no reply of an earlier request is being sent
            self.transport.write(REPLY_431)
        self.transport.close()

    def on_message_begin(self) -> None:
        self._in_request = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_request = False
        self._reading_headers = False
        self._arm(self._limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_headers, self._header_bytes = True, 0  # the next request's
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm(self._limits.header_timeout_s)
