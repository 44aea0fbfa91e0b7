"""POST /v1/analyze on a real server: images and videos, sampling, headers, probes, metrics, audit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.detector import media_factory as mf
from tests.serving.conftest import LiveServer, assert_clean_stop, start_server


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> bytes:
    """A 30-frame 25 fps H.264 MP4 with the astronaut's face moving across it."""
    face = np.ascontiguousarray(astronaut[20:180, 140:300])
    path = mf.write_video(
        tmp_path_factory.mktemp("video") / "face.mp4", n_frames=30, size=(240, 180), draw=face
    )
    return path.read_bytes()


def test_probes_and_docs(live: LiveServer) -> None:
    with live.client(key=None) as c:
        h = c.get("/healthz")
        assert h.status_code == 200 and h.json()["status"] == "alive"
        assert h.headers["X-FaceTrust-Model"] == "tiny-test/0.0.1"
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["ready"] is True and r.json()["workers_ready"] == 2
        # the server's default and lowest min face (tiny model card: faces from 20 px)
        assert r.json()["min_face_size"] == 20 and r.json()["multi_crop"] == "images"
        spec = c.get("/openapi.json").json()
        body = spec["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]["multipart/form-data"]
        assert body["schema"]["required"] == ["file"]
        assert {"/v1/jobs", "/v1/jobs/{job_id}", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
        # each route declares the errors it can answer: 404 on a job, no upload errors there
        job = spec["paths"]["/v1/jobs/{job_id}"]
        for method in ("get", "delete"):
            declared = set(job[method]["responses"])
            assert {"404", "401", "403"} <= declared and "413" not in declared
        report = spec["paths"]["/v1/jobs/{job_id}/report"]["get"]["responses"]
        assert "no_report" in report["404"]["description"] and "not_finished" in report["409"]["description"]
        assert "X-Report-SHA256" in report["200"]["headers"] and "text/html" in report["200"]["content"]
        assert "report" not in spec["paths"]["/v1/analyze"]["post"]["responses"]["409"]["description"]
        assert "report" in {p["name"] for p in spec["paths"]["/v1/jobs"]["post"]["parameters"]}
        upload = set(spec["paths"]["/v1/analyze"]["post"]["responses"])
        assert {"400", "408", "413", "415", "422", "503"} <= upload
        assert c.get("/docs").status_code == 200
        missing = c.get("/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert missing.headers["X-FaceTrust-Model"] == "tiny-test/0.0.1"


def test_image_is_analysed(live: LiveServer, face_jpeg: bytes) -> None:
    digest = hashlib.sha256(face_jpeg).hexdigest()
    with live.client() as c:
        r = c.post(
            "/v1/analyze",
            files={"file": ("../../etc/astronaut.jpg", face_jpeg, "text/plain")},
            headers={"X-Request-ID": "req-123"},
        )
    assert r.status_code == 200, r.text
    assert r.headers["X-Content-SHA256"] == digest
    assert r.headers["X-Request-ID"] == "req-123"
    body = r.json()
    assert body["request_id"] == "req-123" and body["sha256"] == digest
    assert body["model"] == {
        "name": "tiny-test",
        "version": "0.0.1",
        "threshold_balanced": 0.5,
        "threshold_strict": 0.9,
    }
    result = body["result"]
    assert result["path"] == "astronaut.jpg"  # no directories
    assert result["sha256"] == digest and result["size_bytes"] == len(face_jpeg)
    assert result["media_type"] == "image" and result["status"] == "ok"
    assert (result["width"], result["height"]) == (512, 512)
    assert len(result["faces"]) >= 1 and result["crop_views"] == 4  # multi-crop for photos by default
    assert result["min_face_size"] == 20  # the tiny model card's: no FACETRUST_MIN_FACE
    assert 0.0 <= result["fake_probability"] <= 1.0 and result["label"] in ("real", "fake")
    assert live.wait_no_leftovers() == []


@pytest.mark.parametrize("fmt", ["png", "webp", "bmp", "gif", "avif", "heic"])
def test_other_image_formats(live: LiveServer, astronaut: np.ndarray, fmt: str) -> None:
    data = mf.encode_image(np.ascontiguousarray(astronaut[20:180, 140:300]), fmt)
    with live.client() as c:
        r = c.post("/v1/analyze", files={"file": ("photo.jpg", data)})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["media_type"] == "image"
    assert r.json()["result"]["status"] in ("ok", "no_face")


def test_heic_on_a_server_without_the_heic_extra(
    tmp_path: Path, tiny_model: Path, astronaut: np.ndarray
) -> None:
    """A server installed without pillow-heif answers a HEIC with 415 naming the extra and no
    score, and still analyses AVIF (Pillow's own)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pillow_heif.py").write_text('raise ImportError("the heic extra is not installed")\n')
    server = start_server(tmp_path, tiny_model, {"PYTHONPATH": str(shim), "FACETRUST_WORKERS": "1"})
    try:
        face = np.ascontiguousarray(astronaut[20:180, 140:300])
        photo = mf.encode_image(face, "heic")
        with server.client() as c:
            heic = c.post("/v1/analyze", files={"file": ("IMG_0001.HEIC", photo)})
            avif = c.post("/v1/analyze", files={"file": ("photo.avif", mf.encode_image(face, "avif"))})
        assert heic.status_code == 415, heic.text
        assert "unsupported_media" in heic.text and "facetrust[heic]" in heic.text
        result = heic.json()["result"]
        assert result["status"] == "unsupported" and result["fake_probability"] is None
        assert result["sha256"] == hashlib.sha256(photo).hexdigest()  # the evidence hash, even refused
        assert avif.status_code == 200 and avif.json()["result"]["media_type"] == "image", avif.text
    finally:
        assert_clean_stop(server)


def test_video_is_analysed_with_sampling(live: LiveServer, face_video: bytes) -> None:
    with live.client() as c:
        r = c.post("/v1/analyze", params={"frames": 4}, files={"file": ("clip.mp4", face_video, "video/mp4")})
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        assert result["media_type"] == "video" and result["status"] in ("ok", "no_face")
        assert result["video"]["frames_sampled"] == 4 and len(result["frames"]) == 4
        assert result["video"]["sampling"] == "count=4"
        r = c.post("/v1/analyze", params={"fps": 5}, files={"file": ("clip.mp4", face_video)})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["video"]["frames_sampled"] == 6  # 1.2 s at 5 fps
    assert live.wait_no_leftovers() == []


def test_animated_gif_is_a_video(live: LiveServer, astronaut: np.ndarray) -> None:
    frames = [np.ascontiguousarray(np.roll(astronaut[20:180, 140:300], 4 * i, axis=1)) for i in range(3)]
    with live.client() as c:
        r = c.post("/v1/analyze", files={"file": ("anim.gif", mf.animated_gif(frames))})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["media_type"] == "video"


def test_animated_png_is_a_video(live: LiveServer, astronaut: np.ndarray) -> None:
    frames = [np.ascontiguousarray(np.roll(astronaut[20:180, 140:300], 4 * i, axis=1)) for i in range(3)]
    with live.client() as c:
        r = c.post("/v1/analyze", files={"file": ("anim.png", mf.animated(frames, "PNG"))})
        still = c.post("/v1/analyze", files={"file": ("still.png", mf.encode_image(frames[0], "png"))})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["media_type"] == "video" and r.json()["result"]["video"]["frames_sampled"] == 3
    assert still.status_code == 200 and still.json()["result"]["media_type"] == "image"


def test_sync_frame_limit(live: LiveServer, face_video: bytes) -> None:
    """More sampled frames than sync_max_frames (16): refused with a pointer to /v1/jobs."""
    with live.client() as c:
        r = c.post("/v1/analyze", params={"frames": 17}, files={"file": ("clip.mp4", face_video)})
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "over_sync_limit" and "/v1/jobs" in r.json()["error"]["message"]
        # all_frames: known only once the video is open (30 frames > 16).
        r = c.post("/v1/analyze", params={"all_frames": True}, files={"file": ("clip.mp4", face_video)})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "over_sync_limit"
        assert r.json()["result"]["status"] == "too_large"
        assert r.json()["result"]["fake_probability"] is None
        assert r.headers["X-Content-SHA256"] == hashlib.sha256(face_video).hexdigest()
    assert live.wait_no_leftovers() == []


@pytest.mark.parametrize(
    "params",
    [
        {"frames": 0},
        {"frames": "abc"},
        {"fps": -1},
        {"fps": 0},
        {"frames": 4, "fps": 2},
        {"frames": 2, "all_frames": True},
        {"frames": 10**9},
        {"fps": "nan"},
        {"fps": "inf"},
        {"FRAMES": 4},
        {"bogus": 1},
        [("frames", 4), ("frames", 5)],
        {"min_face": 19},
        {"min_face": 0},
        {"min_face": 4097},
        {"min_face": "abc"},
        [("min_face", 30), ("min_face", 40)],
    ],
)
def test_bad_sampling_parameters(live: LiveServer, small_face_jpeg: bytes, params) -> None:
    with live.client() as c:
        r = c.post("/v1/analyze", params=params, files={"file": ("a.jpg", small_face_jpeg)})
        job = c.post("/v1/jobs", params=params, files={"file": ("a.jpg", small_face_jpeg)})
    for resp in (r, job):
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["error"]["code"] in ("bad_request", "over_sync_limit")
        assert body["model"]["name"] == "tiny-test" and body["request_id"]
    message = r.json()["error"]["message"]
    if "FRAMES" in str(params) or "bogus" in str(params):
        assert "unknown query parameter" in message and "allowed: frames, fps, all_frames" in message
    if "nan" in str(params) or "inf" in str(params):
        assert "finite" in message
    if params == {"min_face": 19}:  # the tiny model card's min_face_size is 20
        assert message == "min_face=19 is below this server's smallest face size, 20 px (GET /readyz)"


def test_min_face_per_request(live: LiveServer, face_jpeg: bytes, face_video: bytes) -> None:
    """``min_face`` raises the smallest face looked for in one request, as `scan --min-face`:
    recorded in the result; a face below it is not reported (no_face, no score)."""
    with live.client() as c:
        plain = c.post("/v1/analyze", files={"file": ("a.jpg", face_jpeg)}).json()["result"]
        raised = c.post("/v1/analyze", params={"min_face": 60}, files={"file": ("a.jpg", face_jpeg)},
                        headers={"X-Request-ID": "min-face-60"})
        over = c.post("/v1/analyze", params={"min_face": 150}, files={"file": ("a.jpg", face_jpeg)})
        clip = c.post("/v1/analyze", params={"frames": 4, "min_face": 1000},
                      files={"file": ("clip.mp4", face_video)})
        job = c.post("/v1/jobs", params={"min_face": 60}, files={"file": ("a.jpg", face_jpeg)})
        assert job.status_code == 202, job.text
        from tests.serving.test_jobs import poll

        done = poll(c, job.json()["job_id"], {"done", "failed"})[-1]
    assert plain["min_face_size"] == 20 and plain["status"] == "ok"
    assert raised.status_code == 200, raised.text
    r = raised.json()["result"]  # the astronaut's face box is about 87 x 110 px
    assert r["status"] == "ok" and r["min_face_size"] == 60
    # the pyramid stays anchored at 20 px: here the same box, so the same score
    assert r["faces"][0]["box"] == plain["faces"][0]["box"]
    assert r["fake_probability"] == plain["fake_probability"]
    assert over.status_code == 200 and over.json()["result"]["status"] == "no_face"
    assert over.json()["result"]["fake_probability"] is None and over.json()["result"]["min_face_size"] == 150
    assert "150 px" in over.json()["result"]["error"]
    assert clip.status_code == 200 and clip.json()["result"]["status"] == "no_face"
    assert clip.json()["result"]["min_face_size"] == 1000
    assert clip.json()["result"]["video"]["frames_sampled"] == 4
    assert done["state"] == "done" and done["result"]["min_face_size"] == 60
    assert live.audit("min-face-60")["min_face"] == 60  # the audit line says what was asked for
    assert live.wait_no_leftovers() == []


def test_undecodable_image_keeps_its_media_type(live: LiveServer, small_face_jpeg: bytes) -> None:
    """A truncated JPEG is still an image by its magic bytes: `media_type` says so."""
    with live.client() as c:
        r = c.post("/v1/analyze", files={"file": ("cut.jpg", small_face_jpeg[: len(small_face_jpeg) // 2])})
    assert r.status_code == 422, r.text
    result = r.json()["result"]
    assert result["status"] == "unreadable" and result["media_type"] == "image"
    assert result["fake_probability"] is None


def test_metrics(live: LiveServer, small_face_jpeg: bytes) -> None:
    with live.client() as c:
        assert c.post("/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)}).status_code == 200
        assert c.post("/v1/analyze", files={"file": ("a.jpg", b"<html></html>")}).status_code == 415
        text = c.get("/metrics").text
    assert 'facetrust_http_requests_total{method="POST",route="/v1/analyze",status="200"}' in text
    assert 'facetrust_http_requests_total{method="POST",route="/v1/analyze",status="415"}' in text
    assert (
        'facetrust_http_request_duration_seconds_bucket{le="0.5",method="POST",route="/v1/analyze"}' in text
    )
    assert 'facetrust_inference_duration_seconds_count{media_type="image"}' in text
    assert 'facetrust_rejections_total{reason="unsupported_media"}' in text
    assert "facetrust_queue_depth " in text and "facetrust_analyses_in_progress " in text
    assert "facetrust_faces_per_frame_count" in text
    assert "facetrust_workers_ready 2.0" in text


def test_audit_line_per_request(live: LiveServer, small_face_jpeg: bytes) -> None:
    digest = hashlib.sha256(small_face_jpeg).hexdigest()
    with live.client() as c:
        r = c.post(
            "/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)}, headers={"X-Request-ID": "audit-1"}
        )
        assert r.status_code == 200
        bad = c.post(
            "/v1/analyze", files={"file": ("a.jpg", b"PK\x03\x04zip")}, headers={"X-Request-ID": "audit-2"}
        )
        assert bad.status_code == 415
    ok = live.audit("audit-1")
    assert ok["key_id"] == "alice" and ok["sha256"] == digest and ok["status"] == 200
    assert ok["media_type"] == "image" and ok["format"] == "jpeg" and ok["size_bytes"] == len(small_face_jpeg)
    assert ok["result_status"] == "ok" and ok["verdict"] in ("real", "fake")
    assert ok["model"] == "tiny-test/0.0.1" and ok["min_face"] is None  # none asked for
    assert {"upload", "queue", "analysis", "total"} <= set(ok["timings"])
    refused = live.audit("audit-2")
    assert refused["status"] == 415 and refused["error"] == "unsupported_media"
    assert refused["sha256"] == hashlib.sha256(b"PK\x03\x04zip").hexdigest()


def test_every_response_names_model_even_without_upload(live: LiveServer) -> None:
    with live.client(key=None) as c:
        r = c.post("/v1/analyze", files={"file": ("a.jpg", b"x")})
    assert r.status_code == 401
    assert r.headers["X-FaceTrust-Model"] == "tiny-test/0.0.1"
    assert r.json()["model"]["version"] == "0.0.1" and r.json()["sha256"] is None
    assert "X-Content-SHA256" not in r.headers
