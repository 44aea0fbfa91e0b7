"""detector.video: sampling rules, probing, decoding real PyAV-written videos, caps, bad files."""

from __future__ import annotations

import math
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.media import MediaError, MediaTimeout
from detector.schema import Status
from detector.video import (
    Sampling,
    TimeSelector,
    VideoLimits,
    iter_sampled_frames,
    probe_video,
    sample_indices,
)
from tests.detector import media_factory as mf

FPS = 25
SIZE = (128, 96)  # width, height of the upright picture


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real videos written once per module."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264": mf.write_video(d / "h264.mp4", 100, SIZE, FPS, "libx264"),
        "mkv": mf.write_video(d / "h264.mkv", 60, SIZE, FPS, "libx264"),
        "vp9": mf.write_video(d / "vp9.webm", 60, SIZE, FPS, "libvpx-vp9"),
        "mpeg4": mf.write_video(d / "mpeg4.avi", 60, SIZE, FPS, "mpeg4"),
        "vfr": mf.write_video(d / "vfr.mp4", 60, SIZE, FPS, "libx264", vfr=True),
        "long": mf.write_video(d / "long.mp4", 400, (64, 48), FPS, "libx264", gop=20),
        "faststart": mf.write_video(d / "fast.mp4", 100, SIZE, FPS, "libx264", faststart=True),
        "audio": mf.write_video(d / "with_audio.mp4", 30, SIZE, FPS, "libx264", audio=True),
    }


def collect(path: Path, sampling: Sampling | None = None, **kw: object) -> tuple[list, object]:
    it = iter_sampled_frames(path, sampling, **kw)
    return list(it), it


def assert_codes(frames: list) -> None:
    """Every sampled picture shows the index it is reported with."""
    assert [mf.read_frame_code(f.image_rgb) for f in frames] == [f.index for f in frames]


def media_status(fn, *args, **kw) -> Status:
    """The status of the MediaError that ``fn(*args, **kw)`` raises (iterating its frames too)."""
    with pytest.raises(MediaError) as info:
        result = fn(*args, **kw)
        if hasattr(result, "__next__"):
            list(result)
    assert str(info.value)
    return info.value.status


def status_iter(path: Path, sampling: Sampling | None = None, **kw: object) -> Status:
    return media_status(iter_sampled_frames, path, sampling, **kw)


# -- Sampling ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode, value",
    [("count", 0), ("count", -3), ("count", 2.5), ("count", math.nan), ("fps", 0), ("fps", math.inf),
     ("fps", -1), ("fps", 5000), ("every", 1), ("count", True), ("count", "32")],
)
def test_sampling_validation(mode: str, value: object) -> None:
    with pytest.raises(ValueError):
        Sampling(mode, value)  # type: ignore[arg-type]


def test_sampling_describe_and_parse() -> None:
    cases = [(Sampling(), "count=32"), (Sampling("fps", 2), "fps=2"), (Sampling("fps", 0.5), "fps=0.5"),
             (Sampling("all"), "all"), (Sampling("all", -1), "all")]
    for s, text in cases:
        assert s.describe() == text
        assert Sampling.parse(text).describe() == text
    assert Sampling.parse("16") == Sampling("count", 16)
    assert Sampling.parse("fps:3") == Sampling("fps", 3)
    for bad in ("", "fps=", "often", "count=0", "speed=2"):
        with pytest.raises(ValueError):
            Sampling.parse(bad)


def test_limits_validation() -> None:
    assert VideoLimits().max_pixels_per_frame == 4096 * 2160
    for field in ("max_duration_s", "max_pixels_per_frame", "max_decoded_frames", "max_sampled_frames"):
        with pytest.raises(ValueError):
            VideoLimits(**{field: 0})


