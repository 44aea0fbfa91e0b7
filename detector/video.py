"""Video intake with PyAV: probe, choose frames to sample, decode only those to RGB, upright.

Conventions (what the analyzer and the JSON report rely on):

- **index** is the 0-based position of a frame in presentation order in the first
  (non cover-art) video stream: the rank of its timestamp among the timestamps of
  all the stream's packets, or, when packets lack distinct timestamps (some AVI),
  its position among the decoded frames. **time** is ``(pts - stream.start_time) *
  time_base`` seconds (from the first frame's pts when the stream has no start
  time), so variable frame rate videos get true times.
- **rotation** is the clockwise angle (0/90/180/270) the stored picture is
  turned for display, read from the display matrix FFmpeg attaches to decoded
  frames (falling back to the old ``rotate`` metadata tag). Sampled images are
  turned by it, so a portrait phone video yields portrait images. Mirroring in
  the display matrix is ignored. Non-square pixels are stretched to square ones.
- **sampling** (:class:`Sampling`): ``count`` takes N frames evenly spaced over the
  frame indices (``round(linspace(0, n-1, N))``, the DFDC convention); ``fps``
  takes, for each target time ``k / F``, the frame whose timestamp is nearest
  (chosen by timestamps, so it is right for variable frame rates); ``all`` takes
  every frame.
- **frame total** ``n``: header frame counts are missing (Matroska) or can lie, so
  before decoding, one demux pass (no decoding; ~20 ms for a 1080p clip) counts the
  stream's packets and collects their timestamps. If the decoder then yields fewer
  frames than that and the last requested indices never come, the last decoded
  frame is returned in their place (once), so the end of the video is covered;
  fewer than N frames come back and :attr:`SampledFrames.truncated` is set.
- **damaged streams**: a packet the decoder rejects is counted
  (:attr:`SampledFrames.decode_errors`); the frames the decoder already holds are drained,
  the decoder is reset (with frame threads it would otherwise reject every later packet)
  and decoding goes on. Every non-key frame that comes out after the error is *damaged*
  (it may be built on a broken reference) and is neither sampled nor scored until a
  keyframe coded after the bad packet decodes (:attr:`SampledFrames.frames_damaged`, which
  also counts frames that never came out; a wanted frame among them is skipped,
  :attr:`SampledFrames.frames_skipped`). Keyframes refer to no other picture: they are
  always used. After :data:`MAX_DECODE_ERRORS` rejected packets decoding stops.
- **truncated streams**: when the demuxer breaks off (a cut file), or the decoder
  gives up, the frames decoded until then are kept and
  :attr:`SampledFrames.truncated` is True (also set when the header promises >10%
  more frames than the file holds). A stream that yields no usable frame at all
  raises ``MediaError('unreadable')``; an MP4 cut before its index cannot be opened:
  ``unreadable``.
- **caps** (:class:`VideoLimits`) are checked on the stream itself, never on the
  header's duration or frame count (which can lie either way): packet count and last
  timestamp from the demux pass, then every decoded frame's size and time, and the
  number of sampled frames; exceeding any raises ``MediaError('too_large')``. The
  header's frame size is checked before decoding (each decoded frame is checked
  again). :func:`probe_video`, a header probe, also checks the header's duration and
  frame count. ``duration`` is measured from the packets' timestamps when they allow
  it (the header's value otherwise). A ``deadline`` (``time.monotonic()`` value) raises
  :class:`~detector.media.MediaTimeout` (status ``timeout``).
- **speed**: only sampled frames are converted to RGB; decoding uses FFmpeg's
  frame+slice threads (``thread_type='AUTO'``), skips non-reference frames nobody
  asked for, and seeks over long gaps (see :class:`SampledFrames`).
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from detector.media import (
    ANIMATABLE_KINDS,
    IMAGE_KINDS,
    SNIFF_BYTES,
    MediaError,
    MediaTimeout,
    describe_unknown,
    is_animated,
    sniff,
)
from detector.schema import Status

#: FFmpeg demuxer forced for each sniffed kind (FFmpeg never guesses another format).
_DEMUXERS = {"mp4": "mov", "webm": "matroska", "mkv": "matroska", "avi": "avi", "gif": "gif", "png": "apng"}

#: Video decoders we agree to run.
ALLOWED_CODECS = frozenset(
    {
        "h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "mpeg4", "msmpeg4v2", "msmpeg4v3",
        "mpeg1video", "mpeg2video", "mjpeg", "gif", "h263", "theora", "prores", "dnxhd",
        "wmv2", "wmv3", "vc1", "rawvideo", "ffv1", "apng",
    }
)  # fmt: skip

#: Tolerance (s) on timestamps when comparing with the duration cap.
_DURATION_SLACK = 1.0

#: Packets the decoder may reject in one video before decoding stops (``truncated``).
MAX_DECODE_ERRORS = 50


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video to analyse.

    ``mode='count'``: ``value`` frames evenly spaced (integer >= 1);
    ``mode='fps'``: ``value`` frames per second of video time (> 0);
    ``mode='all'``: every frame (``value`` ignored).
    """

    mode: Literal["count", "fps", "all"] = "count"
    value: float = 32

    def __post_init__(self) -> None:
        if self.mode not in ("count", "fps", "all"):
            raise ValueError(f"sampling mode must be 'count', 'fps' or 'all', not {self.mode!r}")
        if self.mode == "all":
            return
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"sampling value must be a finite number > 0, not {v!r}")
        if self.mode == "count" and (v != int(v) or v > 1_000_000):
            raise ValueError(f"sampling count must be a whole number of frames (1..1e6), not {v!r}")
        if self.mode == "fps" and v > 1000:
            raise ValueError(f"sampling rate {v!r} fps is above 1000")

    def describe(self) -> str:
        """Short human-readable form, e.g. ``'count=32'``, ``'fps=2'``, ``'all'``."""
        if self.mode == "all":
            return "all"
        if self.mode == "fps":
            return f"fps={self.value:g}"
        return f"count={int(self.value)}"

    @classmethod
    def parse(cls, text: str) -> Sampling:
        """Inverse of :meth:`describe`; also accepts a bare number (count) and ``'fps:2'``."""
        t = text.strip().lower().replace(":", "=")
        try:
            if t == "all":
                return cls("all")
            if "=" not in t:
                return cls("count", float(t))
            mode, _, value = t.partition("=")
            if mode not in ("count", "fps"):
                raise ValueError(f"unknown sampling mode {mode!r}")
            return cls(mode, float(value))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"bad sampling {text!r} (use 'count=32', 'fps=2' or 'all'): {exc}") from exc


