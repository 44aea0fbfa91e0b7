"""Bytes appended after a media file's own data: found for every format walked, never invented."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from detector.analyze import Analyzer, create_analyzer
from detector.container import trailing_bytes
from detector.video import Sampling
from tests.detector import media_factory as mf

APPENDED = mf.zip_bytes({"payload.txt": b"hidden"})


@pytest.fixture(scope="module")
def picture(astronaut: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(astronaut[::2, ::2])


@pytest.fixture(scope="module")
def analyzer(tiny_model: Path) -> Analyzer:
    return create_analyzer(tiny_model)


def _images(picture: np.ndarray) -> dict[str, bytes]:
    frames = [picture, picture[::-1].copy(), np.ascontiguousarray(picture[:, ::-1])]
    return {
        "jpeg": mf.encode_image(picture, "jpeg", quality=90),
        "progressive jpeg": mf.encode_image(picture, "jpeg", progressive=True, quality=80),
        "restart-marker jpeg": mf.encode_image(picture, "jpeg", restart_marker_blocks=4),
        "exif jpeg": mf.exif_jpeg(picture, 6),
        "png": mf.encode_image(picture, "png"),
        "animated png": mf.animated(frames),
        "gif": mf.encode_image(picture, "gif"),
        "animated gif": mf.animated_gif(frames),
        "webp": mf.encode_image(picture, "webp"),
        "animated webp": mf.animated(frames, "WEBP"),
    }


def test_images_end_where_their_data_ends(picture: np.ndarray) -> None:
    for name, data in _images(picture).items():
        kind = name.split()[-1]
        assert trailing_bytes(kind, data) == 0, name
        assert trailing_bytes(kind, data + APPENDED) == len(APPENDED), name
        assert trailing_bytes(kind, data + b"\0") == 1, name
        assert trailing_bytes(kind, data[: len(data) // 2]) is None, name  # cut short: not "appended"
    # multi-picture JPEG (MPO; Ultra HDR and iPhone HDR photos keep a gain map this way): its
    # second picture, listed in the APP2 MPF index, is part of the file
    import io

    from PIL import Image

    buf = io.BytesIO()
    second = Image.fromarray(np.ascontiguousarray(picture[::4, ::4]))
    Image.fromarray(picture).save(buf, "MPO", save_all=True, append_images=[second])
    mpo = buf.getvalue()
    assert trailing_bytes("jpeg", mpo) == 0 and trailing_bytes("jpeg", mpo + APPENDED) == len(APPENDED)
    assert trailing_bytes("jpeg", mpo[:-50]) is None  # the second picture cut short
    # formats not walked: unknown, never a guess
    assert trailing_bytes("bmp", mf.encode_image(picture, "bmp") + APPENDED) is None
    assert trailing_bytes("jpeg", b"not a jpeg") is None and trailing_bytes("png", b"") is None


def test_videos_end_where_their_container_ends(tmp_path: Path, picture: np.ndarray) -> None:
    mp4 = mf.write_video(tmp_path / "a.mp4", n_frames=6, size=(96, 64))
    faststart = mf.write_video(tmp_path / "b.mp4", n_frames=6, size=(96, 64), faststart=True)
    avi = mf.write_mjpeg_avi(tmp_path / "c.avi", [picture] * 3)
    mkv = mf.write_video(tmp_path / "d.mkv", n_frames=3, size=(96, 64))
    webm = mf.write_video(tmp_path / "e.webm", n_frames=3, size=(96, 64), codec="libvpx-vp9")
    for path in (mp4, faststart, avi, mkv, webm):
        kind = {".avi": "avi", ".mkv": "mkv", ".webm": "webm"}.get(path.suffix, "mp4")
        data = path.read_bytes()
        assert trailing_bytes(kind, path=path) == 0 == trailing_bytes(kind, data), path
        joined = tmp_path / f"joined{path.suffix}"
        joined.write_bytes(data + APPENDED)
        assert trailing_bytes(kind, path=joined) == len(APPENDED), path
        joined.write_bytes(data + data)  # a second file of the same kind appended
        assert trailing_bytes(kind, path=joined) == len(data), path
        cut = mf.truncate_file(path, tmp_path / f"cut{path.suffix}", 0.6)
        assert trailing_bytes(kind, path=cut) is None, path
    # appended text whose first 8 bytes read as a huge size and 4 letters: appended, not cut
    joined = tmp_path / "text.mp4"
    joined.write_bytes(mp4.read_bytes() + b"Lorem ipsum dolor sit amet " * 10)
    assert trailing_bytes("mp4", path=joined) == 270
    # fewer than 8 bytes after the last box: a cut box header as likely as appended bytes
    joined.write_bytes(mp4.read_bytes() + b"\0\0\0\x10m")
    assert trailing_bytes("mp4", path=joined) is None
    # Matroska: a Void element after the Segment belongs to the file; a Segment whose size is
    # left unknown (a live recording) ends nowhere: unknown, never a guess
    data = mkv.read_bytes()
    assert trailing_bytes("mkv", data + b"\xec\x84" + bytes(4)) == 0
    at = data.index(b"\x18\x53\x80\x67") + 4
    assert data[at] == 0x01  # an 8-byte size
    live = data[:at] + b"\x01" + b"\xff" * 7 + data[at + 8 :]
    assert trailing_bytes("mkv", live) is None and trailing_bytes("mkv", live + APPENDED) is None
    # cut right after the EBML header, or inside the Segment's ID; a broken header size: unknown
    segment = data.index(b"\x18\x53\x80\x67")
    for cut in (data[:segment], data[: segment + 1], data[: segment + 3]):
        assert trailing_bytes("mkv", cut) is None, len(cut)
    assert trailing_bytes("mkv", data[:4] + b"\x00" + data[5:]) is None
    assert trailing_bytes("mp4", path=tmp_path / "missing.mp4") is None


def test_analysis_warns_about_appended_bytes(analyzer: Analyzer, picture: np.ndarray, tmp_path: Path,
                                             astronaut: np.ndarray) -> None:
    jpeg = mf.encode_image(astronaut, "jpeg", quality=90)
    clean = analyzer.analyze_bytes(jpeg, "a.jpg")
    assert clean.status == "ok" and not any("bytes follow" in w for w in clean.warnings)
    joined = analyzer.analyze_bytes(jpeg + APPENDED, "a.jpg")
    assert joined.status == "ok" and joined.fake_probability == clean.fake_probability
    assert joined.sha256 == hashlib.sha256(jpeg + APPENDED).hexdigest()
    [warning] = [w for w in joined.warnings if "bytes follow" in w]
    assert warning.startswith(f"{len(APPENDED):,} bytes follow the end of the JPEG data")
    video = mf.write_video(tmp_path / "v.mp4", n_frames=8, size=(256, 256), draw=astronaut)
    plain = analyzer.analyze_path(video, sampling=Sampling("count", 4))
    video.write_bytes(video.read_bytes() + APPENDED)
    appended = analyzer.analyze_path(video, sampling=Sampling("count", 4))
    assert plain.status == appended.status == "ok" and plain.fake_probability == appended.fake_probability
    assert appended.warnings == [*plain.warnings, appended.warnings[-1]]
    expected = f"{len(APPENDED):,} bytes follow the end of the MP4/MOV data (another file appended)"
    assert appended.warnings[-1].startswith(expected)
    webm = mf.write_video(tmp_path / "v.webm", 4, (128, 128), codec="libvpx-vp9", draw=astronaut)
    webm.write_bytes(webm.read_bytes() + APPENDED)
    appended = analyzer.analyze_path(webm, sampling=Sampling("count", 2))
    expected = f"{len(APPENDED):,} bytes follow the end of the WebM data (another file appended)"
    assert appended.status in ("ok", "no_face") and appended.warnings[-1].startswith(expected)


def test_too_many_structures_are_not_passed_as_checked(monkeypatch: pytest.MonkeyPatch, picture: np.ndarray,
                                                        tmp_path: Path) -> None:
    """Padding a file with more segments than MAX_STEPS (here lowered to 50) gives UNCHECKED, and
    the analysis says the check was not made, instead of passing appended bytes as none."""
    from detector import container
    from detector.analyze import trailing_warning

    monkeypatch.setattr(container, "MAX_STEPS", 50)
    jpeg = mf.encode_image(picture, "jpeg")
    padded = jpeg[:2] + b"\xff\xfe\x00\x02" * 60 + jpeg[2:] + APPENDED  # 60 empty comments
    assert container.trailing_bytes("jpeg", padded) == container.UNCHECKED
    assert "was not checked" in (trailing_warning("jpeg", data=padded) or "")
    frames = [picture, picture[::-1].copy()]
    gif = bytearray(mf.animated_gif(frames))
    comment = b"\x21\xfe" + b"\x01x" * 60 + b"\x00"  # a comment of 60 one-byte sub-blocks
    gif[13 + 3 * 256 : 13 + 3 * 256] = comment  # after the global colour table (256 colours)
    assert gif[10] & 0x87 == 0x87
    assert container.trailing_bytes("gif", bytes(gif)) == container.UNCHECKED
    monkeypatch.setattr(container, "MAX_STEPS", 1_000_000)
    assert container.trailing_bytes("gif", bytes(gif)) == 0 and container.trailing_bytes("jpeg", padded) > 0