# -- sample_indices (pure) ----------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 5000), k=st.integers(1, 400))
def test_count_indices(n: int, k: int) -> None:
    idx = sample_indices(n, Sampling("count", k))
    assert idx == sorted(set(idx)) and all(0 <= i < n for i in idx)
    assert len(idx) == min(n, k)
    if n and k >= 2:
        assert idx[0] == 0 and idx[-1] == n - 1
    m = min(n, k)
    reference = [math.floor(Fraction(i * (n - 1), m - 1) + Fraction(1, 2)) for i in range(m)] if m > 1 else []
    assert idx == (sorted(set(reference)) if m > 1 else list(range(m)))
    if n and k <= n:  # evenly spread: gaps differ by at most one frame
        gaps = np.diff(idx)
        assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1


def test_count_indices_dfdc_example() -> None:
    assert sample_indices(100, Sampling("count", 32))[:6] == [0, 3, 6, 10, 13, 16]
    assert sample_indices(100, Sampling("count", 32))[-1] == 99
    assert sample_indices(10, Sampling("count", 32)) == list(range(10))
    assert sample_indices(0, Sampling()) == []


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 3000), fps=st.floats(1, 120), rate=st.floats(0.05, 200))
def test_fps_indices(n: int, fps: float, rate: float) -> None:
    idx = sample_indices(n, Sampling("fps", rate), fps)
    assert idx == sorted(set(idx)) and all(0 <= i < n for i in idx) and idx[0] == 0
    step = fps / rate
    if step <= 1:
        assert idx == list(range(n))
    else:
        # the k-th index is the frame nearest k / rate seconds
        assert all(abs(i - k * step) <= 0.5 + 1e-6 for k, i in enumerate(idx))
        # every k whose nearest frame (rounding half up, as documented) exists is sampled
        assert len(idx) == len([k for k in range(n + 1) if math.floor(k * step + 0.5) < n])


def test_fps_and_all_indices() -> None:
    assert sample_indices(100, Sampling("fps", 5), 25) == list(range(0, 100, 5))
    assert sample_indices(7, Sampling("all")) == list(range(7))
    assert sample_indices(7, Sampling("fps", 50), 25) == list(range(7))
    with pytest.raises(ValueError):
        sample_indices(10, Sampling("fps", 1), None)


def nearest_reference(times: list[float], rate: float) -> list[int]:
    """Brute force: for each target k / rate, the frame with the nearest time (ties: later)."""
    gap = times[-1] - times[-2] if len(times) > 1 else 1.0 / rate
    chosen: list[int] = []
    k = 0
    while (target := k / rate) < times[-1] + 0.5 * gap - 1e-9 or target <= times[-1] + 1e-9:
        best = min(range(len(times)), key=lambda i: (round(abs(times[i] - target), 9), -i))
        if not chosen or best > chosen[-1]:
            chosen.append(best)
        k += 1
    return chosen


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 200), min_size=1, max_size=80),
    start=st.integers(0, 300),
    rate=st.sampled_from([0.5, 1, 2, 3, 7, 10, 30, 100]),
)
def test_time_selector_matches_brute_force(gaps: list[int], start: int, rate: float) -> None:
    times = list(np.cumsum([start] + gaps) / 1000.0)  # strictly increasing, ms grid
    selector = TimeSelector(rate)
    got: list[int] = []
    for i, t in enumerate(times):
        got.extend(selector.push(float(t), i))
    got.extend(selector.finish())
    assert got == nearest_reference([float(t) for t in times], rate)


def test_time_selector_cfr_agrees_with_indices() -> None:
    for n, fps, rate in [(100, 25, 5), (100, 25, 2), (61, 30, 7), (50, 24, 1), (10, 25, 3)]:
        selector = TimeSelector(rate)
        got = [x for i in range(n) for x in selector.push(i / fps, i)] + selector.finish()
        assert got == sample_indices(n, Sampling("fps", rate), fps), (n, fps, rate)


