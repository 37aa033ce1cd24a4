"""The edges of a real `bandit-router serve` process on 127.0.0.1 (issue 11): slow and idle connections are
closed, connections beyond the cap are refused, and secrets sent in a query string never reach the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import uvicorn
from test_server_process import Server

from bandit_router.service.protocol import GuardedHttpToolsProtocol, Limits
from tools.loopback import loopback

pytestmark = pytest.mark.slow

ADMIN_KEY = "admin-key-0123456789abcdef"
SECRETS = ("s3cr3t-query-key-0123456789", "tok-0123456789abcdef", "pw-0123456789abcdef", ADMIN_KEY)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(env: dict[str, str]) -> Server:
        s = Server(tmp_path, tmp_path / "edges.db", env=env)
        started.append(s)
        s.wait_ready()
        return s

    yield start
    for s in started:
        s.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(8)
    return sock


def _closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Read until the server closes the connection: (seconds it took, what it sent). Raises on the timeout."""
    started = time.monotonic()
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:  # closed with bytes of ours unread: closed all the same
            chunk = b""
        if not chunk:
            return time.monotonic() - started, received
        received += chunk


LIMITS = {"BANDIT_ROUTER_HEADER_TIMEOUT_S": "1", "BANDIT_ROUTER_BODY_TIMEOUT_S": "1",
          "BANDIT_ROUTER_TIMEOUT_KEEP_ALIVE_S": "1", "BANDIT_ROUTER_MAX_CONNECTIONS": "8"}

PARTIAL: dict[str, bytes] = {
    "nothing": b"",
    "half a request line": b"GET /readyz HT",
    "headers without the blank line": b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n",
    "half a body": (b"POST /v1/feedback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 200\r\n\r\n{\"decision_id\": \"x\","),
}


def test_slow_and_idle_connections_are_closed(server: Callable[..., Server]) -> None:
    s = server(LIMITS)
    started = time.monotonic()
    sockets = {name: _connect(s.port) for name in PARTIAL}
    idle = _connect(s.port)
    try:
        for name, data in PARTIAL.items():
            if data:
                sockets[name].sendall(data)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sockets["kept alive after a reply"] = idle
        results: dict[str, tuple[float, bytes]] = {}
        for name, sock in sockets.items():
            try:
                results[name] = _closed_after(sock)
            except TimeoutError:
                pytest.fail(f"{name}: the connection was still open after 8 s")
        assert time.monotonic() - started < 5, results  # 1 s deadlines; without them, still open after 8 s
        assert results["half a request line"][1].startswith(b"HTTP/1.1 408"), results
        assert results["headers without the blank line"][1].startswith(b"HTTP/1.1 408"), results
        assert results["kept alive after a reply"][1].startswith(b"HTTP/1.1 200"), results
        assert results["nothing"][1] == b""
        # the server still serves
        assert loopback.get(s.url + "/readyz", timeout=5).status_code == 200
    finally:
        for sock in sockets.values():
            sock.close()


