"""Self-contained HTML reports of analysis results, to keep with the evidence.

One HTML file (no scripts, no external resources, opens offline in any browser) with, per
file: its SHA-256, size and media facts, the verdict at both thresholds and the rule that
made it, the warnings; for a photo every face (the crop the model scored, box, scores);
for a video a timeline of every track's face scores over time (SVG) with the thresholds,
each track's most suspicious face and faces spread over the track, and every sampled
frame's faces. The complete result (the ``facetrust scan --json`` schema) is embedded as
JSON, so the report holds the whole machine-readable record too.

Typical use::

    report = Report()
    crops = report.collector()
    result = analyzer.analyze_path("clip.mp4", face_crops=crops)
    report.add(result, crops)
    sha256 = report.write("report.html")
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import os
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from detector.schema import AnalysisResult, Face

#: Side of the face thumbnails in the report (pixels).
THUMB_SIZE = 96
#: Faces shown per video track besides its most suspicious one (evenly spread over the track).
TRACK_THUMBS = 8
#: Faces shown per photo at most (the most suspicious first).
IMAGE_THUMBS = 64
_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _colour(k: int) -> str:
    """A distinct colour for the ``k``-th track (hues spread by the golden angle after 8)."""
    if k < len(_COLOURS):
        return _COLOURS[k]
    return f"hsl({(k * 137.508) % 360:.0f}, 65%, {40 + 15 * (k % 2)}%)"


class CropCollector:
    """``face_crops`` callback for one analysis: keeps each face's crop as a small JPEG."""

    def __init__(self, size: int = THUMB_SIZE) -> None:
        self.size = size
        self.crops: dict[int | None, list[bytes]] = {}

    def __call__(self, frame_index: int | None, crops: np.ndarray) -> None:
        thumbs = []
        for crop in crops:
            small = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 85])
            thumbs.append(buf.tobytes() if ok else b"")
        self.crops[frame_index] = thumbs

    def get(self, frame_index: int | None, face: int) -> bytes | None:
        faces = self.crops.get(frame_index)
        return faces[face] if faces is not None and face < len(faces) and faces[face] else None

    def shown(self, result: AnalysisResult) -> CropCollector:
        """A copy holding only the thumbnails a report section of ``result`` shows (a few per
        track, at most :data:`IMAGE_THUMBS` per photo): what is worth keeping or sending once
        the analysis is over. Its report section is the same as with every thumbnail."""
        keep = shown_faces(result)
        out = CropCollector(self.size)
        for index, thumbs in self.crops.items():
            picked = [t if (index, j) in keep else b"" for j, t in enumerate(thumbs)]
            if any(picked):
                out.crops[index] = picked
        return out


def shown_faces(result: AnalysisResult) -> set[tuple[int | None, int]]:
    """``(frame index, face number in the frame)`` of every face whose crop the report section
    of ``result`` shows; a photo's faces have frame index None."""
    out: set[tuple[int | None, int]] = {(None, i) for i in _image_shown(result)}
    members = _track_faces(result)
    for tr in result.tracks or []:
        items = members.get(tr.id, [])
        if items:
            worst, spread = _track_shown(items)
            out.update((items[i][0], items[i][2]) for i in (worst, *spread))
    return out


class Report:
    """Results gathered for one HTML report (:meth:`add`, then :meth:`html` or :meth:`write`)."""

    def __init__(self, title: str = "FaceTrust analysis report") -> None:
        self.title = title
        self.created = _dt.datetime.now(_dt.timezone.utc)
        self._sections: list[str] = []

    def collector(self) -> CropCollector:
        """A fresh ``face_crops`` callback for the next analysis."""
        return CropCollector()

    def add(
        self, result: AnalysisResult, crops: CropCollector | None = None, source: str | None = None
    ) -> None:
        """Add one file's section (``crops``: the collector passed to its analysis, if any;
        ``source``: where the result came from when it was not analysed now, e.g. an earlier
        scan's ``--output`` file). The section is rendered now, keeping only the thumbnails it
        shows."""
        self._sections.append(_section(len(self._sections), result, crops, source))

    def html(self) -> str:
        """The whole report."""
        try:
            from importlib.metadata import version

            tool = f"FaceTrust {version('facetrust')}"
        except Exception:  # noqa: BLE001 - not installed as a distribution
            tool = "FaceTrust"
        when = self.created.strftime("%Y-%m-%d %H:%M:%S UTC")
        body = "\n".join(self._sections) or "<p>No files were scanned.</p>"
        return _PAGE.format(
            title=_e(self.title),
            style=_STYLE,
            meta=_e(f"Made by {tool} on {when}. {len(self._sections)} file(s)."),
            body=body,
        )

    def encode(self) -> bytes:
        """The whole report as UTF-8 bytes (a file name that is not UTF-8, surrogate-escaped by
        Python, is shown with \\udcxx escapes)."""
        return self.html().encode("utf-8", "backslashreplace")

    def write(self, path: str | os.PathLike[str]) -> str:
        """Write the report to ``path`` (complete or not at all: a temporary file renamed into
        place) and return the SHA-256 of the written file."""
        path = Path(path)
        data = self.encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return hashlib.sha256(data).hexdigest()