@dataclass(frozen=True)
class VideoLimits:
    """Caps on a video; checked against the header and against the decoded stream."""

    max_duration_s: float = 600.0
    max_pixels_per_frame: int = 4096 * 2160
    max_decoded_frames: int = 20_000
    max_sampled_frames: int = 5_000

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "max_pixels_per_frame", "max_decoded_frames", "max_sampled_frames"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"VideoLimits.{name} must be > 0, not {v!r}")


@dataclass(frozen=True)
class VideoMeta:
    """What the header (and the first frame) says about a video's main stream.

    ``width``/``height`` are the display size: after rotation and pixel aspect.
    ``frames`` is the header's frame count (None when absent); ``fps`` the average
    frame rate; ``duration`` in seconds (None when unknown).
    """

    width: int
    height: int
    rotation: int
    fps: float | None
    duration: float | None
    frames: int | None
    codec: str
    container: str


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its presentation index and time, and the upright RGB picture."""

    index: int
    time: float
    image_rgb: np.ndarray  # H x W x 3 uint8, upright


# -- pure sampling logic ------------------------------------------------------------
def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5 + 1e-9).astype(np.int64)


def sample_indices(n_frames: int, sampling: Sampling, fps: float | None = None) -> list[int]:
    """Frame indices to sample from a constant-rate stream of ``n_frames`` frames at ``fps``.

    ``count``: ``round(linspace(0, n-1, N))`` (half up, exact), unique, at most ``n``;
    ``fps``: for k = 0, 1, ... the index nearest ``k / F`` seconds, i.e.
    ``round(k * fps / F)``, while < n (needs ``fps``); ``all``: ``range(n)``.
    """
    n = int(n_frames)
    if n <= 0:
        return []
    if sampling.mode == "all":
        return list(range(n))
    if sampling.mode == "count":
        k = min(int(sampling.value), n)
        if k == 1:
            return [0]
        # round(i * (n-1) / (k-1)), half up, in exact integer arithmetic
        return sorted({(2 * i * (n - 1) + (k - 1)) // (2 * (k - 1)) for i in range(k)})
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise ValueError("fps sampling needs the video's frame rate")
    step = float(fps) / float(sampling.value)
    if step <= 1.0:
        return list(range(n))
    count = int(math.floor((n - 0.5) / step - 1e-9)) + 1
    idx = _round_half_up(np.arange(count) * step)
    return sorted(set(int(i) for i in idx if i < n))


class TimeSelector:
    """Streaming ``fps`` sampler: for targets ``k / rate`` picks the frame with the nearest time.

    Feed frames in presentation order with :meth:`push` (any payload); it returns
    the payloads chosen so far (each frame at most once). Ties go to the later
    frame. Call :meth:`finish` at the end: targets past the last frame by less than
    half a frame gap still pick the last frame.
    """

    def __init__(self, rate: float) -> None:
        self.period = 1.0 / float(rate)
        self.k = 0
        self.prev: tuple[float, Any] | None = None
        self.prev_gap: float | None = None
        self.last_taken: int = -1
        self.count = 0  # frames pushed

    def _target(self) -> float:
        return self.k * self.period

    def push(self, t: float, item: Any) -> list[Any]:
        """Add the next frame (time ``t``); returns the items selected by it or its predecessor."""
        out: list[Any] = []
        pos = self.count
        if self.prev is not None:
            t = max(t, self.prev[0])  # keep time monotonic on broken streams
            self.prev_gap = t - self.prev[0]
        while self._target() <= t + 1e-9:
            target = self._target()
            if self.prev is not None and (target - self.prev[0]) < (t - target) - 1e-9:
                chosen_pos, chosen = pos - 1, self.prev[1]
            else:
                chosen_pos, chosen = pos, item
            if chosen_pos > self.last_taken:
                out.append(chosen)
                self.last_taken = chosen_pos
            self.k += 1
        self.prev = (t, item)
        self.count += 1
        return out

    def finish(self) -> list[Any]:
        """Items chosen by targets just after the last frame (at most the last frame, once)."""
        if self.prev is None:
            return []
        gap = self.prev_gap if self.prev_gap else self.period
        if self._target() < self.prev[0] + 0.5 * gap - 1e-9 and self.count - 1 > self.last_taken:
            self.last_taken = self.count - 1
            return [self.prev[1]]
        return []


# -- opening ----------------------------------------------------------------------
def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise MediaTimeout("video decoding exceeded its time limit")


def _open(
    path: str | Path, max_pixels: int | None = None
) -> tuple[av.container.InputContainer, av.VideoStream, str]:
    """Sniff, open with the matching demuxer only, pick the main video stream, check the codec.

    An animated PNG whose canvas (from its ``IHDR``) is over ``max_pixels`` is ``too_large``
    before FFmpeg sees it (FFmpeg refuses huge ones with a bare "Invalid argument")."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise MediaError(Status.unreadable, f"cannot read the file: {exc.strerror or exc}") from exc
    if not head:
        raise MediaError(Status.unreadable, "empty file")
    kind = sniff(head)
    if kind is None:
        raise MediaError(Status.unsupported, f"not an allowed video format ({describe_unknown(head)})")
    if kind in IMAGE_KINDS and kind not in ANIMATABLE_KINDS:
        raise MediaError(Status.unsupported, f"this is a {kind} still image, not a video")
    if kind == "png" and not is_animated(path.read_bytes()):
        raise MediaError(Status.unsupported, "this is a png still image, not a video")
    if kind == "png" and max_pixels is not None and len(head) >= 24:
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if width * height > max_pixels:
            raise MediaError(
                Status.too_large,
                f"animated png of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels per "
                "frame; refused before decoding",
            )
    try:
        container = av.open(str(path), format=_DEMUXERS[kind])
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(Status.unreadable, f"corrupt or truncated {kind} file: {_reason(exc)}") from exc
    try:
        streams = [
            s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)
        ]
        if not streams:
            if container.streams.audio:
                raise MediaError(
                    Status.unsupported, f"{kind} file has audio only: no video stream to analyse"
                )
            raise MediaError(Status.unreadable, f"{kind} file has no video stream")
        stream = streams[0]
        codec = stream.codec_context.name
        if codec not in ALLOWED_CODECS:
            raise MediaError(Status.unsupported, f"video codec {codec!r} is not supported")
    except BaseException:
        container.close()
        raise
    return container, stream, kind


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def _header_meta(container: av.container.InputContainer, stream: av.VideoStream, rotation: int) -> VideoMeta:
    w, h = _display_size(stream.codec_context.width, stream.codec_context.height, stream, rotation)
    fps = None
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            fps = float(rate)
            break
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    return VideoMeta(
        width=w,
        height=h,
        rotation=rotation,
        fps=fps,
        duration=duration,
        frames=int(stream.frames) if stream.frames and stream.frames > 0 else None,
        codec=stream.codec_context.name,
        container=container.format.name,
    )