def _reply_on(sock: socket.socket) -> bytes:
    """`GET /healthz` on an open connection, kept alive: the reply's head and body ("" when the server closed it)."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received or not received.endswith(b"}"):
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return b""
        if not chunk:
            return b""
        received += chunk
    return received


def test_an_idle_connection_outlives_httpxs_keep_alive(server: Callable[..., Server]) -> None:
    """The server keeps an idle keep-alive connection open longer than httpx (the OpenAI SDK's client) keeps one in
    its pool (`keepalive_expiry`, 5 s), so that the client drops it first. With both at 5 s a request sent on a
    connection idle for just under 5 s could meet the server's close, a connection error the client sees
    (`python -m benchmarks.keepalive_race`)."""
    s = server({})
    expiry = httpx.Limits().keepalive_expiry
    assert expiry is not None
    with _connect(s.port) as sock:
        assert _reply_on(sock).startswith(b"HTTP/1.1 200")
        time.sleep(expiry + 0.5)
        assert _reply_on(sock).startswith(b"HTTP/1.1 200"), f"closed after less than {expiry + 0.5} s idle"


def test_a_slowloris_trickle_does_not_extend_the_header_deadline(server: Callable[..., Server]) -> None:
    s = server(LIMITS)
    sock = _connect(s.port)
    try:
        sock.sendall(b"GET /readyz HTTP/1.1\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 6:
            try:
                sock.sendall(b"X-A: b\r\n")
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:  # reset: the server closed while bytes were still arriving
                closed = True
                break
        assert closed, "a client sending one header line every 0.2 s kept its connection for 6 s"
        assert time.monotonic() - started < 4
    finally:
        sock.close()


def test_connections_beyond_the_cap_get_503(server: Callable[..., Server]) -> None:
    s = server({**LIMITS, "BANDIT_ROUTER_HEADER_TIMEOUT_S": "20", "BANDIT_ROUTER_MAX_CONNECTIONS": "4"})
    held = [_connect(s.port) for _ in range(4)]
    try:
        time.sleep(0.3)
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # the 4th may still be served
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200"), "a connection within the cap was refused"
        extra = _connect(s.port)
        try:
            _, received = _closed_after(extra)
        finally:
            extra.close()
        assert received.startswith(b"HTTP/1.1 503"), received
        assert b"max_connections" in received
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # once the held connections are gone, the server answers again
        try:
            if loopback.get(s.url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


REPLY = b"x" * 800_000


async def _large_reply(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(REPLY)).encode())]})
        await send({"type": "http.response.body", "body": REPLY})


class _FixedSendBuffer(GuardedHttpToolsProtocol):
    """The kernel send buffer fixed at 256 KB (on loopback Linux grows it to 4 MB, larger than the reply), and
    `write_timeout_s` of 1 s."""

    limits = Limits(write_timeout_s=1.0)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 262_144)
        super().connection_made(transport)


@pytest.fixture
def guarded_port() -> Iterator[int]:
    """The port of uvicorn serving an 800 KB reply with `_FixedSendBuffer` on uvloop, as `serve` runs it."""
    config = uvicorn.Config(_large_reply, host="127.0.0.1", port=0, http=_FixedSendBuffer, loop="uvloop",
                            log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def _read_reply(port: int, rate: float, stop_after: int | None = None) -> tuple[int, str]:
    """Read the reply at `rate` bytes/s (until `stop_after` bytes, then nothing for 4 s before reading on as fast as
    possible): (bytes read, how it ended: "complete", "closed" or "open")."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(10)
    received = bytearray()
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while len(received) < len(REPLY) or received.partition(b"\r\n\r\n")[2] != REPLY:
            try:
                chunk = sock.recv(2048)
            except ConnectionResetError:
                return len(received), "closed"
            except TimeoutError:
                return len(received), "open"
            if not chunk:
                return len(received), "closed"
            received += chunk
            if stop_after is not None and len(received) >= stop_after:
                time.sleep(4)
                stop_after, rate = None, float("inf")
            time.sleep(len(chunk) / rate)
        return len(received), "complete"
    finally:
        sock.close()


def test_a_client_that_reads_its_reply_slowly_gets_all_of_it(guarded_port: int) -> None:
    """A client reading steadily at 100 KB/s takes 8 s over the reply. The transport resumes writing only once its
    buffer is nearly empty, and the deadline, running from the pause to the resume, aborted the connection after
    1 s (before the fix: closed after 447 KB of 800 KB). It is now re-armed while the reply's unread bytes shrink:
    the transport's buffer and the kernel's send queue (the buffer alone shrinks only once a good part of the
    kernel's queue has gone, and counting it alone the connection was aborted as before)."""
    received, ended = _read_reply(guarded_port, rate=100_000)
    assert ended == "complete", f"{ended} after {received} bytes"


def test_a_client_that_stops_reading_is_cut_off_within_twice_the_write_timeout(guarded_port: int) -> None:
    """Reading 100 KB, then nothing for 4 s: the buffer stops shrinking, and the connection is aborted within
    2 x `write_timeout_s` of the last byte read (kept open, the client would read the rest)."""
    received, ended = _read_reply(guarded_port, rate=100_000, stop_after=100_000)
    assert ended == "closed", f"{ended} after {received} bytes"
    assert received < len(REPLY)


def test_secrets_in_query_strings_never_reach_the_access_log(server: Callable[..., Server], tmp_path: Path) -> None:
    s = server({"BANDIT_ROUTER_ACCESS_LOG": "true", "BANDIT_ROUTER_LOG_LEVEL": "info",
                "BANDIT_ROUTER_ADMIN_KEYS": ADMIN_KEY})
    with httpx.Client(base_url=s.url, timeout=5) as client:
        replies: dict[str, Any] = {
            "query key": client.get(f"/v1/stats?api_key={SECRETS[0]}&model=gpt-4o"),
            "admin key in query": client.get(f"/v1/stats?key={ADMIN_KEY}"),
            "token and password": client.get(
                f"/v1/models?access_token={SECRETS[1]}&PassWord={SECRETS[2]}",
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
            ),
            "encoded name": client.get(f"/healthz?client%5Fsecret={SECRETS[2]}"),
        }
    assert replies["query key"].status_code == 401
    assert replies["admin key in query"].status_code == 401
    assert replies["token and password"].status_code == 200
    s.terminate()
    text = s.logpath.read_text(errors="replace")
    assert "GET /v1/stats?api_key=[REDACTED]&model=gpt-4o" in text, text
    assert "/v1/models?access_token=[REDACTED]&PassWord=[REDACTED]" in text, text
    assert "client%5Fsecret=[REDACTED]" in text
    for secret in SECRETS:
        assert secret not in text, f"{secret} is in the log"


def test_headers_beyond_the_cap_get_431_and_the_server_goes_on(server: Callable[..., Server]) -> None:
    """A request whose headers keep coming is refused once they pass `max_header_bytes` (httptools would keep them
    all: 500 MB of headers grew the process by 500 MB, and one 60 MB header held the event loop for seconds)."""
    s = server({"BANDIT_ROUTER_MAX_HEADER_BYTES": "8192"})
    sock = _connect(s.port)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        refused = False
        for _ in range(64):  # 64 KB of header lines, 1 KB at a time: eight times the cap
            try:
                sock.sendall(b"X-Pad: " + b"a" * 1017 + b"\r\n")
            except OSError:  # closed by the server while bytes were still arriving
                refused = True
                break
            time.sleep(0.002)
        if not refused:
            with contextlib.suppress(OSError):
                sock.sendall(b"\r\n")
        _, received = _closed_after(sock)
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 431") or (refused and received == b""), received
    if received:
        assert b"max_header_bytes" in received
    with httpx.Client(base_url=s.url, timeout=5) as client:  # headers within the cap, and the server still serves
        assert client.get("/healthz", headers={"x-pad": "a" * 6000}).status_code == 200


def test_a_client_that_reads_none_of_its_replies_is_cut_off_after_write_timeout(
    server: Callable[..., Server],
) -> None:
    """Pipelined requests whose replies nobody reads fill the send buffer; uvicorn waited for it forever, so a client
    (no key needed: `GET /openapi.json`) held its connection, and `max_connections` of them every slot. After
    `write_timeout_s` with the buffer full the connection is aborted: a client that comes back to read finds it
    cut off (without the deadline it was still there, with every reply)."""
    s = server({"BANDIT_ROUTER_WRITE_TIMEOUT_S": "1", "BANDIT_ROUTER_HEADER_TIMEOUT_S": "60",
                "BANDIT_ROUTER_TIMEOUT_KEEP_ALIVE_S": "60"})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", s.port))
    requests = 300  # 57 KB each: 17 MB, far more than the socket buffers hold
    try:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * requests)
        time.sleep(4)
        sock.settimeout(5)
        received = b""
        ended = "open"
        reading_until = time.monotonic() + 10  # what the kernel buffered comes first, then the end
        while time.monotonic() < reading_until:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                ended = "reset"
                break
            except TimeoutError:
                break
            if not chunk:
                ended = "closed"
                break
            received += chunk
    finally:
        sock.close()
    assert ended in ("reset", "closed"), f"still open after 4 s unread: {received.count(b'HTTP/1.1 200')} replies"
    assert received.count(b"HTTP/1.1 200") < requests
    assert loopback.get(s.url + "/healthz", timeout=5).status_code == 200


