"""HTML reports of jobs: ``POST /v1/jobs?report=true`` then ``GET /v1/jobs/{id}/report``."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from detector import create_analyzer
from detector.report import CropCollector, Report, shown_faces
from detector.schema import AnalysisResult
from detector.video import Sampling
from tests.detector import media_factory as mf
from tests.serving.conftest import LiveServer
from tests.serving.test_jobs import poll

_RECORD = re.compile(r'<script type="application/json" class="facetrust-result">(.*?)</script>', re.S)
_THUMB = re.compile(r'src="(data:image/jpeg;base64,[^"]+)"')


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """40 frames of the astronaut's face drifting right (one person, one track)."""
    face = np.ascontiguousarray(astronaut[20:180, 140:300])
    return mf.write_video(tmp_path_factory.mktemp("report") / "face.mp4", n_frames=40, size=(240, 176),
                          draw=face)


def _finished_report(live: LiveServer, name: str, data: bytes, **params: object) -> tuple[dict, bytes, dict]:
    """Submit ``data`` as a job with a report; the finished job, the report bytes, its headers."""
    with live.client() as c:
        r = c.post("/v1/jobs", params={"report": True, **params}, files={"file": (name, data)})
        assert r.status_code == 202, r.text
        assert r.json()["report"] is None  # not before the job has finished
        final = poll(c, r.json()["job_id"], {"done", "failed"}, timeout=120)[-1]
        assert final["report"] == f"/v1/jobs/{final['job_id']}/report", final
        got = c.get(final["report"])
        assert got.status_code == 200, got.text
        # the same bytes on every GET
        assert c.get(final["report"]).content == got.content
    return final, got.content, dict(got.headers)


def test_video_job_report_holds_the_result_and_the_faces_it_shows(
    live: LiveServer, face_video: Path, tiny_model: Path
) -> None:
    final, html, headers = _finished_report(live, "face.mp4", face_video.read_bytes(), frames=12)
    assert final["state"] == "done" and final["result"]["video"]["frames_sampled"] == 12
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-report-sha256"] == hashlib.sha256(html).hexdigest()
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["content-disposition"] == (
        f'attachment; filename="facetrust-report-{final["sha256"][:16]}.html"'
    )
    text = html.decode()
    assert "<script>" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    # The whole result is in it, exactly as GET /v1/jobs/{id} gave it.
    [record] = _RECORD.findall(text)
    assert json.loads(record) == final["result"]
    assert final["sha256"] in text and "<polyline" in text
    # The thumbnails are the crops the model scored, the same ones a local analysis of the same
    # file (what `facetrust scan --report` runs) shows for this result.
    result = AnalysisResult.model_validate(final["result"])
    local = CropCollector()
    with create_analyzer(str(tiny_model)) as analyzer:
        analyzer.analyze_path(face_video, sampling=Sampling("count", 12), face_crops=local)
    expected = Report()
    expected.add(result, local)
    want = _THUMB.findall(expected.html())
    assert len(want) >= 2 and _THUMB.findall(text) == want
    # Only what the report shows crossed from the worker: a few thumbnails per track.
    assert sum(len(v) for v in local.crops.values()) > len(shown_faces(result))


def test_image_and_failed_job_reports(live: LiveServer, small_face_jpeg: bytes, tmp_path: Path) -> None:
    final, html, _ = _finished_report(live, "face.jpg", small_face_jpeg)
    assert final["state"] == "done" and len(final["result"]["faces"]) >= 1
    assert len(_THUMB.findall(html.decode())) == len(final["result"]["faces"])
    # A file that cannot be read still gets its report: the status and the error, no score.
    video = mf.write_video(tmp_path / "v.mp4", n_frames=10, size=(64, 48))
    final, html, _ = _finished_report(live, "cut.mp4", mf.truncated(video.read_bytes(), 0.5))
    assert final["state"] == "failed" and final["result"]["status"] == "unreadable"
    text = html.decode()
    assert "unreadable" in text and json.loads(_RECORD.findall(text)[0]) == final["result"]
    assert live.wait_no_leftovers() == []


def test_report_refusals(live: LiveServer, small_face_jpeg: bytes, tmp_path: Path) -> None:
    long_video = mf.write_video(
        tmp_path / "long.mp4", n_frames=150, size=(200, 160), draw=np.full((40, 40, 3), 200, np.uint8)
    ).read_bytes()
    with live.client() as c:
        # Submitted without report=true: no report.
        r = c.post("/v1/jobs", files={"file": ("face.jpg", small_face_jpeg)})
        plain = poll(c, r.json()["job_id"], {"done"})[-1]
        assert plain["report"] is None
        got = c.get(f"/v1/jobs/{plain['job_id']}/report")
        assert got.status_code == 404 and got.json()["error"]["code"] == "no_report"
        # Still running: 409, then gone with the job.
        r = c.post("/v1/jobs", params={"all_frames": True, "report": True},
                   files={"file": ("long.mp4", long_video)})
        job_id = r.json()["job_id"]
        early = c.get(f"/v1/jobs/{job_id}/report")
        assert early.status_code == 409 and early.json()["error"]["code"] == "not_finished", early.text
        assert early.json()["sha256"] == early.headers["X-Content-SHA256"] == r.json()["sha256"]
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 200
        assert c.get(f"/v1/jobs/{job_id}/report").status_code == 404
        # Another key's job, or an unknown one: 404, as for the job itself.
        r = c.post("/v1/jobs", params={"report": "true"}, files={"file": ("face.jpg", small_face_jpeg)})
        mine = poll(c, r.json()["job_id"], {"done"})[-1]
        assert c.get(mine["report"]).status_code == 200
        with live.client(key="bob") as other:
            assert other.get(mine["report"]).status_code == 404
        with live.client(key=None) as anonymous:
            assert anonymous.get(mine["report"]).status_code == 401
        assert c.get("/v1/jobs/nope/report").status_code == 404
        # report is a job option: the synchronous route refuses it, like any unknown parameter.
        r = c.post("/v1/analyze", params={"report": True}, files={"file": ("face.jpg", small_face_jpeg)})
        assert r.status_code == 422 and "report" in r.json()["error"]["message"]
        r = c.post("/v1/jobs", params={"report": "maybe"}, files={"file": ("face.jpg", small_face_jpeg)})
        assert r.status_code == 422
        # Deleting the job deletes its report.
        assert c.delete(f"/v1/jobs/{mine['job_id']}").status_code == 200
        assert c.get(mine["report"]).status_code == 404
    assert live.wait_no_leftovers() == []
