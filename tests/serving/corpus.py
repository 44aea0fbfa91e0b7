"""A hostile-input corpus for the HTTP service: real files, each with the answer it must get.

Built from :mod:`tests.detector.media_factory` plus cases of our own: not-allowed formats
(by content, whatever the name), allowed magic bytes over content that does not decode
(polyglots, truncations), decompression bombs and absurd header dimensions, broken and
over-cap videos, and a few edge cases that must still be answered (1x1 images).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.detector import media_factory as mf


@dataclass(frozen=True)
class Case:
    """One corpus file: what to upload and what must come back."""

    name: str
    path: Path
    status: int  # HTTP status
    code: str | None  # error code (None for 200)
    result_status: str | None = None  # the analysis status, when the answer carries a result


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose (valid, CRC-correct) IHDR declares ``width x height`` over a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bad_crc(good_png: bytes) -> bytes:
    """A PNG with one flipped byte inside its first IDAT chunk (CRC mismatch)."""
    i = good_png.index(b"IDAT") + 20
    return good_png[:i] + bytes([good_png[i] ^ 0xFF]) + good_png[i + 1 :]


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its SOF0/SOF2 frame header patched to claim ``width x height``."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data) - 9:
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker stream")
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, i + 5, height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker")


def bmp_with_header(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring ``width x height`` followed by a few bytes of pixels."""
    pixels = b"\x00" * 64
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(dib) + len(pixels), 0, 0, 14 + len(dib)) + dib + pixels


