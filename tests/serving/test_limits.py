"""Request-level abuse over real sockets: size limits while streaming, malformed multipart, slow
and vanishing clients. Every case gets its status and leaves no file behind."""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.serving.conftest import MAX_UPLOAD, LiveServer

BOUNDARY = "facetrust-test-boundary"


def multipart(*parts: tuple[str, str | None, bytes], close: bool = True) -> bytes:
    """A multipart body from ``(field, filename or None, payload)`` parts."""
    out = b""
    for field, filename, payload in parts:
        disp = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + payload + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def connect(server: LiveServer) -> socket.socket:
    url = urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    return sock


def head(server: LiveServer, path: str, extra: str, key: str | None = "alice") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {urlsplit(server.url).netloc}"]
    if key:
        lines.append(f"X-API-Key: {server.keys[key]}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def start_upload(
    server: LiveServer, framing: str, request_id: str = "", boundary: str = BOUNDARY
) -> socket.socket:
    """Connect and send the head of a multipart ``POST /v1/analyze``.

    ``framing`` is ``'Content-Length: N'`` or ``'Transfer-Encoding: chunked'``.
    """
    sock = connect(server)
    extra = f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n"
    if request_id:
        extra += f"X-Request-ID: {request_id}\r\n"
    sock.sendall(head(server, "/v1/analyze", extra))
    return sock


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length framed)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed_by_server(sock: socket.socket, within: float = 5.0) -> bool:
    """True when the server closes the connection within ``within`` seconds (EOF or reset)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_declared_oversize_is_refused_before_reading(live: LiveServer) -> None:
    """Content-Length over the limit: 413 at once, while the client has sent no body byte; the
    server then closes the connection (it will not read the 10 GB it was promised)."""
    with start_upload(live, f"Content-Length: {10 * 1024**3}", "declared-big") as sock:
        t0 = time.monotonic()
        status, headers, body = read_response(sock)
        assert headers.get("connection") == "close" and closed_by_server(sock)
    assert status == 413 and time.monotonic() - t0 < 5
    assert json.loads(body)["error"]["code"] == "too_large"
    assert headers["x-facetrust-model"] == "tiny-test/0.0.1"
    assert live.audit("declared-big")["status"] == 413
    assert live.wait_no_leftovers() == []


def test_streamed_oversize_is_refused_while_streaming(live: LiveServer) -> None:
    """Chunked body with no length: the server answers 413 long before the client is done."""
    total_planned = 40 * MAX_UPLOAD
    sent = 0
    response = None
    with start_upload(live, "Transfer-Encoding: chunked", "streamed-big") as sock:
        first = multipart(("file", "big.jpg", b"\xff\xd8\xff\xe0"), close=False)[:-2]
        payload = b"\x00" * 65536
        chunks = [first] + [payload] * (total_planned // len(payload))
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        try:
            response = read_response(sock)
        except ConnectionResetError:
            response = None
    assert sent < total_planned, "the server let the whole oversize body through"
    if response is not None:
        assert response[0] == 413
    assert live.audit("streamed-big")["status"] == 413
    assert live.wait_no_leftovers() == []


def test_oversize_with_an_ordinary_client(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post("/v1/jobs", files={"file": ("big.mp4", b"\x00" * (MAX_UPLOAD + 100_000))})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert live.wait_no_leftovers() == []


def test_file_just_over_the_limit_within_framing_slack(live: LiveServer) -> None:
    """A declared length within the multipart framing allowance is read, then refused by the count."""
    data = b"\xff\xd8\xff\xe0" + b"\x00" * (MAX_UPLOAD - 3)  # one byte over
    with live.client() as c:
        r = c.post("/v1/analyze", files={"file": ("big.jpg", data)})
    assert r.status_code == 413
    assert live.wait_no_leftovers() == []


@pytest.mark.parametrize(
    ("name", "content_type", "body", "message"),
    [
        (
            "two files",
            "multipart",
            multipart(("file", "a.jpg", b"\xff\xd8\xff"), ("file", "b.jpg", b"\xff\xd8\xff")),
            "exactly one file",
        ),
        (
            "missing file field",
            "multipart",
            multipart(("photo", "a.jpg", b"\xff\xd8\xff")),
            "unexpected form field",
        ),
        ("text field only", "multipart", multipart(("comment", None, b"hello")), "unexpected form field"),
        ("file as a text value", "multipart", multipart(("file", None, b"hello")), "must be a file upload"),
        (
            "extra field",
            "multipart",
            multipart(("file", "a.jpg", b"\xff\xd8\xff"), ("x", None, b"1")),
            "unexpected form field",
        ),
        ("empty multipart", "multipart", f"--{BOUNDARY}--\r\n".encode(), "missing file field"),
        (
            "no closing boundary",
            "multipart",
            multipart(("file", "a.jpg", b"\xff\xd8\xff"), close=False),
            "incomplete multipart",
        ),
        ("garbage", "multipart", b"this is not multipart at all", "multipart"),
        ("json body", "application/json", b'{"file": "aGVsbG8="}', "multipart/form-data"),
        (
            "no boundary",
            "multipart/form-data",
            multipart(("file", "a.jpg", b"\xff\xd8\xff")),
            "multipart/form-data",
        ),
    ],
)
def test_malformed_requests(
    live: LiveServer, name: str, content_type: str, body: bytes, message: str
) -> None:
    ctype = f"multipart/form-data; boundary={BOUNDARY}" if content_type == "multipart" else content_type
    with live.client() as c:
        for path in ("/v1/analyze", "/v1/jobs"):
            r = c.post(path, content=body, headers={"Content-Type": ctype})
            assert r.status_code == 422, (name, r.text)
            assert r.json()["error"]["code"] == "bad_request", name
            assert message in r.json()["error"]["message"], (name, r.json())
    assert live.wait_no_leftovers() == []


def test_multipart_with_two_files_via_httpx(live: LiveServer, small_face_jpeg: bytes) -> None:
    with live.client() as c:
        r = c.post(
            "/v1/analyze", files=[("file", ("a.jpg", small_face_jpeg)), ("file", ("b.jpg", small_face_jpeg))]
        )
        assert r.status_code == 422 and "exactly one file" in r.json()["error"]["message"]
        r = c.post("/v1/analyze", data={"file": "not a file"})
        assert r.status_code == 422
        r = c.post("/v1/analyze")
        assert r.status_code == 422
    assert live.wait_no_leftovers() == []


def test_client_vanishing_mid_upload_leaves_nothing(live: LiveServer) -> None:
    body = multipart(("file", "a.mp4", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 500_000))
    with start_upload(live, f"Content-Length: {len(body)}", "vanished") as sock:
        sock.sendall(body[: len(body) // 2])
        time.sleep(0.3)
    assert live.audit("vanished")["error"] == "client_disconnected"
    assert live.wait_no_leftovers() == []
    with live.client() as c:
        assert c.get("/readyz").status_code == 200


def test_client_leaving_during_analysis_stops_the_worker(live: LiveServer, small_face_jpeg: bytes) -> None:
    """The whole upload arrives, then the client hangs up while its (hanging) analysis runs: the
    server notices, stops the worker long before its 30 s timeout, logs a disconnect, not a 200."""
    body = multipart(("file", "facetrust-fault-hang.jpg", small_face_jpeg))
    t0 = time.monotonic()
    with start_upload(live, f"Content-Length: {len(body)}", "left-early") as sock:
        sock.sendall(body)
        time.sleep(0.5)
    record = live.audit("left-early", timeout=15)
    assert record["error"] == "client_disconnected" and record["status"] != 200
    assert time.monotonic() - t0 < 10
    assert live.wait_no_leftovers() == []
    with live.client() as c:  # the worker was replaced: the next analysis runs
        r = c.post("/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)})
    assert r.status_code == 200, r.text


def test_slow_upload_gets_408(tight: LiveServer) -> None:
    """upload_timeout is 2 s on the tight server: a client that stalls mid-body gets 408."""
    body = multipart(("file", "a.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 5000))
    with start_upload(tight, f"Content-Length: {len(body)}") as sock:
        sock.sendall(body[:1000])
        t0 = time.monotonic()
        status, headers, payload = read_response(sock, timeout=15)
        assert headers.get("connection") == "close" and closed_by_server(sock)
    assert status == 408 and 1.5 < time.monotonic() - t0 < 10
    assert json.loads(payload)["error"]["code"] == "upload_timeout"
    assert tight.wait_no_leftovers() == []


def test_bad_content_length(live: LiveServer) -> None:
    with start_upload(live, "Content-Length: banana", boundary="x") as sock:
        try:
            status, _, _ = read_response(sock)
        except (ConnectionResetError, IndexError):
            status = 400
    assert status in (400, 422)


def test_httpx_transport_errors_do_not_break_server(live: LiveServer, small_face_jpeg: bytes) -> None:
    with live.client(timeout=httpx.Timeout(0.001)) as c:
        try:
            c.post("/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)})
        except httpx.TimeoutException:
            pass
    with live.client() as c:
        assert c.post("/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)}).status_code == 200
    assert live.wait_no_leftovers() == []