# -- rendering ---------------------------------------------------------------------------------
def _e(value: object) -> str:
    """``value`` as HTML text. Invisible format characters (Unicode category Cf: a right-to-left
    override U+202E makes a name ending "gpj.exe" read as ending "exe.jpg"; zero-width
    characters) are shown as ``\\uXXXX`` escapes, so a name reads as what it is."""
    text = str(value)
    if not text.isascii():
        text = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cf" else c for c in text)
    return html.escape(text, quote=True)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _img(jpeg: bytes | None, title: str = "") -> str:
    if not jpeg:
        return '<span class="nothumb">no crop</span>'
    data = base64.b64encode(jpeg).decode("ascii")
    return (f'<img class="face" src="data:image/jpeg;base64,{data}" width="{THUMB_SIZE}" '
            f'height="{THUMB_SIZE}" alt="{_e(title)}" title="{_e(title)}">')


def _label(label: str | None) -> str:
    cls = {"fake": "fake", "real": "real"}.get(label or "", "none")
    return f'<span class="{cls}">{_e(label or "-")}</span>'


def _rows(pairs: Sequence[tuple[str, object]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)


def _section(number: int, r: AnalysisResult, crops: CropCollector | None, source: str | None) -> str:
    facts: list[tuple[str, object]] = [
        ("file", f"<code>{_e(r.path)}</code>"),
        ("SHA-256", f"<code>{_e(r.sha256 or '-')}</code>"),
        ("size", "-" if r.size_bytes is None else f"{r.size_bytes:,} bytes"),
        ("media", _e(r.media_type or "-")),
        ("status", _e(r.status) + (f": {_e(r.error)}" if r.error else "")),
    ]
    if source:
        facts.append(("result", f"<b>not analysed in this run</b>: {_e(source)}"))
    if r.model is not None:
        m = r.model
        facts.append(("model", _e(f"{m.name} {m.version}: balanced threshold "
                                  f"{m.threshold_balanced:.3f}, strict {m.threshold_strict:.3f}")))
    if r.fake_probability is not None:
        facts += [
            ("fake probability", f"<b>{_p(r.fake_probability)}</b> (calibrated; rule "
                                 f"<code>{_e(r.aggregation or '-')}</code>)"),
            ("verdict (balanced)", _label(r.label)),
            ("verdict (strict, ~1% false positives)", _label(r.label_strict)),
        ]
    if r.width is not None and r.height is not None:
        facts.append(("picture", f"{r.width}x{r.height} px"))
    if r.video is not None:
        v = r.video
        facts.append(("video", _e(
            f"{v.fps or 0:g} fps, {v.duration or 0:.2f} s, rotation {v.rotation}, sampling "
            f"{v.sampling}: {v.frames_sampled} frames analysed of {v.frames_decoded} decoded"
        )))
    if r.crop_views is not None:
        facts.append(("crops per face", str(r.crop_views)))
    if r.min_face_size is not None:
        facts.append(("faces looked for", f"box side {r.min_face_size} px and up (smaller: not reported)"))
    parts = [f'<section id="file-{number}"><h2>{_e(Path(r.path).name or r.path)}</h2>',
             f'<table class="facts">{_rows(facts)}</table>']
    if r.warnings:
        parts.append('<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in r.warnings)
                     + "</ul>")
    if r.faces:
        parts.append(_image_faces(r, crops))
    if r.frames:
        parts.append(_timeline(r))
        parts.append(_tracks(r, crops))
        parts.append(_frames(r))
    record = json.dumps(r.model_dump(mode="json"), separators=(",", ":"))
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        record = record.replace(char, code)  # nothing in it can end the script element
    parts.append(f'<script type="application/json" class="facetrust-result">{record}</script>')
    parts.append("</section>")
    return "\n".join(parts)


def _face_cells(face: Face) -> str:
    box = ", ".join(f"{v:.0f}" for v in face.box)
    turned = f", turned {face.orientation}&deg;" if face.orientation else ""
    return (f"<td>{_p(face.fake_probability)}</td><td>{_label(face.label)}</td>"
            f"<td>{_label(face.label_strict)}</td><td>[{box}]</td>"
            f"<td>{face.detection_score:.3f}{turned}</td>")


def _image_shown(r: AnalysisResult) -> list[int]:
    """The photo faces a section shows, most suspicious first (at most :data:`IMAGE_THUMBS`)."""
    faces = r.faces or []
    return sorted(range(len(faces)), key=lambda i: -faces[i].fake_probability)[:IMAGE_THUMBS]


def _image_faces(r: AnalysisResult, crops: CropCollector | None) -> str:
    faces = r.faces or []
    rows = []
    for i in _image_shown(r):
        thumb = crops.get(None, i) if crops is not None else None
        rows.append(f"<tr><td>{i}</td><td>{_img(thumb, f'face {i}')}</td>{_face_cells(faces[i])}</tr>")
    more = len(faces) - IMAGE_THUMBS
    note = f"<p>{more} more face(s) in the embedded result.</p>" if more > 0 else ""
    return ("<h3>Faces (most suspicious first; the crop the model scored)</h3>"
            '<table class="grid"><tr><th>face</th><th>crop</th><th>p(fake)</th><th>balanced</th>'
            "<th>strict</th><th>box [x0, y0, x1, y1]</th><th>detection</th></tr>"
            + "".join(rows) + "</table>" + note)


def _track_faces(r: AnalysisResult) -> dict[int, list[tuple[int, float, int, Face]]]:
    """Per track: (frame index, time, face number in the frame, face), in time order."""
    out: dict[int, list[tuple[int, float, int, Face]]] = {}
    for frame in r.frames or []:
        for j, face in enumerate(frame.faces):
            out.setdefault(int(face.track_id or 0), []).append((frame.index, frame.time, j, face))
    return out


def _timeline(r: AnalysisResult) -> str:
    members = _track_faces(r)
    if not members:
        return "<p>No face in any analysed frame.</p>"
    times = [f.time for f in r.frames or []]
    t0, t1 = min(times), max(times)
    span = (t1 - t0) or 1.0
    w, h, left, right, top, bottom = 760, 220, 44, 12, 12, 30

    def x(t: float) -> float:
        return left + (t - t0) / span * (w - left - right)

    def y(p: float) -> float:
        return top + (1 - p) * (h - top - bottom)

    svg = [f'<svg class="timeline" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
           'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="face scores over time">',
           f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
           'fill="#fafafa" stroke="#999"/>']
    for p in (0.0, 0.5, 1.0):
        svg.append(f'<text x="{left - 6}" y="{y(p) + 4:.1f}" text-anchor="end" '
                   f'font-size="11">{p:.1f}</text>')
    svg.append(f'<text x="{left}" y="{h - 8}" font-size="11">{t0:.2f} s</text>')
    svg.append(f'<text x="{w - right}" y="{h - 8}" font-size="11" text-anchor="end">{t1:.2f} s</text>')
    if r.model is not None:
        for name, p, dash in (("balanced", r.model.threshold_balanced, "6,4"),
                              ("strict", r.model.threshold_strict, "2,3")):
            svg.append(f'<line x1="{left}" x2="{w - right}" y1="{y(p):.1f}" y2="{y(p):.1f}" '
                       f'stroke="#555" stroke-dasharray="{dash}"/>')
            svg.append(f'<text x="{w - right - 4}" y="{y(p) - 3:.1f}" text-anchor="end" '
                       f'font-size="10" fill="#555">{name} {p:.3f}</text>')
    for k, (tid, items) in enumerate(sorted(members.items())):
        colour = _colour(k)
        points = " ".join(f"{x(t):.1f},{y(face.fake_probability):.1f}" for _, t, _, face in items)
        if len(items) > 1:
            svg.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                       'stroke-width="1.5"/>')
        for index, t, _, face in items:
            svg.append(f'<circle cx="{x(t):.1f}" cy="{y(face.fake_probability):.1f}" r="2.5" '
                       f'fill="{colour}"><title>track {tid}, frame {index}, {t:.2f} s: '
                       f'{face.fake_probability:.3f}</title></circle>')
    svg.append("</svg>")
    legend = " ".join(
        f'<span style="color:{_colour(k)}">&#9632; track {tid}</span>'
        for k, tid in enumerate(sorted(members))
    )
    return ("<h3>Timeline: each face's fake probability over time, per track</h3>"
            + "".join(svg) + f'<p class="legend">{legend}</p>')


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _track_shown(items: Sequence[tuple[int, float, int, Face]]) -> tuple[int, list[int]]:
    """Of a track's faces (:func:`_track_faces`): its most suspicious one, and the ones spread
    over it that a section shows."""
    worst = max(range(len(items)), key=lambda i: items[i][3].fake_probability)
    return worst, _spread(len(items), TRACK_THUMBS)