def _sar(stream: av.VideoStream) -> Fraction:
    sar = stream.sample_aspect_ratio
    return Fraction(sar) if sar and sar > 0 else Fraction(1)


def _display_size(width: int, height: int, stream: av.VideoStream, rotation: int) -> tuple[int, int]:
    """Upright display size of a ``width x height`` stored picture."""
    w = max(1, int(round(width * _sar(stream))))
    return (height, w) if rotation in (90, 270) else (w, height)


def _metadata_rotation(stream: av.VideoStream) -> int:
    try:
        return int(round(float(stream.metadata.get("rotate", 0)) / 90.0)) * 90 % 360
    except (TypeError, ValueError):
        return 0


def _frame_rotation(frame: av.VideoFrame, fallback: int) -> int:
    """Clockwise display rotation of a decoded frame (display matrix), else ``fallback``."""
    try:
        ccw = frame.rotation
    except Exception:  # no or malformed side data
        return fallback
    if not ccw:
        return fallback
    return int(round(-float(ccw) / 90.0)) * 90 % 360


def _check_header(
    meta: VideoMeta, stream: av.VideoStream, limits: VideoLimits, *, counts: bool = True
) -> None:
    """The header's frame size against ``limits``; with ``counts`` also its duration and frame count."""
    w, h = stream.codec_context.width, stream.codec_context.height
    if w * h > limits.max_pixels_per_frame:
        raise MediaError(
            Status.too_large,
            f"video frames of {w}x{h} exceed the limit of {limits.max_pixels_per_frame:,} pixels per frame",
        )
    if not counts:
        return
    if meta.duration is not None and meta.duration > limits.max_duration_s:
        raise MediaError(
            Status.too_large,
            f"video lasts {meta.duration:.1f} s, over the {limits.max_duration_s:g} s limit",
        )
    if meta.frames is not None and meta.frames > limits.max_decoded_frames:
        raise MediaError(
            Status.too_large,
            f"video has {meta.frames} frames, over the {limits.max_decoded_frames} frame limit",
        )


