"""Jobs: 202, progress, result, cancel, delete, per-key visibility, expiry after the TTL."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from tests.detector import media_factory as mf
from tests.serving.conftest import LiveServer


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> bytes:
    """A 150-frame face video: all_frames takes several seconds on the tiny model."""
    face = np.ascontiguousarray(astronaut[20:180, 140:300])
    path = tmp_path_factory.mktemp("jobs") / "long.mp4"
    return mf.write_video(path, n_frames=150, size=(200, 160), draw=face).read_bytes()


def poll(c: httpx.Client, job_id: str, until: set[str], timeout: float = 60.0) -> list[dict]:
    """GET the job until its state is in ``until``; returns every body seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        seen.append(r.json())
        if seen[-1]["state"] in until:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {until}: {seen[-1]}")


def test_image_job_lifecycle(live: LiveServer, small_face_jpeg: bytes) -> None:
    with live.client() as c:
        r = c.post("/v1/jobs", files={"file": ("face.jpg", small_face_jpeg)})
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["Location"] == f"/v1/jobs/{job['job_id']}"
        assert job["state"] in ("queued", "running") and job["result"] is None
        assert job["sha256"] == r.headers["X-Content-SHA256"]
        assert job["expires"] > job["created"]
        seen = poll(c, job["job_id"], {"done", "failed"})
        final = seen[-1]
        assert final["state"] == "done", final
        assert final["progress"] == {"done": 1, "total": 1}
        assert final["result"]["status"] == "ok" and final["result"]["sha256"] == job["sha256"]
        assert final["media_type"] == "image" and final["finished"] >= final["created"]
        # The uploaded bytes are gone as soon as the job finished; only the result is kept.
        assert live.wait_no_leftovers() == []
        # Another key cannot see or delete it.
        with live.client(key="bob") as other:
            assert other.get(f"/v1/jobs/{job['job_id']}").status_code == 404
            assert other.delete(f"/v1/jobs/{job['job_id']}").status_code == 404
        d = c.delete(f"/v1/jobs/{job['job_id']}")
        assert d.status_code == 200 and d.json()["state"] == "done"
        assert c.get(f"/v1/jobs/{job['job_id']}").status_code == 404
        assert c.delete(f"/v1/jobs/{job['job_id']}").status_code == 404


def test_video_job_reports_progress_then_result(live: LiveServer, long_video: bytes) -> None:
    with live.client() as c:
        r = c.post("/v1/jobs", params={"frames": 48}, files={"file": ("long.mp4", long_video)})
        assert r.status_code == 202, r.text
        seen = poll(c, r.json()["job_id"], {"done", "failed"}, timeout=120)
    final = seen[-1]
    assert final["state"] == "done", final
    assert final["progress"] == {"done": 48, "total": 48}
    assert final["result"]["video"]["frames_sampled"] == 48  # over the sync limit (16): fine in a job
    dones = [s["progress"]["done"] for s in seen]
    assert dones == sorted(dones), "progress went backwards"
    assert any(0 < s["progress"]["done"] < 48 and s["state"] == "running" for s in seen), seen
    assert live.wait_no_leftovers() == []


def test_cancel_a_running_job(live: LiveServer, long_video: bytes, small_face_jpeg: bytes) -> None:
    with live.client() as c:
        r = c.post("/v1/jobs", params={"all_frames": True}, files={"file": ("long.mp4", long_video)})
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 60
        while True:
            body = c.get(f"/v1/jobs/{job_id}").json()
            if body["state"] == "running" and body["progress"]["done"] > 0:
                break
            assert body["state"] in ("queued", "running") and time.monotonic() < deadline, body
            time.sleep(0.05)
        d = c.delete(f"/v1/jobs/{job_id}")
        assert d.status_code == 200 and d.json()["state"] == "cancelled"
        assert d.json()["progress"]["done"] < 150
        assert c.get(f"/v1/jobs/{job_id}").status_code == 404
        assert live.wait_no_leftovers() == []
        # The worker was told to stop (or replaced): analyses go on.
        assert c.post("/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)}).status_code == 200
    with live.client(key=None) as c:
        assert c.get("/readyz").json()["ready"] is True


def test_failed_and_refused_jobs(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    video = mf.write_video(tmp_path_factory.mktemp("bad") / "v.mp4", n_frames=10, size=(64, 48))
    truncated = mf.truncated(video.read_bytes(), 0.5)
    with live.client() as c:
        r = c.post("/v1/jobs", files={"file": ("cut.mp4", truncated)})
        assert r.status_code == 202
        final = poll(c, r.json()["job_id"], {"done", "failed"})[-1]
        assert final["state"] == "failed"
        assert final["error"]["code"] == "unreadable_media"
        assert final["result"]["status"] == "unreadable" and final["result"]["fake_probability"] is None
        # Not an allowed format: refused at submission, no job created.
        r = c.post("/v1/jobs", files={"file": ("page.jpg", mf.html_bytes())})
        assert r.status_code == 415 and "job_id" not in r.json()
        assert c.get("/v1/jobs/not-a-job").status_code == 404
    assert live.wait_no_leftovers() == []


def test_jobs_expire_after_ttl(tight: LiveServer, small_face_jpeg: bytes) -> None:
    """job_ttl is 3 s on the tight server: result and bytes are gone afterwards."""
    with tight.client() as c:
        r = c.post("/v1/jobs", files={"file": ("face.jpg", small_face_jpeg)})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["expires"] - job["created"] == pytest.approx(3, abs=0.01)
        final = poll(c, job["job_id"], {"done", "failed"}, timeout=10)[-1]
        assert final["state"] == "done"
        time.sleep(max(0.0, job["expires"] - time.time()) + 1.5)
        assert c.get(f"/v1/jobs/{job['job_id']}").status_code == 404
    assert tight.wait_no_leftovers() == []


def test_running_job_past_its_ttl_is_stopped(tight: LiveServer, small_face_jpeg: bytes) -> None:
    """A job still running when its TTL ends is cancelled: worker stopped, bytes deleted, slot freed."""
    restarts = tight.metric('facetrust_worker_restarts_total{reason="cancelled"}')
    with tight.client() as c:
        # The fault hook makes the worker hang (it ignores the cancel message): it gets killed.
        hang = c.post("/v1/jobs", files={"file": ("facetrust-fault-hang.jpg", small_face_jpeg)})
        assert hang.status_code == 202
        time.sleep(max(0.0, hang.json()["expires"] - time.time()) + 1.0)
        assert c.get(f"/v1/jobs/{hang.json()['job_id']}").status_code == 404
        assert tight.wait_no_leftovers(10) == []
    tight.wait_metric('facetrust_worker_restarts_total{reason="cancelled"}', restarts + 1)
    tight.wait_ready()
    with tight.client() as c:
        r = c.post("/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["crop_views"] == 1  # FACETRUST_MULTI_CROP=none reaches the workers
        assert r.json()["result"]["min_face_size"] == 30  # and FACETRUST_MIN_FACE=30
        ready = c.get("/readyz").json()
        assert ready["min_face_size"] == 30 and ready["multi_crop"] == "none"  # as /readyz says
