"""HTML reports (detector.report) from real analyses: crops, timeline, embedded results, escaping."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.analyze import Analyzer, create_analyzer
from detector.crops import crop_face
from detector.report import IMAGE_THUMBS, TRACK_THUMBS, CropCollector, Report, shown_faces
from detector.schema import AnalysisResult
from detector.video import Sampling
from tests.detector.scan_media import face_video, jpeg_bytes, no_face_image, png_bytes


class _Page(HTMLParser):
    """Tags, image sources and embedded JSON results of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []
        self.results: list[dict] = []
        self._json = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"] or "")
        self._json = tag == "script" and a.get("type") == "application/json"

    def handle_data(self, data: str) -> None:
        if self._json:
            self.results.append(json.loads(data))
            self._json = False


def page(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


def jpeg_of(src: str) -> np.ndarray:
    assert src.startswith("data:image/jpeg;base64,")
    image = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def analyzer(tiny_model: Path) -> Analyzer:
    return create_analyzer(tiny_model)


def test_face_crops_are_the_model_crops_and_read_only(analyzer: Analyzer, astronaut: np.ndarray) -> None:
    seen: list[tuple[int | None, np.ndarray]] = []
    data = jpeg_bytes(astronaut)
    result = analyzer.analyze_bytes(data, "a.jpg", face_crops=lambda i, c: seen.append((i, c)))
    assert result.status == "ok" and result.crop_views == 4  # 4 views scored, one crop reported
    (index, crops), = seen
    assert index is None and crops.shape == (1, 64, 64, 3) and crops.dtype == np.uint8
    assert not crops.flags.writeable
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB)
    card = analyzer.card
    expected = crop_face(decoded, result.faces[0].box, card.crop_margin, card.input_size)
    assert np.array_equal(crops[0], expected)


def test_image_report(analyzer: Analyzer, astronaut: np.ndarray, tmp_path: Path) -> None:
    report = Report()
    crops = report.collector()
    face = analyzer.analyze_bytes(jpeg_bytes(astronaut), "astronaut.jpg", face_crops=crops)
    report.add(face, crops)
    empty = analyzer.analyze_bytes(png_bytes(no_face_image()), "gradient.png", face_crops=crops)
    report.add(empty)
    digest = report.write(tmp_path / "r.html")
    data = (tmp_path / "r.html").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    p = page(data.decode())
    assert p.tags["section"] == 2 and len(p.images) == 1
    assert jpeg_of(p.images[0]).shape == (96, 96, 3)
    assert [AnalysisResult.model_validate(r) for r in p.results] == [face, empty]
    text = data.decode()
    assert face.sha256 in text and empty.sha256 in text and "no_face" in text
    assert f"{face.fake_probability:.3f}" in text
    assert [f.name for f in tmp_path.iterdir()] == ["r.html"]  # no temporary file left


def test_video_report_has_a_timeline_and_each_tracks_faces(
    analyzer: Analyzer, astronaut: np.ndarray, tmp_path: Path
) -> None:
    video = face_video(tmp_path / "two.mp4", astronaut, people=2, frames=24)
    report = Report()
    crops = report.collector()
    result = analyzer.analyze_path(video, sampling=Sampling("count", 12), face_crops=crops)
    assert result.status == "ok" and len(result.tracks) == 2
    assert sorted(crops.crops) == [f.index for f in result.frames]  # every frame with faces
    assert all(len(crops.crops[f.index]) == len(f.faces) for f in result.frames)
    report.add(result, crops)
    p = page(report.html())
    assert p.tags["svg"] == 1 and p.tags["polyline"] == 2  # one line per track
    assert p.tags["circle"] == sum(len(f.faces) for f in result.frames)
    # per track: its most suspicious face and up to TRACK_THUMBS spread over it
    assert len(p.images) == 2 * (1 + min(TRACK_THUMBS, 12))
    assert all(jpeg_of(src).shape == (96, 96, 3) for src in p.images)
    assert p.tags["details"] == 1 and AnalysisResult.model_validate(p.results[0]) == result
    # Keeping only the shown thumbnails (what a serving worker sends back) changes nothing shown.
    shown = crops.shown(result)
    assert all(len(thumbs) == len(crops.crops[i]) for i, thumbs in shown.crops.items())  # positions kept
    kept = sum(1 for thumbs in shown.crops.values() for t in thumbs if t)
    assert kept == len(shown_faces(result)) == len(set(p.images)) < sum(len(f.faces) for f in result.frames)
    same = Report()
    same.created = report.created
    same.add(result, shown)
    assert same.html() == report.html()