def probe_video(path: str | Path, *, limits: VideoLimits | None = None) -> VideoMeta:
    """Read a video's header and first frame (for the rotation); raises :class:`MediaError`.

    Header values over ``limits`` raise ``too_large`` before any frame is decoded;
    a stream without a single decodable frame is ``unreadable``.
    """
    limits = limits or VideoLimits()
    container, stream, kind = _open(path, limits.max_pixels_per_frame)
    with container:
        meta = _header_meta(container, stream, _metadata_rotation(stream))
        _check_header(meta, stream, limits)
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(Status.unreadable, f"corrupt {kind} video stream: {_reason(exc)}") from exc
        if first is None:
            raise MediaError(Status.unreadable, f"{kind} file has no decodable video frame")
        rotation = _frame_rotation(first, meta.rotation)
        return _header_meta(container, stream, rotation)


# -- decoding -----------------------------------------------------------------------
#: Codecs whose decoders drop non-reference frames cleanly (``skip_frame='NONREF'``).
SKIP_CODECS = frozenset(
    {"h264", "hevc", "mpeg4", "mpeg1video", "mpeg2video", "vp8", "vp9", "av1", "libdav1d"}
)
#: Containers whose keyframe flags and seeking we trust.
SEEK_KINDS = frozenset({"mp4", "mkv", "webm"})
#: Seek forward (to the keyframe before the next sampled frame) only when it skips
#: at least this many packets; below that, decoding on is as cheap as seeking.
SEEK_MIN_SKIP = 48


@dataclass
class _Scan:
    """Video packets in decode order (a demux pass, no decoding)."""

    pts: list[int | None]
    keyframe: list[bool]
    broken: bool  # the demuxer stopped on an error (truncated or corrupt file)
    end: int | None = None  # the largest pts + duration among the packets (stream time base)


