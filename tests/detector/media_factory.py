"""Writers of test media, real files made with PyAV, Pillow and zlib (no fixtures, no mocks).

Importable by any test (``from tests.detector.media_factory import write_video``),
e.g. to build a hostile-input corpus. Every writer takes the destination and
returns the path (or bytes) it made.

Frames written by :func:`write_video` carry their own index as a strip of black
and white blocks (:func:`coded_frame`, read back by :func:`read_frame_code`), and
a red square in the top-left corner of the upright picture, so tests can check
*which* frame was sampled and that it came out upright.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

CODE_BITS = 12
MARKER = (255, 0, 0)
BACKGROUND = 128

Draw = Callable[[int], np.ndarray] | np.ndarray | None

_FAST_OPTIONS = {
    "libx264": {"preset": "veryfast"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8"},
}


# -- frames ------------------------------------------------------------------------
def coded_frame(index: int, width: int, height: int, *, marker: bool = True) -> np.ndarray:
    """An upright ``height x width`` RGB frame showing ``index`` in binary and a corner marker.

    The code is a row of :data:`CODE_BITS` blocks across the lower part (white = 1,
    most significant bit first); the red marker sits in the top-left corner.
    """
    img = np.full((height, width, 3), BACKGROUND, np.uint8)
    y0, y1 = height // 2, height // 2 + max(8, height // 4)
    bw = width // CODE_BITS
    for b in range(CODE_BITS):
        bit = (int(index) >> (CODE_BITS - 1 - b)) & 1
        img[y0:y1, b * bw : (b + 1) * bw] = 255 if bit else 0
    if marker:
        m = max(4, min(width, height) // 5)
        img[:m, :m] = MARKER
    return img


def read_frame_code(image: np.ndarray) -> int:
    """The index that :func:`coded_frame` drew into ``image`` (after lossy compression)."""
    height, width = image.shape[:2]
    y0, y1 = height // 2, height // 2 + max(8, height // 4)
    bw = width // CODE_BITS
    value = 0
    for b in range(CODE_BITS):
        block = image[y0 + 2 : y1 - 2, b * bw + 1 : (b + 1) * bw - 1]
        value = (value << 1) | int(block.mean() > 127)
    return value


def marker_corner(image: np.ndarray) -> str:
    """Which corner (``'tl' 'tr' 'bl' 'br'``) of ``image`` holds the red marker."""
    height, width = image.shape[:2]
    m = max(2, min(width, height) // 10)
    corners = {
        "tl": image[:m, :m],
        "tr": image[:m, width - m :],
        "bl": image[height - m :, :m],
        "br": image[height - m :, width - m :],
    }

    def redness(p: np.ndarray) -> float:
        p = p.astype(np.float32)
        return float((p[..., 0] - (p[..., 1] + p[..., 2]) / 2).mean())

    return max(corners, key=lambda k: redness(corners[k]))


def fit_picture(picture: np.ndarray, width: int, height: int) -> np.ndarray:
    """``picture`` resized (aspect kept) to fit the upper half of a ``width x height`` frame."""
    scale = min((height // 2) / picture.shape[0], width / picture.shape[1])
    size = (max(1, int(picture.shape[1] * scale)), max(1, int(picture.shape[0] * scale)))
    return np.asarray(Image.fromarray(np.asarray(picture, np.uint8)).resize(size))


def pasted_frame(picture: np.ndarray, index: int, n_frames: int, width: int, height: int) -> np.ndarray:
    """``picture`` (already :func:`fit_picture`-sized) moving left to right in the upper half of a
    grey frame, with the index code below it."""
    img = coded_frame(index, width, height, marker=False)
    ph, pw = picture.shape[:2]
    x = 0 if n_frames <= 1 else int(round((width - pw) * index / (n_frames - 1)))
    img[:ph, x : x + pw] = picture
    return img


def frame_times(n_frames: int, fps: float, vfr: bool = False) -> list[float]:
    """Presentation times (s) :func:`write_video` uses (ms precision).

    Regular ``i / fps``; or, with ``vfr``, like a phone changing rate: the first half
    at twice ``fps``, the second half with gaps alternating 1 and 2 frame periods.
    """
    if not vfr:
        return [round(i / fps, 3) for i in range(n_frames)]
    times, t = [], 0.0
    for i in range(n_frames):
        times.append(round(t, 3))
        t += (0.5 if i < n_frames // 2 else 1.0 + i % 2) / fps
    return times


# -- videos ------------------------------------------------------------------------
def codec_available(name: str) -> bool:
    """Whether this PyAV build can encode with ``name``."""
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def write_video(
    path: str | Path,
    n_frames: int = 30,
    size: tuple[int, int] = (128, 96),
    fps: float = 25,
    codec: str = "libx264",
    *,
    rotation: int = 0,
    vfr: bool = False,
    draw: Draw = None,
    gop: int | None = None,
    faststart: bool = False,
    audio: bool = False,
    sample_aspect: Fraction | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a real video; the container follows ``path``'s suffix (.mp4 .mov .mkv .webm .avi).

    ``size`` is ``(width, height)`` of the *upright* picture. ``rotation`` (0/90/180/270,
    clockwise, like a phone's 'rotate' tag) stores each picture turned the other way
    and sets the display matrix, so a correct reader shows it upright again.
    ``vfr`` uses :func:`frame_times` with uneven gaps. ``draw`` is a function
    ``index -> HxWx3 uint8`` (upright), a picture to move across the frame, or None
    for :func:`coded_frame`. ``gop`` sets the keyframe interval; ``faststart`` puts the
    MP4 index first (so a truncated copy still opens); ``audio`` adds a silent AAC track;
    ``sample_aspect`` stores non-square pixels (the pictures are written as given, so a
    correct reader stretches them by this ratio).
    """
    path = Path(path)
    width, height = size
    if codec == "libx264" and not codec_available(codec):
        codec = "mpeg4"  # PyAV builds without x264 still have FFmpeg's own MPEG-4 encoder
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90")
    rotation %= 360
    stored_w, stored_h = (height, width) if rotation in (90, 270) else (width, height)
    muxer_options = {"movflags": "faststart"} if faststart else {}
    tb = Fraction(1, 1000)
    times = frame_times(n_frames, fps, vfr)
    with av.open(str(path), "w", options=muxer_options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options={
            **_FAST_OPTIONS.get(codec, {}), **(options or {})
        })
        stream.width, stream.height, stream.pix_fmt = stored_w, stored_h, "yuv420p"
        if vfr:
            stream.codec_context.time_base = tb
        if gop is not None:
            stream.codec_context.gop_size = gop
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        if rotation:
            stream.set_display_rotation(-rotation)
        astream = container.add_stream("aac", rate=16000) if audio else None
        container.start_encoding()
        picture = fit_picture(draw, width, height) if isinstance(draw, np.ndarray) else None
        for i in range(n_frames):
            if callable(draw):
                upright = draw(i)
            elif picture is not None:
                upright = pasted_frame(picture, i, n_frames, width, height)
            else:
                upright = coded_frame(i, width, height)
            stored = np.ascontiguousarray(np.rot90(upright, k=rotation // 90))
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = int(round(times[i] * 1000)), tb
            else:
                frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if astream is not None:
            _write_silence(container, astream, seconds=n_frames / fps)
    return path


def _write_silence(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    n = 1024
    for k in range(max(1, int(seconds * rate) // n)):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, n), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, k * n
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_zero_frame_video(path: str | Path, size: tuple[int, int] = (64, 48)) -> Path:
    """An AVI whose header declares an MPEG-4 video stream but which holds no frame at all."""
    path = Path(path)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        container.start_encoding()
        container.mux(stream.encode())
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An MP4 (ftyp isom) with one silent AAC track and no video stream."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        container.start_encoding()
        _write_silence(container, stream, seconds)
    return path


def write_mjpeg_avi(
    path: str | Path,
    pictures: Sequence[np.ndarray],
    *,
    header_size: tuple[int, int] | None = None,
    fps: int = 10,
) -> Path:
    """An MJPEG AVI whose packets are the given pictures as JPEGs, whatever ``header_size`` claims.

    Each frame may have its own size: the header can lie about the resolution
    (e.g. a small header and one huge frame), as a hostile file would.
    """
    path = Path(path)
    w, h = header_size or (pictures[0].shape[1], pictures[0].shape[0])
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuvj420p"
        for i, pic in enumerate(pictures):
            packet = av.Packet(encode_image(pic, "jpeg"))
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base = Fraction(1, fps)
            container.mux(packet)
    return path


def write_huge_video(path: str | Path, size: tuple[int, int] = (4224, 2240), n_frames: int = 2) -> Path:
    """A real H.264 (or MPEG-4) MP4 of plain black frames at a large resolution (cheap to write)."""
    path = Path(path)
    w, h = size
    codec = "libx264" if codec_available("libx264") else "mpeg4"
    with av.open(str(path), "w") as container:
        opts = {"preset": "ultrafast"} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=25, options=opts)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        yuv = np.zeros((h * 3 // 2, w), np.uint8)
        yuv[h:] = 128
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def truncate_file(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` fraction of ``src``'s bytes to ``dst``."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(truncated(data, keep))
    return dst


def damage_packets(src: str | Path, dst: str | Path, positions: Sequence[int]) -> Path:
    """Copy ``src`` to ``dst`` with the payload of the video packets at these decode positions
    zeroed (their first 8 bytes, the NAL length and header, kept), as a disk or network error
    would leave them: the demuxer still reads them, the decoder rejects them."""
    data = bytearray(Path(src).read_bytes())
    with av.open(str(src)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    for i in positions:
        pos, size = packets[i]
        data[pos + 8 : pos + size] = bytes(size - 8)
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def mkv_claims_duration(src: str | Path, dst: str | Path, factor: float) -> Path:
    """Copy a Matroska file whose Segment ``Duration`` element is multiplied by ``factor``: the
    header then lies about the length of the stream."""
    data = bytearray(Path(src).read_bytes())
    i = data.find(b"\x44\x89")  # the Duration element ID, then its size (0x88: an 8-byte float)
    assert i > 0 and data[i + 2] in (0x84, 0x88), "no Duration element"
    fmt, n = (">d", 8) if data[i + 2] == 0x88 else (">f", 4)
    (value,) = struct.unpack(fmt, data[i + 3 : i + 3 + n])
    data[i + 3 : i + 3 + n] = struct.pack(fmt, value * factor)
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


# -- images ------------------------------------------------------------------------
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "gif": "GIF", "avif": "AVIF"}


def encode_image(array: np.ndarray, fmt: str, **save_kwargs: object) -> bytes:
    """Encode an RGB/RGBA/L array as ``fmt`` (``jpeg png webp bmp gif avif heic``; HEIC with
    pillow-heif's x265 encoder, ``exif`` and ``quality`` accepted)."""
    im = Image.fromarray(np.asarray(array))
    if fmt == "jpeg" and im.mode == "RGBA":
        im = im.convert("RGB")
    buf = io.BytesIO()
    if fmt == "heic":
        import pillow_heif

        pillow_heif.from_pillow(im).save(buf, **save_kwargs)
    else:
        im.save(buf, _PIL_FORMATS[fmt], **save_kwargs)
    return buf.getvalue()


def with_exif_orientation(array: np.ndarray, fmt: str, orientation: int, **save_kwargs: object) -> bytes:
    """``array`` as stored pixels encoded as ``fmt`` with EXIF Orientation ``orientation``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode_image(array, fmt, exif=exif.tobytes(), **save_kwargs)


def set_bmff_image_size(data: bytes, width: int, height: int) -> bytes:
    """A HEIF/AVIF file whose every ``ispe`` (image size) property declares ``width`` x ``height``:
    a header that lies, as a decompression bomb's does."""
    out = bytearray(data)
    at = out.find(b"ispe")
    assert at != -1, "no ispe property"
    while at != -1:
        struct.pack_into(">II", out, at + 8, width, height)
        at = out.find(b"ispe", at + 4)
    return bytes(out)


def write_image(path: str | Path, array: np.ndarray, fmt: str, **save_kwargs: object) -> Path:
    """Write ``array`` encoded as ``fmt`` to ``path`` (the name need not match the format)."""
    path = Path(path)
    path.write_bytes(encode_image(array, fmt, **save_kwargs))
    return path


def exif_jpeg(array: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``array`` as stored pixels, with EXIF Orientation ``orientation`` (1..8)."""
    im = Image.fromarray(np.asarray(array))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def animated(frames: Sequence[np.ndarray], fmt: str = "PNG", duration_ms: int = 100) -> bytes:
    """An animated PNG (APNG) or WebP (``fmt``) of the given RGB frames."""
    ims = [Image.fromarray(np.asarray(f)) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, fmt, save_all=True, append_images=ims[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def animated_gif(frames: Sequence[np.ndarray], duration_ms: int = 100) -> bytes:
    """An animated GIF (loops forever) of the given RGB frames."""
    ims = [Image.fromarray(np.asarray(f)) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, "GIF", save_all=True, append_images=ims[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of ``data`` (at least one byte is removed)."""
    return bytes(data[: min(len(data) - 1, int(len(data) * keep))])


def png_bomb(width: int = 30000, height: int | None = None) -> bytes:
    """A valid 1-bit ``width x height`` PNG of zeros (square by default): ~0.5 MB on disk for
    900 megapixels. Written with zlib directly, row by row: never holds the image in memory.
    """
    height = width if height is None else height

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        return struct.pack(">I", len(payload)) + kind + payload + crc

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF whose logical screen is ``width x height`` but which holds a single 1x1 pixel."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + image + b";"


def text_bytes() -> bytes:
    """Plain text (e.g. renamed to .jpg)."""
    return b"This is not an image. Just some text that someone renamed to photo.jpg\n" * 4


def html_bytes() -> bytes:
    """An HTML page (e.g. renamed to .jpg)."""
    return (
        b"<!DOCTYPE html>\n<html><head><title>x</title></head>"
        b"<body><img src=x onerror=alert(1)></body></html>\n"
    )


def zip_bytes(members: dict[str, bytes] | None = None) -> bytes:
    """A ZIP archive (e.g. renamed to .jpg)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in (members or {"readme.txt": b"hello"}).items():
            zf.writestr(name, payload)
    return buf.getvalue()


def polyglot_jpeg_zip(jpeg: bytes) -> bytes:
    """A valid JPEG followed by a ZIP archive (both readers accept it)."""
    return jpeg + zip_bytes({"payload.txt": b"hidden"})


def hostile_images(picture: np.ndarray) -> dict[str, tuple[bytes, str | None]]:
    """Named hostile/edge-case image inputs with the status ``decode_image`` must give.

    ``None`` means it must decode. Intended for corpus tests; all are built in memory.
    """
    jpeg = encode_image(picture, "jpeg")
    return {
        "empty.jpg": (b"", "unreadable"),
        "text.jpg": (text_bytes(), "unsupported"),
        "html.jpg": (html_bytes(), "unsupported"),
        "zip.jpg": (zip_bytes(), "unsupported"),
        "zip_then_jpeg.jpg": (zip_bytes() + jpeg, "unsupported"),
        "polyglot_jpeg_zip.jpg": (polyglot_jpeg_zip(jpeg), None),
        "truncated.jpg": (truncated(jpeg, 0.5), "unreadable"),
        "truncated.png": (truncated(encode_image(picture, "png"), 0.5), "unreadable"),
        "truncated.webp": (truncated(encode_image(picture, "webp"), 0.5), "unreadable"),
        "header_only.jpg": (jpeg[:200], "unreadable"),
        "bomb.png": (png_bomb(30000), "too_large"),
        "bomb.gif": (gif_bomb(), "too_large"),
        "one_pixel.png": (encode_image(np.zeros((1, 1, 3), np.uint8), "png"), None),
    }


def write_hostile_videos(directory: str | Path) -> dict[str, tuple[Path, str | None]]:
    """Write hostile/edge-case video files into ``directory``.

    Returns ``{name: (path, status)}`` where ``status`` is what
    ``detector.video.iter_sampled_frames`` (decoding every sampled frame, default
    limits) must end with, or ``None`` when some frames must come out.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ok = write_video(d / "ok.mp4", 20, (64, 48), 10)
    fast = write_video(d / "faststart.mp4", 40, (64, 48), 10, faststart=True)
    out: dict[str, tuple[Path, str | None]] = {
        "ok.mp4": (ok, None),
        "zero_frames.avi": (write_zero_frame_video(d / "zero_frames.avi"), "unreadable"),
        "audio_only.mp4": (write_audio_only(d / "audio_only.mp4"), "unsupported"),
        "truncated_no_index.mp4": (truncate_file(ok, d / "truncated_no_index.mp4", 0.5), "unreadable"),
        "truncated_faststart.mp4": (truncate_file(fast, d / "truncated_faststart.mp4", 0.7), None),
        "huge_resolution.mp4": (write_huge_video(d / "huge_resolution.mp4"), "too_large"),
        "header_lies_avi.avi": (
            write_mjpeg_avi(
                d / "header_lies_avi.avi",
                [np.zeros((48, 64, 3), np.uint8), np.zeros((4400, 4400, 3), np.uint8)],
                header_size=(64, 48),
            ),
            "too_large",
        ),
    }
    for name, data, status in [
        ("empty.mp4", b"", "unreadable"),
        ("text.mp4", text_bytes(), "unsupported"),
        ("html.webm", html_bytes(), "unsupported"),
        ("zip.avi", zip_bytes(), "unsupported"),
        ("ftyp_then_garbage.mp4", b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00" + bytes(range(256)) * 8,
         "unreadable"),
        ("ebml_then_garbage.mkv", b"\x1aE\xdf\xa3" + bytes(range(255, -1, -1)) * 8, "unreadable"),
        ("riff_avi_then_garbage.avi", b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(4096), "unreadable"),
    ]:
        path = d / name
        path.write_bytes(data)
        out[name] = (path, status)
    return out
