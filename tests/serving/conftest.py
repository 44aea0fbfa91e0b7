"""Real servers for the serving tests: `python -m facetrust serve` on 127.0.0.1, real sockets.

``live``: the main server (2 workers, API keys, test faults on) shared by the session.
``tight``: 1 worker, no queue, 3 s timeout, tiny job TTL: for overload, hang, crash
and expiry tests. Both use the real tiny ONNX model from ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.auth import hash_key
from tests.serving.corpus import jpeg_bytes

REPO = Path(__file__).resolve().parents[2]
MAX_UPLOAD = 2 * 1024 * 1024


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def files_under(path: Path) -> list[Path]:
    """Every regular file below ``path`` (recursively)."""
    return [p for p in path.rglob("*") if p.is_file()]


@dataclass
class LiveServer:
    """A running `facetrust serve` subprocess."""

    url: str
    temp_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = "alice", **kwargs: object) -> httpx.Client:
        """An httpx client for this server sending ``key``'s API key (None: no key)."""
        headers = {"X-API-Key": self.keys[key]} if key else {}
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.url, headers=headers, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far (audit lines included)."""
        return self.log_path.read_text(errors="replace")

    def audit(self, request_id: str, timeout: float = 10.0) -> dict:
        """The audit record of ``request_id`` (written just after the response: polled)."""
        deadline = time.monotonic() + timeout
        needle = f'"request_id":"{request_id}"'
        while True:
            for line in self.log().splitlines():
                if line.startswith('{"event":"request"') and needle in line:
                    return json.loads(line)
            assert time.monotonic() < deadline, f"no audit line for {request_id}"
            time.sleep(0.05)

    def leftover_files(self) -> list[Path]:
        """Files left in the configured temp dir (must be none between requests)."""
        return files_under(self.temp_dir)

    def wait_ready(self, timeout: float = 90.0, all_workers: bool = False) -> None:
        """Block until /readyz answers 200 (and, with ``all_workers``, every worker is warm)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
                try:
                    r = c.get("/readyz")
                    if r.status_code == 200 and (
                        not all_workers or r.json()["workers_ready"] == r.json()["workers"]
                    ):
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-3000:]}")

    def metric(self, series: str) -> float:
        """Current value of one Prometheus series, e.g. ``'facetrust_workers_ready'`` (0 if absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return 0.0

    def wait_metric(self, series: str, at_least: float, timeout: float = 30.0) -> float:
        """Poll until ``series`` reaches ``at_least``."""
        deadline = time.monotonic() + timeout
        while (value := self.metric(series)) < at_least:
            assert time.monotonic() < deadline, f"{series} = {value}, expected >= {at_least}"
            time.sleep(0.1)
        return value

    def wait_no_leftovers(self, timeout: float = 5.0) -> list[Path]:
        """Poll until the temp dir holds no file (cleanup may finish just after the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.leftover_files()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def stop(self, group: bool = False) -> int:
        """SIGTERM (to the whole process group with ``group``, as systemd and Ctrl-C in a
        terminal do: the workers get it too), wait, return the exit status."""
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def start_server(
    tmp: Path, model: Path, env_extra: dict[str, str], keys: dict[str, str] | None = None
) -> LiveServer:
    """Start `python -m facetrust serve` with ``FACETRUST_*`` settings and wait until ready."""
    temp_dir = tmp / "uploads"
    temp_dir.mkdir(parents=True, exist_ok=True)
    keys = keys if keys is not None else {"alice": "alice-secret-key-0123456789", "bob": "bob-secret-key-987"}
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACETRUST_")}
    env.update(
        {
            "FACETRUST_API_KEYS": ",".join(f"{kid}:{hash_key(k)}" for kid, k in keys.items()),
            "FACETRUST_TEMP_DIR": str(temp_dir),
            "FACETRUST_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "FACETRUST_TEST_FAULTS": "1",
            "FACETRUST_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            **env_extra,
        }
    )
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facetrust", "serve", "--port", str(port), "--model", str(model)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group (see LiveServer.stop)
        )
    server = LiveServer(f"http://127.0.0.1:{port}", temp_dir, log_path, proc, keys)
    try:
        server.wait_ready(all_workers=True)
    except BaseException:
        server.stop()
        raise
    return server


def assert_clean_stop(server: LiveServer, group: bool = False) -> None:
    """SIGTERM stops the server gracefully (uvicorn re-raises the signal: -15) with nothing left:
    no process of its group, no traceback while stopping, no file."""
    code = server.stop(group=group)
    assert code in (0, -signal.SIGTERM), server.log()[-3000:]
    assert "Application shutdown complete" in server.log()
    stopping = server.log().split("Shutting down")[-1]
    assert "Traceback" not in stopping and "BrokenPipeError" not in stopping, stopping[-3000:]
    deadline = time.monotonic() + 5
    while _group_members(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_members(server.proc.pid) == [], "worker processes outlived the server"
    assert server.leftover_files() == []
    assert list(server.temp_dir.iterdir()) == []


@pytest.fixture(scope="session")
def face_jpeg(astronaut: np.ndarray) -> bytes:
    """The astronaut photo (one real face, 512x512) as JPEG bytes."""
    return jpeg_bytes(astronaut)


@pytest.fixture(scope="session")
def small_face_jpeg(astronaut: np.ndarray) -> bytes:
    """A 160x160 crop of the astronaut around her face (cheap to analyse) as JPEG bytes."""
    return jpeg_bytes(np.ascontiguousarray(astronaut[20:180, 140:300]))


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    """The main server: 2 workers, queue 8, keys 'alice' and 'bob', sync limit 16 frames."""
    server = start_server(
        tmp_path_factory.mktemp("live"),
        tiny_model,
        {
            "FACETRUST_WORKERS": "2",
            "FACETRUST_QUEUE_SIZE": "8",
            "FACETRUST_TIMEOUT": "30",
            "FACETRUST_SYNC_MAX_FRAMES": "16",
            "FACETRUST_JOB_TTL": "120",
        },
    )
    yield server
    assert_clean_stop(server)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(entry.name))
    return out


@pytest.fixture(scope="session")
def tight(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    """1 worker, no queue (a second analysis gets 503), 3 s timeout, 1 GiB workers, 3 s job TTL,
    one crop per face (FACETRUST_MULTI_CROP=none), faces from 30 px (FACETRUST_MIN_FACE=30)."""
    server = start_server(
        tmp_path_factory.mktemp("tight"),
        tiny_model,
        {
            "FACETRUST_WORKERS": "1",
            "FACETRUST_QUEUE_SIZE": "0",
            "FACETRUST_TIMEOUT": "3",
            "FACETRUST_UPLOAD_TIMEOUT": "2",
            "FACETRUST_WORKER_MEMORY_MB": "1024",
            "FACETRUST_JOB_TTL": "3",
            "FACETRUST_MULTI_CROP": "none",
            "FACETRUST_MIN_FACE": "30",
        },
    )
    yield server
    assert_clean_stop(server, group=True)  # as systemd stops a service: the workers get it too