# -- probe ------------------------------------------------------------------------------
def test_probe(videos: dict[str, Path]) -> None:
    meta = probe_video(videos["h264"])
    assert (meta.width, meta.height, meta.rotation, meta.frames, meta.codec) == (128, 96, 0, 100, "h264")
    assert meta.fps == pytest.approx(25) and meta.duration == pytest.approx(4.0, abs=0.05)
    assert probe_video(videos["vp9"]).codec == "vp9"
    assert probe_video(videos["mpeg4"]).codec == "mpeg4"
    assert probe_video(videos["mkv"]).frames is None  # Matroska keeps no frame count: counted instead


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_comes_out_upright(rotation: int, tmp_path: Path) -> None:
    path = mf.write_video(tmp_path / "phone.mp4", 12, (64, 112), FPS, rotation=rotation)
    meta = probe_video(path)
    assert (meta.rotation, meta.width, meta.height) == (rotation, 64, 112)
    frames, it = collect(path, Sampling("count", 4))
    assert it.meta.rotation == rotation
    for f in frames:
        assert f.image_rgb.shape == (112, 64, 3)  # portrait, as filmed
        assert mf.marker_corner(f.image_rgb) == "tl"
    assert_codes(frames)


def test_rotation_with_downscale(tmp_path: Path) -> None:
    path = mf.write_video(tmp_path / "phone.mp4", 4, (96, 160), FPS, rotation=90)
    frames, _ = collect(path, Sampling("all"), max_side_decode=80)
    assert {f.image_rgb.shape for f in frames} == {(80, 48, 3)}
    assert mf.marker_corner(frames[0].image_rgb) == "tl"


def test_non_square_pixels(tmp_path: Path) -> None:
    path = mf.write_video(tmp_path / "anamorphic.mp4", 3, (64, 48), FPS, sample_aspect=Fraction(2, 1))
    meta = probe_video(path)
    assert (meta.width, meta.height) == (128, 48)
    frames, _ = collect(path, Sampling("all"))
    assert {f.image_rgb.shape for f in frames} == {(48, 128, 3)}
    frames, _ = collect(path, Sampling("all"), max_side_decode=64)
    assert {f.image_rgb.shape for f in frames} == {(24, 64, 3)}


# -- sampling real videos ---------------------------------------------------------------------
def test_count_32_of_100(videos: dict[str, Path]) -> None:
    frames, it = collect(videos["h264"])
    assert [f.index for f in frames] == sample_indices(100, Sampling())
    assert it.planned == 32 == it.frames_sampled and not it.truncated
    assert it.frames_decoded < 100  # unneeded non-reference frames were skipped
    assert_codes(frames)
    assert all(f.time == pytest.approx(f.index / FPS, abs=1e-6) for f in frames)
    assert all(f.image_rgb.shape == (96, 128, 3) and f.image_rgb.dtype == np.uint8 for f in frames)
    assert all(f.image_rgb.flags.c_contiguous for f in frames)


def test_fps_and_all_modes(videos: dict[str, Path]) -> None:
    frames, _ = collect(videos["h264"], Sampling("fps", 5))
    assert [f.index for f in frames] == list(range(0, 100, 5))
    assert_codes(frames)
    frames, it = collect(videos["h264"], Sampling("all"))
    assert [f.index for f in frames] == list(range(100)) and it.frames_decoded == 100
    assert_codes(frames)


@pytest.mark.parametrize("name", ["h264", "mkv", "vp9", "mpeg4", "vfr", "long", "audio"])
@pytest.mark.parametrize("sampling", [Sampling("count", 7), Sampling("fps", 3), Sampling("count", 32)])
def test_optimised_equals_plain_decoding(name: str, sampling: Sampling, videos: dict[str, Path]) -> None:
    """Skipping and seeking never change which frames come out, their times or their pixels."""
    fast, it = collect(videos[name], sampling)
    plain, plain_it = collect(videos[name], sampling, optimize=False)
    assert [(f.index, f.time) for f in fast] == [(f.index, f.time) for f in plain]
    assert all(np.array_equal(a.image_rgb, b.image_rgb) for a, b in zip(fast, plain, strict=True))
    assert_codes(fast)
    assert it.frames_decoded <= plain_it.frames_decoded


