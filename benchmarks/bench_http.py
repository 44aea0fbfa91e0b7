"""HTTP load benchmark of `facetrust serve` on loopback: latency, throughput, 503 share.

Starts a server on 127.0.0.1 (or uses ``--url`` of one already running on loopback),
then for each concurrency level sends a bounded number of single-face photo requests
(skimage's astronaut, or ``--image``) to ``POST /v1/analyze`` from that many client
threads, and prints throughput, p50/p95/p99 latency of the 200s, the share of 503s and
the count of other errors. Bounded in requests (``--requests`` per level) and in time
(``--max-seconds`` overall). Loopback only.

    python benchmarks/bench_http.py --model path/to/model.onnx
    python benchmarks/bench_http.py --url http://127.0.0.1:8000 --key KEY
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LevelStats:
    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, 200s only
    status: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # transport errors
    elapsed: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.status.values()) + self.errors

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def _photo(path: str | None) -> bytes:
    if path:
        return Path(path).read_bytes()
    from PIL import Image
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, "JPEG", quality=90)
    return out.getvalue()


def _check_loopback(url: str) -> None:
    host = (urlsplit(url).hostname or "").strip("[]")
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        sys.exit(f"refusing {url}: this benchmark only talks to a loopback server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    model: str | None, workers: int, queue: int, key: str, log: Path, multi_crop: str = "images",
    min_face: int | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start `facetrust serve` on a free loopback port; returns (process, url) once ready."""
    import hashlib

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACETRUST_")}
    env.update(
        FACETRUST_API_KEYS=f"bench:{hashlib.sha256(key.encode()).hexdigest()}",
        FACETRUST_WORKERS=str(workers),
        FACETRUST_QUEUE_SIZE=str(queue),
        FACETRUST_LOG_LEVEL="warning",
        FACETRUST_MULTI_CROP=multi_crop,
    )
    if min_face is not None:
        env["FACETRUST_MIN_FACE"] = str(min_face)
    cmd = [sys.executable, "-m", "facetrust", "serve", "--port", str(port)]
    if model:
        cmd += ["--model", model]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("server not ready within 120 s")


def run_level(url: str, key: str, photo: bytes, concurrency: int, n: int, stop_at: float) -> LevelStats:
    """``n`` requests from ``concurrency`` threads (each sends its next request when the last ends)."""
    stats = LevelStats(concurrency)
    lock = threading.Lock()
    counter = iter(range(n))

    def client_loop() -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as c:
            while time.monotonic() < stop_at:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/analyze", files={"file": ("photo.jpg", photo, "image/jpeg")})
                except httpx.HTTPError:
                    with lock:
                        stats.errors += 1
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    stats.status[r.status_code] = stats.status.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        stats.latencies.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client_loop) for _ in range(concurrency)]:
            f.result()
    stats.elapsed = time.perf_counter() - t0
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running loopback server (default: start one)")
    p.add_argument("--key", help="API key for --url")
    p.add_argument("--model", help="ONNX model for the server started here (default: the shipped one)")
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, len(os.sched_getaffinity(0))),
        help="worker processes of the server started here (default: CPU cores)",
    )
    p.add_argument(
        "--queue", type=int, default=None, help="queue size of the server started here (default: workers)"
    )
    p.add_argument(
        "--levels", default=None, help="comma-separated concurrency levels (default: 1,W,2W,2(W+Q))"
    )
    p.add_argument("--requests", type=int, default=40, help="requests per level (default 40, max 2000)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured requests first")
    p.add_argument("--max-seconds", type=float, default=300, help="overall time budget (default 300)")
    p.add_argument("--image", help="photo to send (default: skimage's astronaut as JPEG)")
    p.add_argument("--multi-crop", default="images", choices=("none", "images", "all"),
                   help="FACETRUST_MULTI_CROP of the server started here (default: images)")
    p.add_argument("--min-face", type=int, default=None,
                   help="FACETRUST_MIN_FACE of the server started here (default: the model card's)")
    args = p.parse_args(argv)
    n = max(1, min(args.requests, 2000))
    queue = args.workers if args.queue is None else args.queue
    photo = _photo(args.image)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            _check_loopback(args.url)
            if not args.key:
                sys.exit("--url needs --key")
            url, key = args.url.rstrip("/"), args.key
            workers, capacity = None, None
        else:
            key = secrets.token_urlsafe(24)
            proc, url = start_server(args.model, args.workers, queue, key, Path(tmp) / "server.log",
                                     args.multi_crop, args.min_face)
            workers, capacity = args.workers, args.workers + queue
        try:
            info = httpx.get(f"{url}/readyz", timeout=5).json()
            w = workers or int(info.get("workers", 1))
            levels = (
                [int(x) for x in args.levels.split(",")]
                if args.levels
                else sorted({1, w, 2 * w, 2 * (capacity or 2 * w)})
            )
            model = info.get("model") or {}
            print(
                f"server {url}  model {model.get('name')}/{model.get('version')}  workers {w}"
                + (f"  capacity {capacity} (workers + queue)" if capacity else "")
            )
            print(f"photo {len(photo)} bytes; {n} requests per level; levels {levels}")
            stop_at = time.monotonic() + args.max_seconds
            run_level(url, key, photo, 1, args.warmup, stop_at)
            print(
                f"{'conc':>5} {'sent':>5} {'ok':>5} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
                f"{'503 %':>6} {'other':>6}"
            )
            for level in levels:
                if time.monotonic() >= stop_at:
                    print(f"time budget of {args.max_seconds:g}s spent; stopping")
                    break
                s = run_level(url, key, photo, level, n, stop_at)
                ok = s.status.get(200, 0)
                other = s.errors + sum(v for k, v in s.status.items() if k not in (200, 503))
                share = 100.0 * s.status.get(503, 0) / max(1, s.sent)
                print(
                    f"{level:>5} {s.sent:>5} {ok:>5} {ok / s.elapsed:>7.2f} {s.pct(50):>8.1f} "
                    f"{s.pct(95):>8.1f} {s.pct(99):>8.1f} {share:>6.1f} {other:>6}"
                )
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
