"""Isolation on the tight server (1 worker, no queue, 3 s timeout, 1 GiB address space per worker).

Faults are triggered by file names through the server's test-only ``test_faults`` hook, in
the real worker process: a segfault, a hang that ignores cancellation, a huge allocation.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx

from tests.serving.conftest import LiveServer


def analyze(server: LiveServer, name: str, data: bytes) -> httpx.Response:
    with server.client() as c:
        return c.post("/v1/analyze", files={"file": (name, data)})


def test_full_queue_gets_503_with_retry_after_and_hang_gets_504(
    tight: LiveServer, small_face_jpeg: bytes
) -> None:
    timeouts = tight.metric('facetrust_worker_restarts_total{reason="timeout"}')
    box: dict[str, httpx.Response] = {}
    slow = threading.Thread(
        target=lambda: box.update(r=analyze(tight, "facetrust-fault-hang.jpg", small_face_jpeg))
    )
    t0 = time.monotonic()
    slow.start()
    tight.wait_metric("facetrust_analyses_in_progress", 1)
    # The only slot is taken: refused at once, with a hint when to come back.
    for path in ("/v1/analyze", "/v1/jobs"):
        with tight.client() as c:
            r = c.post(path, files={"file": ("a.jpg", small_face_jpeg)})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "queue_full"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    slow.join(30)
    hung = box["r"]
    assert hung.status_code == 504, hung.text
    assert hung.json()["error"]["code"] == "timeout" and hung.json()["result"]["status"] == "timeout"
    assert 3 <= time.monotonic() - t0 < 15
    # The hung worker was killed and replaced; the next request is served.
    tight.wait_metric('facetrust_worker_restarts_total{reason="timeout"}', timeouts + 1)
    tight.wait_ready()
    ok = analyze(tight, "a.jpg", small_face_jpeg)
    assert ok.status_code == 200, ok.text
    assert 'facetrust_rejections_total{reason="queue_full"}' in httpx.get(f"{tight.url}/metrics").text
    assert tight.wait_no_leftovers() == []


def test_worker_crash_fails_only_that_request(tight: LiveServer, small_face_jpeg: bytes) -> None:
    crashes = tight.metric('facetrust_worker_restarts_total{reason="crashed"}')
    r = analyze(tight, "facetrust-fault-crash.jpg", small_face_jpeg)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["code"] == "worker_crashed" and "SIGSEGV" in body["error"]["message"]
    assert body["result"]["status"] == "unreadable" and body["result"]["fake_probability"] is None
    assert body["sha256"] == r.headers["X-Content-SHA256"]
    tight.wait_metric('facetrust_worker_restarts_total{reason="crashed"}', crashes + 1)
    tight.wait_ready()
    ok = analyze(tight, "a.jpg", small_face_jpeg)
    assert ok.status_code == 200, ok.text
    assert tight.wait_no_leftovers() == []


def test_memory_limit_is_enforced_in_the_worker(tight: LiveServer, small_face_jpeg: bytes) -> None:
    """The worker tries to allocate more than its 1 GiB RLIMIT_AS: refused, and it keeps serving."""
    restarts = sum(
        tight.metric(f'facetrust_worker_restarts_total{{reason="{k}"}}')
        for k in ("crashed", "timeout", "cancelled")
    )
    r = analyze(tight, "facetrust-fault-oom.jpg", small_face_jpeg)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "media_too_large"
    assert "memory limit (1024 MiB)" in r.json()["error"]["message"]
    ok = analyze(tight, "a.jpg", small_face_jpeg)
    assert ok.status_code == 200, ok.text
    after = sum(
        tight.metric(f'facetrust_worker_restarts_total{{reason="{k}"}}')
        for k in ("crashed", "timeout", "cancelled")
    )
    assert after == restarts  # MemoryError is reported, the process survives
    assert tight.wait_no_leftovers() == []


def test_idle_worker_killed_from_outside_is_replaced(tight: LiveServer, small_face_jpeg: bytes) -> None:
    tight.wait_ready()
    died = tight.metric('facetrust_worker_restarts_total{reason="died_idle"}')
    pid = int(re.findall(r"worker \d+ ready \(pid (\d+)", tight.log())[-1])
    os.kill(pid, signal.SIGKILL)
    tight.wait_metric('facetrust_worker_restarts_total{reason="died_idle"}', died + 1)
    tight.wait_ready()
    assert int(re.findall(r"worker \d+ ready \(pid (\d+)", tight.log())[-1]) != pid
    ok = analyze(tight, "a.jpg", small_face_jpeg)
    assert ok.status_code == 200, ok.text