def _ends_with(path: str | Path, tail: bytes) -> bool:
    """Whether the file at ``path`` ends with ``tail``."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() < len(tail):
            return False
        fh.seek(-len(tail), 2)
        return fh.read() == tail


def _scan_packets(
    path: str | Path, kind: str, stream_index: int, limits: VideoLimits, deadline: float | None
) -> _Scan:
    """Read every packet of the video stream once; too many packets -> ``too_large``."""
    scan = _Scan([], [], False)
    try:
        with av.open(str(path), format=_DEMUXERS[kind]) as container:
            for packet in container.demux(container.streams[stream_index]):
                if not packet.size or packet.is_discard:
                    continue
                scan.pts.append(packet.pts)
                scan.keyframe.append(bool(packet.is_keyframe))
                if packet.pts is not None:
                    end = packet.pts + max(0, packet.duration or 0)
                    scan.end = end if scan.end is None else max(scan.end, end)
                if len(scan.pts) % 256 == 0:
                    _check_deadline(deadline)
                if len(scan.pts) > limits.max_decoded_frames:
                    raise MediaError(
                        Status.too_large,
                        f"video has more than {limits.max_decoded_frames} frames (the limit)",
                    )
    except (av.FFmpegError, OSError, ValueError, EOFError):
        scan.broken = True
    return scan


class _Plan:
    """Presentation order of the packets, when every packet has its own pts.

    Rank r (the frame index) has timestamp ``pts[r]`` and sits at decode position
    ``pos[r]``; ``keys`` are the decode positions of keyframes.
    """

    def __init__(self, scan: _Scan) -> None:
        order = sorted(range(len(scan.pts)), key=lambda i: scan.pts[i])  # type: ignore[arg-type,return-value]
        self.pts: list[int] = [int(scan.pts[i]) for i in order]  # type: ignore[arg-type]
        self.pos = order
        self.rank = {p: r for r, p in enumerate(self.pts)}
        self.pos_pts = [int(p) for p in scan.pts]  # type: ignore[arg-type]
        self.pos_of_pts = {p: i for i, p in enumerate(self.pos_pts)}
        self.keys = [i for i, k in enumerate(scan.keyframe) if k]

    @staticmethod
    def build(scan: _Scan) -> _Plan | None:
        pts = scan.pts
        if not pts or any(p is None for p in pts) or len(set(pts)) != len(pts):
            return None
        return _Plan(scan)

    def key_before(self, rank: int) -> int | None:
        """Decode position of the last keyframe at or before frame ``rank`` (decode and display)."""
        p = self.pos[rank]
        i = bisect.bisect_right(self.keys, p) - 1
        while i >= 0 and self.pos_pts[self.keys[i]] > self.pts[rank]:
            i -= 1  # an open-GOP keyframe shown after the target cannot serve it
        return self.keys[i] if i >= 0 else None


def _select_by_time(times: list[float], rate: float) -> list[int]:
    """Indices :class:`TimeSelector` picks from a whole list of frame times."""
    selector = TimeSelector(rate)
    out: list[int] = []
    for i, t in enumerate(times):
        out.extend(selector.push(t, i))
    return out + selector.finish()


class SampledFrames(Iterator[SampledFrame]):
    """Iterator over the sampled frames of one video (see :func:`iter_sampled_frames`).

    Attributes: ``meta`` (:class:`VideoMeta`; ``rotation`` is final once the first
    frame is decoded), ``frames_total`` (video packets counted by a demux pass),
    ``planned`` (frames expected, for progress bars), ``frames_decoded``,
    ``frames_sampled``, ``truncated`` (the stream ended early or broke off: see the
    module doc), ``decode_errors`` (packets the decoder rejected), ``frames_damaged``
    (frames decoded after such an error, before the next keyframe: never sampled),
    ``frames_skipped`` (wanted frames that were damaged), ``seeks`` (forward seeks made).
    Close it (or use ``with``) when stopping early.

    When every packet has its own timestamp (MP4, MKV, WebM, most AVI) the frame
    indices come from the presentation order of the timestamps, which allows two
    savings that do not change any sampled picture: frames nobody references and
    nobody asked for are not decoded (``skip_frame='NONREF'``), and for sparse
    sampling the decoder jumps to the keyframe before the next wanted frame when that
    skips at least :data:`SEEK_MIN_SKIP` packets. Otherwise frames are counted as
    decoded.
    """

    def __init__(
        self,
        path: str | Path,
        sampling: Sampling,
        *,
        max_side_decode: int | None,
        limits: VideoLimits,
        deadline: float | None,
        optimize: bool = True,
    ) -> None:
        self.sampling = sampling
        self.limits = limits
        self.deadline = deadline
        self.max_side_decode = max_side_decode
        self.frames_decoded = 0
        self.frames_sampled = 0
        self.seeks = 0
        self._seek_ok = True
        self._path = path
        self.truncated = False
        self.decode_errors = 0
        self.frames_damaged = 0
        self.frames_skipped = 0
        self._damaged: int | None = None  # decode position of the last rejected packet (-1: unknown)
        self._container: av.container.InputContainer | None = None
        _check_deadline(deadline)
        container, stream, kind = _open(path, limits.max_pixels_per_frame)
        self._container, self._stream, self.kind = container, stream, kind
        try:
            self.meta = _header_meta(container, stream, _metadata_rotation(stream))
            _check_header(self.meta, stream, limits, counts=False)
            scan = _scan_packets(path, kind, stream.index, limits, deadline)
            self.frames_total = len(scan.pts)
            if not scan.pts:
                raise MediaError(Status.unreadable, f"{kind} file has no video frames")
            # a header frame count well above what the file holds also means a cut-off file
            self.truncated = scan.broken or bool(self.meta.frames and len(scan.pts) < 0.9 * self.meta.frames)
            if kind == "gif" and not _ends_with(path, b";"):
                # a GIF cut before its trailer: its last frame may be partly decoded, never score it
                self.truncated = True
                scan = _Scan(scan.pts[:-1], scan.keyframe[:-1], True, None)
                self.frames_damaged = 1
                if not scan.pts:
                    raise MediaError(Status.unreadable, "gif file is cut before the end of its first frame")
            self._start = stream.start_time
            self._plan = _Plan.build(scan) if optimize else None
            self._wanted = self._choose(scan)
            if self._plan is not None or sampling.mode != "fps":
                self.planned = len(self._wanted)
            else:  # fps without timestamps: estimate from the frame rate
                self.planned = len(sample_indices(self.frames_total, sampling, self.meta.fps or 25.0))
            if self.planned > limits.max_sampled_frames:
                raise MediaError(
                    Status.too_large,
                    f"{sampling.describe()} would sample {self.planned} frames, "
                    f"over the {limits.max_sampled_frames} limit",
                )
            _decoder_options(stream)
        except BaseException:
            self.close()
            raise
        self._gen = self._run()

    def _choose(self, scan: _Scan) -> list[int]:
        """Wanted frame indices (sorted), from the packet scan."""
        n, plan, sampling = len(scan.pts), self._plan, self.sampling
        if plan is not None:
            if self._start is None:
                self._start = plan.pts[0]
            tb = self._stream.time_base
            last = float((plan.pts[-1] - self._start) * tb)
            end = scan.end if scan.end is not None and scan.end > plan.pts[-1] else None
            measured = float(((end or plan.pts[-1]) - self._start) * tb)
            promised = self.meta.duration
            if promised is not None and measured < promised - max(1.0, 0.1 * promised):
                self.truncated = True  # the header promises much more than the file holds: cut off
            self.meta = replace(self.meta, duration=round(measured, 6))
            if last > self.limits.max_duration_s + _DURATION_SLACK:
                raise MediaError(
                    Status.too_large,
                    f"video runs to {last:.1f} s, over the {self.limits.max_duration_s:g} s limit",
                )
            if sampling.mode == "fps":
                return _select_by_time([float((p - self._start) * tb) for p in plan.pts], sampling.value)
        if sampling.mode == "fps":
            return []  # chosen while decoding, by timestamp
        return sample_indices(n, sampling)

    # iterator protocol
    def __iter__(self) -> SampledFrames:
        return self

    def __next__(self) -> SampledFrame:
        return next(self._gen)

    def __enter__(self) -> SampledFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop decoding and release the file."""
        gen = getattr(self, "_gen", None)
        if gen is not None:
            gen.close()
        if self._container is not None:
            self._container.close()
            self._container = None

    def __del__(self) -> None:
        self.close()

    # decoding
    def _run(self) -> Iterator[SampledFrame]:
        try:
            if self._plan is not None:
                yield from self._sample_planned(self._plan)
            else:
                yield from self._sample_linear()
        finally:
            if self._container is not None:
                self._container.close()
                self._container = None

    def _decode(self, packet: av.Packet, pos: int = -1) -> list[av.VideoFrame]:
        """Decode one packet. A rejected packet is counted and damages the frames after it (see
        :meth:`_usable`); after :data:`MAX_DECODE_ERRORS` of them the stream ends (``truncated``),
        or, before any frame, the file is ``unreadable``. ``pos``: the packet's decode position
        (-1 when unknown)."""
        try:
            return self._stream.decode(packet)
        except (av.FFmpegError, OSError, ValueError, EOFError) as exc:
            self.decode_errors += 1
            self._damaged = pos
            # Drain the frames the decoder already holds (decoded before the error was seen),
            # then reset it: with frame threads (and err_detect=explode) an error would
            # otherwise repeat on every later packet. The drained frames go through _usable.
            drained: list[av.VideoFrame] = []
            try:
                drained = list(self._stream.decode(None))
            except (av.FFmpegError, OSError, ValueError, EOFError):
                pass
            try:
                self._stream.codec_context.flush_buffers()
            except (av.FFmpegError, OSError, ValueError):
                pass
            if self.decode_errors >= MAX_DECODE_ERRORS:
                self._broken(exc)
            return drained

    def _nothing_decoded(self) -> str:
        if self.decode_errors:
            return (f"{self.kind} file has no usable video frame (the decoder rejected "
                    f"{self.decode_errors} packet(s); {self.frames_damaged} frame(s) after them damaged)")
        return f"{self.kind} file has no decodable video frame"

    def _usable(self, frame: av.VideoFrame, pos: int | None = None) -> bool:
        """False for a frame decoded after a rejected packet and before the next keyframe: it
        may be built on a broken reference picture, so it is neither sampled nor scored (a
        keyframe is always sound: it refers to no other picture).

        ``pos`` is the frame's decode position when known (timestamped streams): only a keyframe
        coded after the last rejected packet ends the damage (with frame threads the decoder
        reports an error a few packets late, and frames coded before it may come out after it:
        they are dropped too, to be safe). Without ``pos`` the first keyframe output after the
        error ends it.
        """
        if self._damaged is None:
            return True
        if frame.key_frame:  # an intra frame refers to no other: it is sound once it decodes
            if pos is None or pos < 0 or self._damaged < 0 or pos > self._damaged:
                self._damaged = None  # and the frames after it are too
            return True
        self.frames_damaged += 1
        return False

    def _broken(self, exc: BaseException) -> None:
        if self.frames_decoded == self.frames_damaged:
            raise MediaError(Status.unreadable, f"corrupt {self.kind} video stream: {_reason(exc)}") from exc
        self.truncated = True
        raise _StreamEnd from exc

    def _packets(self) -> Iterator[av.Packet]:
        """Demuxed packets of the stream (then flush packets); errors end the stream."""
        assert self._container is not None
        try:
            for packet in self._container.demux(self._stream):
                _check_deadline(self.deadline)
                yield packet
        except (av.FFmpegError, OSError, ValueError, EOFError):
            self.truncated = True
            yield av.Packet()  # an empty packet drains the decoder

    def _time(self, frame: av.VideoFrame, prev_t: float | None) -> float:
        if frame.pts is None:
            return 0.0 if prev_t is None else prev_t + 1.0 / (self.meta.fps or 25.0)
        if self._start is None:
            self._start = frame.pts
        return float((frame.pts - self._start) * self._stream.time_base)

    def _first_frame(self, frame: av.VideoFrame) -> None:
        rotation = _frame_rotation(frame, self.meta.rotation)
        if rotation != self.meta.rotation:
            w, h = _display_size(frame.width, frame.height, self._stream, rotation)
            self.meta = replace(self.meta, rotation=rotation, width=w, height=h)

    def _sample_planned(self, plan: _Plan) -> Iterator[SampledFrame]:
        """Decode by presentation rank: skip unwanted non-reference frames, seek over long gaps."""
        wanted = self._wanted
        remaining = set(wanted)
        wanted_pts = {plan.pts[r] for r in wanted}
        cc = self._stream.codec_context
        skipping = len(wanted) < len(plan.pts) and cc.name in SKIP_CODECS
        seeking = skipping and self.kind in SEEK_KINDS
        skip_mode = "DEFAULT"
        last: tuple[int, float, av.VideoFrame] | None = None
        last_emitted, next_i, pos, fed = -1, 0, -1, -1
        packets = self._packets()
        check_seek = seeking
        try:
            while remaining:
                if check_seek:
                    check_seek = False
                    while next_i < len(wanted) and wanted[next_i] not in remaining:
                        next_i += 1
                    key = plan.key_before(wanted[next_i]) if next_i < len(wanted) else None
                    if key is not None and key - pos > SEEK_MIN_SKIP:
                        packets, pos = self._seek(plan, key, pos)
                packet = next(packets, None)
                if packet is None:
                    break
                if packet.size and packet.pts is not None:
                    pos = plan.pos_of_pts.get(packet.pts, pos)
                    if skipping:
                        mode = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
                        if mode != skip_mode:
                            cc.skip_frame = skip_mode = mode
                known = bool(packet.size) and packet.pts is not None and packet.pts in plan.pos_of_pts
                if known:
                    fed = max(fed, pos)
                for frame in self._decode(packet, pos if known else -1):
                    rank = plan.rank.get(frame.pts) if frame.pts is not None else None
                    if self.frames_decoded == 0:
                        if rank is None:  # frame timestamps do not match the packets': count instead
                            yield from self._restart_linear()
                            return
                        self._first_frame(frame)
                    self.frames_decoded += 1
                    self._check_frame(frame, self.frames_decoded - 1 if rank is None else rank, None)
                    if rank is None:
                        continue  # a frame the demuxer did not announce: never sampled
                    if not self._usable(frame, plan.pos[rank]):
                        if rank in remaining:
                            remaining.discard(rank)
                            self.frames_skipped += 1
                            check_seek = seeking and self._seek_ok
                        continue
                    t = self._time(frame, None)  # within the duration cap: checked on the scan
                    last = (rank, t, frame)
                    if rank in remaining:
                        remaining.discard(rank)
                        last_emitted = rank
                        check_seek = seeking and self._seek_ok
                        yield self._emit(rank, t, frame)
        except _StreamEnd:
            pass
        if last is None:
            raise MediaError(Status.unreadable, self._nothing_decoded())
        if self.decode_errors:  # frames of packets fed to the decoder that never came out: lost
            lost = {r for r in remaining if plan.pos[r] <= fed}
            remaining -= lost
            self.frames_damaged += len(lost)
            self.frames_skipped += len(lost)
        if remaining:  # the stream ended before these
            self.truncated = True
            if max(remaining) > last_emitted and last[0] > last_emitted:
                yield self._emit(*last)

    def _seek(self, plan: _Plan, key: int, pos: int) -> tuple[Iterator[av.Packet], int]:
        """Jump to the keyframe at decode position ``key``; returns fresh packets and position."""
        assert self._container is not None
        try:
            self._container.seek(plan.pos_pts[key], stream=self._stream, backward=True, any_frame=False)
        except (av.FFmpegError, OSError, ValueError):
            return self._packets(), pos  # cannot seek: keep decoding from where we are
        self.seeks += 1
        packets = self._packets()
        first = next(packets, None)
        if first is None:
            return iter(()), pos
        landed = plan.pos_of_pts.get(first.pts, -1) if first.pts is not None else -1
        if 0 <= landed <= key:
            return itertools.chain([first], packets), landed - 1
        # landed after the keyframe (or nowhere known): stop seeking, decode on from the start
        self._seek_ok = False
        self._container.seek(plan.pos_pts[plan.keys[0]] if plan.keys else 0, stream=self._stream,
                             backward=True, any_frame=False)
        return self._packets(), -1

    def _restart_linear(self) -> Iterator[SampledFrame]:
        """Reopen the file and decode every frame, counting them (no plan)."""
        assert self._container is not None
        self._container.close()
        self._container, self._stream, _ = _open(self._path)
        _decoder_options(self._stream)
        self._plan = None
        self.frames_decoded = 0
        if self.sampling.mode == "fps":
            self._wanted = []
        yield from self._sample_linear()

    def _sample_linear(self) -> Iterator[SampledFrame]:
        """Decode every frame, counting them (streams without usable timestamps)."""
        wanted, w_pos = self._wanted, 0
        selector = TimeSelector(self.sampling.value) if self.sampling.mode == "fps" else None
        last: tuple[int, float, av.VideoFrame] | None = None
        last_emitted = -1
        prev_t = None
        try:
            for packet in self._packets():
                for frame in self._decode(packet):
                    idx = self.frames_decoded
                    if idx == 0:
                        self._first_frame(frame)
                    self.frames_decoded += 1
                    t = prev_t = self._time(frame, prev_t)
                    self._check_frame(frame, idx, t)
                    if not self._usable(frame):
                        if self.sampling.mode == "count" and w_pos < len(wanted) and wanted[w_pos] == idx:
                            w_pos += 1
                            self.frames_skipped += 1
                        elif self.sampling.mode == "all":
                            self.frames_skipped += 1
                        if self.sampling.mode == "count" and w_pos >= len(wanted):
                            return
                        continue
                    last = (idx, t, frame)
                    if selector is not None:
                        chosen = selector.push(t, last)
                    elif self.sampling.mode == "all":
                        chosen = [last]
                    elif w_pos < len(wanted) and wanted[w_pos] == idx:
                        chosen, w_pos = [last], w_pos + 1
                    else:
                        chosen = []
                    for item in chosen:
                        last_emitted = item[0]
                        yield self._emit(*item)
                    if self.sampling.mode == "count" and w_pos >= len(wanted):
                        return  # every requested frame is out: no need to decode the rest
        except _StreamEnd:
            pass
        if last is None:
            raise MediaError(Status.unreadable, self._nothing_decoded())
        tail: list[tuple[int, float, av.VideoFrame]] = []
        if selector is not None:
            tail = selector.finish()
        elif self.sampling.mode == "count" and w_pos < len(wanted):
            self.truncated = True
            if last[0] != last_emitted:
                tail = [last]
        for item in tail:
            yield self._emit(*item)

    def _check_frame(self, frame: av.VideoFrame, idx: int, t: float | None) -> None:
        limits = self.limits
        if self.frames_decoded > limits.max_decoded_frames:
            raise MediaError(
                Status.too_large, f"video has more than {limits.max_decoded_frames} frames (the limit)"
            )
        if frame.width * frame.height > limits.max_pixels_per_frame:
            raise MediaError(
                Status.too_large,
                f"frame {idx} is {frame.width}x{frame.height}, over the limit of "
                f"{limits.max_pixels_per_frame:,} pixels per frame",
            )
        if t is not None and t > limits.max_duration_s + _DURATION_SLACK:
            raise MediaError(
                Status.too_large,
                f"video runs past {limits.max_duration_s:g} s (frame {idx} at {t:.1f} s), over the limit",
            )

    def _emit(self, idx: int, t: float, frame: av.VideoFrame) -> SampledFrame:
        self.frames_sampled += 1
        if self.frames_sampled > self.limits.max_sampled_frames:
            raise MediaError(
                Status.too_large,
                f"more than {self.limits.max_sampled_frames} frames sampled ({self.sampling.describe()})",
            )
        _check_deadline(self.deadline)
        image = _to_rgb(frame, self._stream, self.meta.rotation, self.max_side_decode)
        return SampledFrame(idx, t, image)