def test_fallback_when_frame_times_do_not_match_packets(videos: dict[str, Path]) -> None:
    """If decoded timestamps cannot be matched to the packet scan, frames are counted instead."""
    it = iter_sampled_frames(videos["h264"], Sampling("count", 9))
    it._plan.rank = {}  # as if the decoder stamped frames differently from the demuxer
    frames = list(it)
    plain, _ = collect(videos["h264"], Sampling("count", 9), optimize=False)
    assert [f.index for f in frames] == [f.index for f in plain] == sample_indices(100, Sampling("count", 9))
    assert all(np.array_equal(a.image_rgb, b.image_rgb) for a, b in zip(frames, plain, strict=True))
    assert it.frames_decoded == 100


def test_sparse_sampling_seeks(videos: dict[str, Path]) -> None:
    frames, it = collect(videos["long"], Sampling("count", 4))
    assert [f.index for f in frames] == sample_indices(400, Sampling("count", 4))
    assert it.seeks >= 2 and it.frames_decoded < 150
    assert_codes(frames)


def test_header_without_frame_count(videos: dict[str, Path]) -> None:
    """Matroska/WebM headers carry no frame count: the total comes from counting packets."""
    for name in ("mkv", "vp9"):
        frames, it = collect(videos[name], Sampling("count", 10))
        assert it.frames_total == 60
        assert [f.index for f in frames] == sample_indices(60, Sampling("count", 10))
        assert_codes(frames)


def test_vfr_times_and_fps_choice(videos: dict[str, Path]) -> None:
    true_times = mf.frame_times(60, FPS, vfr=True)
    meta = probe_video(videos["vfr"])
    assert meta.frames == 60
    frames, _ = collect(videos["vfr"], Sampling("all"))
    assert [f.time for f in frames] == pytest.approx(true_times, abs=1e-3)
    for rate in (2, 10):
        frames, _ = collect(videos["vfr"], Sampling("fps", rate))
        assert [f.index for f in frames] == nearest_reference(true_times, rate)
        assert_codes(frames)
    # by index, a CFR assumption would have picked other frames
    assert nearest_reference(true_times, 10) != sample_indices(60, Sampling("fps", 10), meta.fps)


def test_animated_gif_as_video(tmp_path: Path) -> None:
    pics = [mf.coded_frame(i, 96, 64) for i in range(6)]
    path = tmp_path / "anim.gif"
    path.write_bytes(mf.animated_gif(pics, duration_ms=200))
    meta = probe_video(path)
    assert (meta.width, meta.height, meta.codec) == (96, 64, "gif")
    frames, _ = collect(path, Sampling("all"))
    assert [f.index for f in frames] == list(range(6))
    assert [f.time for f in frames] == pytest.approx([0.2 * i for i in range(6)])
    assert_codes(frames)


def test_shared_dfdc_style_clip(shared_data: Path) -> None:
    path = shared_data / "videos" / "real" / "facenet_street.mp4"
    if not path.exists():
        pytest.skip(f"{path} not present")
    meta = probe_video(path)
    assert (meta.width, meta.height, meta.frames) == (1920, 1080, 105)
    frames, it = collect(path)
    plain, _ = collect(path, optimize=False)
    assert [f.index for f in frames] == sample_indices(105, Sampling()) == [f.index for f in plain]
    assert all(np.array_equal(a.image_rgb, b.image_rgb) for a, b in zip(frames, plain, strict=True))
    assert frames[0].image_rgb.shape == (1080, 1920, 3)
    assert it.frames_decoded < 105


def test_early_close_releases(videos: dict[str, Path]) -> None:
    with iter_sampled_frames(videos["h264"]) as it:
        first = next(it)
    assert first.index == 0
    assert it._container is None
    with pytest.raises(StopIteration):
        next(it)


# -- caps ------------------------------------------------------------------------------------
def test_header_pixel_cap(videos: dict[str, Path]) -> None:
    small = VideoLimits(max_pixels_per_frame=100 * 90)
    assert media_status(probe_video, videos["h264"], limits=small) == Status.too_large
    assert status_iter(videos["h264"], limits=small) == Status.too_large


def test_huge_resolution_refused_before_decoding(tmp_path: Path) -> None:
    path = mf.write_huge_video(tmp_path / "huge.mp4", (4224, 2240))
    t = time.perf_counter()
    with pytest.raises(MediaError, match="4224x2240") as info:
        iter_sampled_frames(path)
    assert info.value.status == Status.too_large
    assert media_status(probe_video, path) == Status.too_large
    assert time.perf_counter() - t < 2.0