def test_shown_thumbnails_of_a_crowded_photo() -> None:
    """A photo shows its IMAGE_THUMBS most suspicious faces; only those are kept."""
    from detector.schema import Face

    n = IMAGE_THUMBS + 6
    faces = [Face(box=(0, 0, 50, 50), landmarks=[(10, 10)] * 5, detection_score=0.99,
                  fake_probability=(i * 37 % n) / n, label="real", label_strict="real") for i in range(n)]
    result = AnalysisResult(path="crowd.jpg", status="ok", media_type="image", faces=faces)
    crops = CropCollector()
    crops(None, np.full((n, 64, 64, 3), 100, np.uint8))
    shown = crops.shown(result)
    top = sorted(range(n), key=lambda i: -faces[i].fake_probability)[:IMAGE_THUMBS]
    assert {i for i, t in enumerate(shown.crops[None]) if t} == set(top)
    full, pruned = Report(), Report()
    pruned.created = full.created
    full.add(result, crops)
    pruned.add(result, shown)
    assert full.html() == pruned.html() and "6 more face(s)" in full.html()


def test_report_escapes_what_it_shows(tmp_path: Path) -> None:
    hostile = '</script><b onload="x">&.jpg'
    report = Report(title="<i>case 7</i>")
    report.add(AnalysisResult(path=hostile, status="unreadable", error="<bad> & </script>"))
    text = report.html()
    assert "<b onload" not in text and "<i>case" not in text and text.count("</script>") == 1
    p = page(text)
    assert p.results == [AnalysisResult(path=hostile, status="unreadable",
                                        error="<bad> & </script>").model_dump(mode="json")]
    assert re.search(r"&lt;/script&gt;&lt;b onload=&quot;x&quot;&gt;&amp;\.jpg", text)
    # a right-to-left override must not make "evil<RLO>gpj.exe" read "evilexe.jpg"
    spoof = Report()
    spoof.add(AnalysisResult(path="evil\u202egpj.exe", status="unreadable"))
    shown = spoof.html().split('<script type="application/json"')[0]
    assert "\u202e" not in shown and "evil\\u202egpj.exe" in shown


def test_collector_keeps_small_jpegs() -> None:
    c = CropCollector()
    c(5, np.full((2, 224, 224, 3), 128, np.uint8))
    assert len(c.crops[5]) == 2 and c.get(5, 1) is not None and c.get(5, 2) is None and c.get(6, 0) is None
    assert len(c.get(5, 0) or b"") < 3000


def test_report_names_the_rule_used_and_kept_results(analyzer: Analyzer, astronaut: np.ndarray,
                                                     tmp_path: Path) -> None:
    video = face_video(tmp_path / "short.mp4", astronaut, frames=6)
    result = analyzer.analyze_path(video, sampling=Sampling("count", 2))  # 2 faces: a short track
    assert result.aggregation and "all_short" in result.aggregation
    report = Report()
    report.add(result, source="kept by --resume from old.jsonl")
    text = report.html()
    assert "every track has fewer than 3 faces" in text and "with at least 3 faces" not in text
    assert "not analysed in this run" in text and "kept by --resume from old.jsonl" in text


def test_tracks_get_distinct_colours() -> None:
    from detector.report import _colour

    assert len({_colour(k) for k in range(24)}) == 24