def long_duration_video(path: Path, seconds: int = 4000) -> Path:
    """A 2-frame MPEG-4 MP4 whose second frame sits ``seconds`` after the first (over the duration cap)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1)
        for pts in (0, seconds):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def build_corpus(dest: Path, picture: np.ndarray, max_upload_bytes: int) -> list[Case]:
    """Write the corpus into ``dest``; ``picture`` is a real photo (RGB uint8)."""
    dest.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, data: bytes, status: int, code: str | None, result_status: str | None = None) -> None:
        path = dest / name
        path.write_bytes(data)
        cases.append(Case(name, path, status, code, result_status))

    def add_file(path: Path, status: int, code: str | None, result_status: str | None = None) -> None:
        cases.append(Case(path.name, path, status, code, result_status))

    jpeg = mf.encode_image(picture, "jpeg")
    png = mf.encode_image(picture[:96, :96], "png")
    small = picture[::8, ::8].copy()

    # media_factory's image cases; the statuses they must get over HTTP.
    http_of = {
        None: (200, None),
        "unsupported": (415, "unsupported_media"),
        "unreadable": (422, "unreadable_media"),
        "too_large": (422, "media_too_large"),
    }
    for name, (data, expected) in mf.hostile_images(picture).items():
        status, code = http_of[expected]
        # 415 and the empty file are refused before any analysis: no result in the answer.
        result_status = None if status == 415 or not data else expected
        add(f"mf-{name}", data, status, code, result_status)

    # Not an allowed format, whatever the name says: 415 from the magic bytes, no worker involved.
    for name, data in {
        "pdf.jpg": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "svg.jpg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>',
        "bom-html.png": b"\xef\xbb\xbf<!doctype html><html><body>hi</body></html>",
        "elf.mp4": b"\x7fELF\x02\x01\x01\x00" + bytes(120),
        "script.jpg": b"#!/bin/sh\nrm -rf / --no-preserve-root\n",
        "json.webp": b'{"image": "definitely"}',
        "utf16.jpg": "not an image".encode("utf-16"),
        "random.jpg": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "gzip.png": gzip.compress(png),
        "tiff.jpg": b"II*\x00\x08\x00\x00\x00" + bytes(64),
        "ico.png": b"\x00\x00\x01\x00\x01\x00\x10\x10" + bytes(64),
        "jp2.jpg": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64),
        "psd.png": b"8BPS\x00\x01" + bytes(64),
        "cr3.jpg": b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom" + bytes(64),
        "heif-jpeg-tiles.jpg": b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1jpeg" + bytes(64),
        "riff-wav.mp4": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64),
        "zip-renamed.mp4": mf.zip_bytes({"a.mp4": b"\x00" * 100}),
    }.items():
        add(name, data, 415, "unsupported_media")

    # Allowed magic bytes over content that is not that format: unreadable (422).
    for name, data in {
        "jpeg-magic-html.jpg": b"\xff\xd8\xff\xe0" + mf.html_bytes(),
        "png-magic-zip.png": b"\x89PNG\r\n\x1a\n" + mf.zip_bytes(),
        "gif-magic-html.gif": b"GIF89a" + mf.html_bytes(),
        "webp-magic-garbage.webp": b"RIFF\x00\x10\x00\x00WEBPVP8 " + bytes(200),
        "png-bad-crc.png": png_bad_crc(png),
        "mp4-ftyp-garbage.mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(500),
        "heic-ftyp-garbage.jpg": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        "avif-ftyp-garbage.png": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64),
        "ebml-garbage.webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm" + bytes(500),
        "avi-garbage.avi": b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(500),
    }.items():
        add(name, data, 422, "unreadable_media", "unreadable")

    # Absurd dimensions, refused from the header before decoding.
    add("png-header-100000x1.png", png_with_header(100_000, 1), 422, "media_too_large", "too_large")
    add("jpeg-sof-65000x65000.jpg", jpeg_with_size(jpeg, 65000, 65000), 422, "media_too_large", "too_large")
    for fmt in ("heic", "avif"):
        lying = mf.set_bmff_image_size(mf.encode_image(small, fmt), 30000, 30000)
        add(f"{fmt}-ispe-30000x30000.{fmt}", lying, 422, "media_too_large", "too_large")
    add("bmp-header-30000x30000.bmp", bmp_with_header(30000, 30000), 422, "media_too_large", "too_large")

    # Edge cases that decode: answered (no face), not refused.
    add("one-pixel.jpg", mf.encode_image(np.full((1, 1, 3), 200, np.uint8), "jpeg"), 200, None, "no_face")
    add("one-pixel.webp", mf.encode_image(np.full((1, 1, 3), 200, np.uint8), "webp"), 200, None, "no_face")
    add("png-named.jpg", mf.encode_image(small, "png"), 200, None, "no_face")

    # Videos.
    video = mf.write_video(dest / "src-ok.mp4", n_frames=12, size=(96, 64))
    add("video-truncated.mp4", mf.truncated(video.read_bytes(), 0.5), 422, "unreadable_media", "unreadable")
    add("video-header-only.mp4", video.read_bytes()[:48], 422, "unreadable_media", "unreadable")
    video.unlink()
    add_file(mf.write_zero_frame_video(dest / "video-zero-frames.avi"), 422, "unreadable_media", "unreadable")
    add_file(mf.write_audio_only(dest / "video-audio-only.mp4"), 415, "unsupported_media", "unsupported")
    add_file(mf.write_huge_video(dest / "video-huge-4224x2240.mp4"), 422, "media_too_large", "too_large")
    add_file(long_duration_video(dest / "video-4000-seconds.mp4"), 422, "media_too_large", "too_large")
    lying = mf.write_mjpeg_avi(
        dest / "video-mjpeg-lying-header.avi",
        [np.zeros((48, 64, 3), np.uint8), np.zeros((4400, 4400, 3), np.uint8)],
        header_size=(64, 48),
    )
    add_file(lying, 422, "media_too_large", "too_large")

    # Over the upload limit: 413 while streaming, whatever the content.
    add("oversize.jpg", b"\xff\xd8\xff\xe0" + os.urandom(max_upload_bytes + 10), 413, "too_large")
    return cases


def jpeg_bytes(picture: np.ndarray) -> bytes:
    """``picture`` as JPEG bytes."""
    out = io.BytesIO()
    from PIL import Image

    Image.fromarray(picture).save(out, "JPEG", quality=92)
    return out.getvalue()