def test_decoded_frame_bigger_than_header(tmp_path: Path) -> None:
    """The header says 64x64, one frame is 320x320: the cap applies to what is decoded."""
    pics = [np.full((64, 64, 3), 90, np.uint8)] * 3 + [np.full((320, 320, 3), 90, np.uint8)]
    path = mf.write_mjpeg_avi(tmp_path / "liar.avi", pics, header_size=(64, 64))
    limits = VideoLimits(max_pixels_per_frame=200 * 200)
    assert probe_video(path, limits=limits).width == 64
    it = iter_sampled_frames(path, Sampling("all"), limits=limits)
    assert next(it).image_rgb.shape == (64, 64, 3)
    with pytest.raises(MediaError, match="320x320") as info:
        list(it)
    assert info.value.status == Status.too_large


def test_duration_cap(videos: dict[str, Path]) -> None:
    assert status_iter(videos["h264"], limits=VideoLimits(max_duration_s=2)) == Status.too_large
    assert media_status(probe_video, videos["h264"], limits=VideoLimits(max_duration_s=2)) == Status.too_large
    frames, _ = collect(videos["h264"], limits=VideoLimits(max_duration_s=4))
    assert len(frames) == 32


def test_frame_caps(videos: dict[str, Path]) -> None:
    assert status_iter(videos["h264"], limits=VideoLimits(max_decoded_frames=99)) == Status.too_large
    assert status_iter(videos["mkv"], limits=VideoLimits(max_decoded_frames=50)) == Status.too_large
    assert status_iter(videos["h264"], Sampling("all"), limits=VideoLimits(max_sampled_frames=50)) == (
        Status.too_large
    )
    frames, _ = collect(videos["h264"], Sampling("count", 50), limits=VideoLimits(max_sampled_frames=50))
    assert len(frames) == 50


def test_deadline(videos: dict[str, Path]) -> None:
    with pytest.raises(MediaTimeout) as info:
        iter_sampled_frames(videos["h264"], deadline=time.monotonic() - 1)
    assert info.value.status == Status.timeout
    it = iter_sampled_frames(videos["h264"], Sampling("all"), deadline=time.monotonic() + 30)
    next(it)
    it.deadline = time.monotonic() - 1  # the budget runs out mid-video
    with pytest.raises(MediaTimeout):
        list(it)


# -- bad files -------------------------------------------------------------------------------
def test_zero_frame_video(tmp_path: Path) -> None:
    path = mf.write_zero_frame_video(tmp_path / "zero.avi")
    assert media_status(probe_video, path) == Status.unreadable
    assert media_status(iter_sampled_frames, path) == Status.unreadable


def test_audio_only(tmp_path: Path) -> None:
    path = mf.write_audio_only(tmp_path / "voice.mp4")
    with pytest.raises(MediaError, match="audio") as info:
        probe_video(path)
    assert info.value.status == Status.unsupported
    assert media_status(iter_sampled_frames, path) == Status.unsupported


def test_not_videos(tmp_path: Path, astronaut: np.ndarray) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_bytes(mf.text_bytes())
    png = mf.write_image(tmp_path / "still.mp4", astronaut[:64, :64], "png")
    assert media_status(probe_video, empty) == Status.unreadable
    assert media_status(probe_video, tmp_path / "missing.mp4") == Status.unreadable
    assert media_status(probe_video, text) == Status.unsupported
    assert media_status(iter_sampled_frames, png) == Status.unsupported
    fake = tmp_path / "fake.mp4"  # right magic bytes, garbage after
    fake.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00" + bytes(range(256)) * 8)
    assert media_status(probe_video, fake) == Status.unreadable
    assert media_status(iter_sampled_frames, fake) == Status.unreadable


def test_truncated_mp4_without_index_is_unreadable(videos: dict[str, Path], tmp_path: Path) -> None:
    path = mf.truncate_file(videos["h264"], tmp_path / "cut.mp4", 0.7)  # the index (moov) is at the end
    assert media_status(probe_video, path) == Status.unreadable
    assert media_status(iter_sampled_frames, path) == Status.unreadable