def _decoder_options(stream: av.VideoStream) -> None:
    """Frame and slice threads, and decoder errors reported even for frames decoded while
    non-reference frames are skipped (FFmpeg's H.264 decoder conceals damaged slices silently
    there unless ``err_detect`` has ``explode``): see "damaged streams" in the module doc."""
    stream.thread_type = "AUTO"
    stream.codec_context.options = {"err_detect": "explode"}


class _StreamEnd(Exception):
    """Internal: the stream broke off after some frames were decoded."""


def _to_rgb(frame: av.VideoFrame, stream: av.VideoStream, rotation: int, max_side: int | None) -> np.ndarray:
    """The frame as upright ``H x W x 3`` uint8 RGB, square pixels, longest side <= ``max_side``."""
    w, h = frame.width, frame.height
    out_w = max(1, int(round(w * _sar(stream))))
    out_h = h
    if max_side and max(out_w, out_h) > max_side:
        scale = max_side / max(out_w, out_h)
        out_w, out_h = max(1, int(round(out_w * scale))), max(1, int(round(out_h * scale)))
    if (out_w, out_h) == (w, h):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(format="rgb24", width=out_w, height=out_h, interpolation="AREA")
    if rotation:
        rgb = np.rot90(rgb, k=-(rotation // 90))
    return np.ascontiguousarray(rgb)


def iter_sampled_frames(
    path: str | Path,
    sampling: Sampling | None = None,
    *,
    max_side_decode: int | None = None,
    limits: VideoLimits | None = None,
    deadline: float | None = None,
    optimize: bool = True,
) -> SampledFrames:
    """Decode ``path`` and yield the frames chosen by ``sampling`` as :class:`SampledFrame`.

    Opens the file at once: unsupported, unreadable or over-the-cap headers raise
    :class:`MediaError` here; the rest is raised while iterating. ``max_side_decode``
    downscales sampled frames (during RGB conversion) so their longest side is at
    most that. ``deadline`` is a ``time.monotonic()`` value. See the module doc for
    the index/time/rotation/truncation conventions. ``optimize=False`` decodes every
    frame in order (no frame skipping, no seeking): same frames, for comparisons.
    """
    return SampledFrames(
        path,
        sampling or Sampling(),
        max_side_decode=max_side_decode,
        limits=limits or VideoLimits(),
        deadline=deadline,
        optimize=optimize,
    )