def _tracks(r: AnalysisResult, crops: CropCollector | None) -> str:
    members = _track_faces(r)
    rows = []
    for tr in r.tracks or []:
        items = members.get(tr.id, [])
        if not items:
            continue
        worst, spread = _track_shown(items)

        def thumb(i: int, items: list[tuple[int, float, int, Face]] = items) -> str:
            index, t, j, face = items[i]
            jpeg = crops.get(index, j) if crops is not None else None
            return _img(jpeg, f"frame {index}, {t:.2f} s: p(fake) {face.fake_probability:.3f}")

        strip = "".join(thumb(i) for i in spread)
        rows.append(
            f"<tr><td>{tr.id}</td><td>{thumb(worst)}<br><small>frame {items[worst][0]}, "
            f"{items[worst][1]:.2f} s, {items[worst][3].fake_probability:.3f}</small></td>"
            f"<td>{_p(tr.fake_probability)}</td><td>{_label(tr.label)}</td>"
            f"<td>{_label(tr.label_strict)}</td><td>{len(tr.frames)}</td>"
            f"<td>{tr.first_time:.2f}-{tr.last_time:.2f} s</td><td class='strip'>{strip}</td></tr>"
        )
    rule = r.aggregation or ""
    if "all_short" in rule:
        how = ("every track has fewer than 3 faces, so the verdict is the most suspicious of all "
               "tracks")
    else:
        how = "the verdict is the most suspicious track with at least 3 faces"
    return ("<h3>Tracks (people followed across frames)</h3>"
            f"<p>A track's score is the 20%-trimmed mean of its faces; here {how} (rule "
            f"<code>{_e(rule or '-')}</code>).</p>"
            '<table class="grid"><tr><th>track</th><th>most suspicious face</th><th>score</th>'
            "<th>balanced</th><th>strict</th><th>faces</th><th>time</th>"
            "<th>faces over the track (hover: frame, time, score)</th></tr>"
            + "".join(rows) + "</table>")