def test_truncated_faststart_keeps_decoded_frames(videos: dict[str, Path], tmp_path: Path) -> None:
    path = mf.truncate_file(videos["faststart"], tmp_path / "cut.mp4", 0.6)
    frames, it = collect(path)
    assert it.truncated
    assert 0 < len(frames) < 32 and frames[-1].index < 99
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx))
    assert_codes(frames[:-1])


@pytest.mark.parametrize("name", ["h264", "mkv", "vp9", "mpeg4", "faststart"])
@pytest.mark.parametrize("keep", [0.02, 0.3, 0.8, 0.99])
def test_truncated_never_crashes(name: str, keep: float, videos: dict[str, Path], tmp_path: Path) -> None:
    path = mf.truncate_file(videos[name], tmp_path / f"cut{videos[name].suffix}", keep)
    try:
        frames, it = collect(path, Sampling("count", 8))
    except MediaError as exc:
        assert exc.status == Status.unreadable, exc
    else:
        idx = [f.index for f in frames]
        assert idx == sorted(set(idx)) and len(frames) <= 8
        assert frames, "a readable result has at least one frame"


def test_damaged_packet_frames_are_not_sampled(videos: dict[str, Path], tmp_path: Path) -> None:
    """A zeroed P-frame in the middle: decoding goes on, but the frames built on it (until the
    next keyframe) are never sampled; every picture that comes out is the one it says it is."""
    # no B-frames: every P-frame is a reference picture, so the damage runs to the next keyframe
    no_b = {"bf": "0", "sc_threshold": "0"}  # and keyframes exactly every 20 frames
    src = mf.write_video(tmp_path / "p.mp4", 400, (64, 48), FPS, "libx264", gop=20, options=no_b)
    path = mf.damage_packets(src, tmp_path / "damaged.mp4", [45])  # keyframes at 40 and 60
    for sampling in (Sampling("all"), Sampling("count", 40), Sampling("fps", 10)):
        frames, it = collect(path, sampling)
        idx = [f.index for f in frames]
        assert it.decode_errors >= 1 and not it.truncated, sampling
        assert it.frames_skipped >= 1, sampling
        if sampling.mode == "all":  # every frame is wanted: each one lost or damaged is counted
            assert it.frames_damaged >= 14  # 46-59 at least
        assert not any(45 <= i < 60 for i in idx), (sampling, idx)  # 40 is the last keyframe before
        assert idx[-1] >= 390 and idx == sorted(set(idx))  # frames after the next keyframe are kept
        assert_codes(frames)
    frames, it = collect(path, Sampling("all"))
    assert len(frames) + it.frames_damaged == 400 == it.frames_total
    clean, it = collect(src, Sampling("all"))
    assert len(clean) == 400 and it.decode_errors == it.frames_damaged == it.frames_skipped == 0


@pytest.mark.parametrize("bad", [[5], [5, 6], [30]])
def test_one_damaged_packet_does_not_stop_decoding(bad: list[int], tmp_path: Path) -> None:
    """B-frames, frame threads: a rejected packet must not make the decoder reject every later
    one (it is reset): the video decodes to its end, a few frames lost at most."""
    src = mf.write_video(tmp_path / "b.mp4", 144, (64, 48), FPS, "libx264", gop=12,
                         options={"bf": "2", "sc_threshold": "0"})
    path = mf.damage_packets(src, tmp_path / "damaged.mp4", bad)
    for sampling in (Sampling("all"), Sampling("count", 8)):
        frames, it = collect(path, sampling)
        assert not it.truncated and 1 <= it.decode_errors <= 2 * len(bad), (sampling, it.decode_errors)
        assert frames[-1].index == 143 and it.frames_damaged <= 24
        assert_codes(frames)