def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw request on its own connection (so that two `Host` headers reach the server as sent): the status,
    the headers (lower-case names) and the body."""
    with _connect(port) as sock:
        sock.sendall(request)
        _, received = _closed_after(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def test_the_openapi_document_describes_the_replies_the_server_gives(server: Callable[..., Server]) -> None:
    """Each reply of a real server, to requests the middleware or the router answers before any route (two `Host`
    headers: 400; a `Host` a loopback-bound service does not serve: 421; a method the path does not take: 405),
    to HEAD probes and to `GET /readyz`, has its status documented for its operation (the 405 in its path's
    description, with the `Allow` the server sends) and a body that the documented schema accepts. A 405 from the
    dashboard's static files (a mount, not documented) keeps Starlette's `Allow: GET, HEAD`."""
    s = server({})
    document = loopback.get(s.url + "/openapi.json").json()
    cases = [
        ("GET", "/readyz", "", 200), ("HEAD", "/readyz", "", 200), ("HEAD", "/healthz", "", 200),
        ("GET", "/healthz", "", 200), ("GET", "/v1/stats", "Host: 127.0.0.1\r\n", 400),
        ("GET", "/v1/models", "", 421), ("POST", "/v1/chat/completions", "", 421),
        ("POST", "/v1/feedback", "Host: 127.0.0.1\r\n", 400), ("PUT", "/v1/route", "", 405),
        ("GET", "/v1/chat/completions", "", 405), ("POST", "/readyz", "", 405),
    ]
    for method, path, extra, status in cases:
        host = "evil.example" if status == 421 else "127.0.0.1"
        request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
        got, headers, body = _exchange(s.port, request.encode())
        assert got == status, (method, path, got, body)
        item = document["paths"][path]
        if status == 405:
            assert f"`Allow: {headers['allow']}`" in item["description"], (path, headers["allow"])
            operation = next(iter(op for m, op in item.items() if m in ("get", "post")))
            documented = operation["responses"]["400"]  # the error shape of the path's other refusals
        else:
            documented = item[method.lower()]["responses"][str(status)]
        if method == "HEAD":
            assert body == b"" and "content" not in documented
            continue
        schema = documented["content"]["application/json"]["schema"]
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
        assert validator.is_valid(json.loads(body)), (method, path, body, schema)
    # The dashboard's static files (a mount, not in the document): Starlette's own 405 keeps its `Allow`.
    request = b"POST /dashboard/static/dashboard.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" \
              b"Content-Length: 0\r\n\r\n"
    got, headers, body = _exchange(s.port, request)
    assert (got, headers["allow"]) == (405, "GET, HEAD"), (got, headers, body)
    error_out = jsonschema_rs.Draft202012Validator({"$ref": "#/components/schemas/ErrorOut", **document})
    assert error_out.is_valid(json.loads(body)), body