def _frames(r: AnalysisResult) -> str:
    rows = []
    for frame in r.frames or []:
        faces = "; ".join(f"track {f.track_id}: {f.fake_probability:.3f}" for f in frame.faces)
        rows.append(f"<tr><td>{frame.index}</td><td>{frame.time:.3f}</td>"
                    f"<td>{_p(frame.fake_probability)}</td><td>{faces or '-'}</td></tr>")
    return (f"<details><summary>Every analysed frame ({len(rows)})</summary>"
            '<table class="grid"><tr><th>frame index</th><th>time (s)</th><th>p(fake), most '
            "suspicious face</th><th>faces</th></tr>" + "".join(rows) + "</table></details>")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
table.facts th { background: #f2f2f2; width: 16em; }
table.grid th { background: #f2f2f2; }
.fake { color: #b00; font-weight: bold; } .real { color: #070; } .none { color: #777; }
img.face { margin: 1px; border: 1px solid #999; } .strip { max-width: 420px; }
.warnings li { color: #a60; } section { border-top: 2px solid #444; margin-top: 2em; }
code { word-break: break-all; } .note { background: #fff8e0; padding: 0.6em; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body><h1>{title}</h1>
<p>{meta}</p>
<p class="note">Every score is a calibrated probability from a research model, evidence to
weigh and not proof. Read the model card (<code>detector/models/MODEL_CARD.md</code>) for its
measured accuracy, false-positive rates and failure cases. The balanced threshold trades
misses against false alarms; the strict one keeps false alarms on real faces near 1%.
Each file's complete result is embedded below as JSON (a script element of type
<code>application/json</code>, class <code>facetrust-result</code>).</p>
{body}
</body></html>
"""