def test_animated_png_with_a_huge_canvas_is_too_large(tmp_path: Path) -> None:
    import zlib

    data = bytearray(mf.animated([mf.coded_frame(i, *SIZE) for i in range(3)], "PNG"))
    data[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width and height, CRC fixed below
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path = tmp_path / "huge.png"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError, match="30000x30000.*before decoding") as info:
        iter_sampled_frames(path)
    assert info.value.status == Status.too_large


def test_cut_gif_and_webm_are_flagged_truncated(tmp_path: Path) -> None:
    """A GIF cut before its trailer (its last frame may be half decoded: never sampled) and a
    WebM holding far less than its header announces are both ``truncated``."""
    gif = tmp_path / "whole.gif"
    gif.write_bytes(mf.animated_gif([mf.coded_frame(i, *SIZE) for i in range(20)]))
    cut = mf.truncate_file(gif, tmp_path / "cut.gif", 0.5)
    frames, it = collect(gif, Sampling("all"))
    assert len(frames) == 20 and not it.truncated
    frames, it = collect(cut, Sampling("all"))
    assert it.truncated and it.frames_damaged == 1 and 0 < len(frames) < 19
    assert_codes(frames)
    webm = mf.write_video(tmp_path / "v.webm", 100, SIZE, FPS, "libvpx-vp9")
    frames, it = collect(mf.truncate_file(webm, tmp_path / "cut.webm", 0.3), Sampling("count", 8))
    assert it.truncated and frames[-1].index < 60


def test_keyframe_before_the_damage_is_kept(tmp_path: Path) -> None:
    """One keyframe, then the next packet damaged: the keyframe (decoded before the error was
    reported, refers to nothing) is analysed; everything after it is damaged."""
    src = mf.write_video(tmp_path / "k.mp4", 40, (64, 48), FPS, "libx264", gop=1000,
                         options={"bf": "0", "sc_threshold": "0"})
    frames, it = collect(mf.damage_packets(src, tmp_path / "d.mp4", [1]), Sampling("all"))
    assert [f.index for f in frames] == [0] and it.decode_errors >= 1
    assert_codes(frames)


def test_every_packet_damaged_is_unreadable(videos: dict[str, Path], tmp_path: Path) -> None:
    path = mf.damage_packets(videos["h264"], tmp_path / "ruined.mp4", range(100))
    with pytest.raises(MediaError, match="no usable video frame|corrupt") as info:
        collect(path)
    assert info.value.status == Status.unreadable


@pytest.mark.parametrize("factor", [0.1, 1000.0])
def test_header_duration_neither_refuses_nor_is_reported(
    factor: float, videos: dict[str, Path], tmp_path: Path
) -> None:
    """The header says 0.24 s or 2400 s; the stream holds 2.4 s: caps and ``duration`` follow it."""
    path = mf.mkv_claims_duration(videos["mkv"], tmp_path / "liar.mkv", factor)
    header = probe_video(path, limits=VideoLimits(max_duration_s=1e6))
    assert header.duration == pytest.approx(2.4 * factor, rel=0.05)  # the header does lie
    frames, it = collect(path, Sampling("count", 8), limits=VideoLimits(max_duration_s=60))
    assert len(frames) == 8 and frames[-1].index == 59
    assert it.meta.duration == pytest.approx(2.4, abs=0.05)
    assert status_iter(path, limits=VideoLimits(max_duration_s=1)) == Status.too_large  # the stream's 2.4 s


def test_animated_png_decodes_as_a_video(tmp_path: Path) -> None:
    path = tmp_path / "anim.png"
    path.write_bytes(mf.animated([mf.coded_frame(i, *SIZE) for i in range(6)], "PNG", duration_ms=100))
    frames, it = collect(path, Sampling("all"))
    assert [f.index for f in frames] == list(range(6)) and it.meta.codec == "apng"
    assert_codes(frames)
    assert [round(f.time, 2) for f in frames] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_hostile_video_catalogue(tmp_path: Path) -> None:
    for name, (path, expected) in mf.write_hostile_videos(tmp_path).items():
        t = time.perf_counter()
        if expected is None:
            frames, _ = collect(path)
            assert frames, name
        else:
            assert status_iter(path) == expected, name
        assert time.perf_counter() - t < 5, name
