"""detector.media: magic-byte allowlist, safe still-image decoding, hashing."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from detector.media import (
    IMAGE_KINDS,
    SNIFF_BYTES,
    VIDEO_KINDS,
    MediaError,
    MediaTimeout,
    decode_image,
    describe_unknown,
    is_animated,
    is_animated_gif,
    media_type_of,
    sha256_bytes,
    sha256_file,
    sniff,
    sniff_file,
)
from detector.schema import Status
from tests.detector import media_factory as mf

PIL_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


@pytest.fixture(scope="module")
def quadrants() -> np.ndarray:
    """A 48x64 picture with four flat coloured quadrants (survives JPEG and shows orientation)."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[:24, :32] = (255, 0, 0)
    img[:24, 32:] = (0, 255, 0)
    img[24:, :32] = (0, 0, 255)
    img[24:, 32:] = (255, 255, 0)
    return img


def status_of(data: bytes, **kw: int) -> str:
    with pytest.raises(MediaError) as info:
        decode_image(data, **kw)
    assert str(info.value)  # always a human-readable reason
    return info.value.status.value


# -- sniff ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "bmp", "gif"])
def test_sniff_images(fmt: str, quadrants: np.ndarray) -> None:
    data = mf.encode_image(quadrants, fmt)
    assert sniff(data[:SNIFF_BYTES]) == fmt
    assert media_type_of(fmt, data) == "image"


@pytest.mark.parametrize(
    "head, kind",
    [
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41", "mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", "mp4"),  # QuickTime .mov
        (b"\x00\x00\x00\x1cftypM4V \x00\x00\x00\x01M4V M4A mp42isom", "mp4"),  # .m4v
        (b"\x00\x00\x00\x18ftyp3gp5\x00\x00\x00\x00", "mp4"),  # 3GP
        (b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat", "mp4"),  # old QuickTime, no ftyp
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heic"),  # iPhone photo
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "avif"),
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf", "avif"),  # generic HEIF brand
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "heic"),
        (b"\x00\x00\x00\x18ftypmsf1\x00\x00\x00\x00msf1hevc", "heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1jpeg", None),  # HEIF of JPEG tiles
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1mif1", None),  # no codec named
        (b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom", None),  # Canon CR3 raw
        (b"\x00\x00\x00\x18ftyphevm\x00\x00\x00\x00msf1hevm", "heic"),  # HEVC image sequence
        (b"\x00\x00\x00\x18ftypMiHE\x00\x00\x00\x00MiHEheic", "heic"),
        (b"\x00\x00\x00\x18ftypjpeg\x00\x00\x00\x00jpegmif1", None),  # HEIF of JPEG, not a video
        (b"\x00\x00\x00\x10ftypmif1\x00\x00\x00\x00avifheic", None),  # brands after the box
        (b"RIFF\x10\x00\x00\x00AVI LIST", "avi"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),  # audio
        (b"\x1aE\xdf\xa3\x9fB\x86\x81\x01B\xf7\x81\x01B\xf2\x81\x04B\xf3\x81\x08B\x82\x84webm", "webm"),
        (b"\x1aE\xdf\xa3\xa3B\x86\x81\x01B\xf7\x81\x01B\xf2\x81\x04B\xf3\x81\x08B\x82\x88matroska", "mkv"),
        (b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00", "bmp"),
        (b"BMW this is a text starting with BM", None),  # 'BM' alone is not enough
        (b"GIF89a\x01\x00\x01\x00", "gif"),
        (b"", None),
        (b"\xff\xd8", None),  # too short to be a JPEG
        (b"%PDF-1.7\n", None),
        (b"PK\x03\x04\x14\x00", None),
        (b"<!DOCTYPE html><html>", None),
    ],
)
def test_sniff_headers(head: bytes, kind: str | None) -> None:
    assert sniff(head) == kind


def test_sniff_written_videos(tmp_path: Path) -> None:
    for name, codec in [("a.mp4", "libx264"), ("a.mov", "libx264"), ("a.mkv", "libx264"),
                        ("a.webm", "libvpx-vp9"), ("a.avi", "mpeg4")]:
        path = mf.write_video(tmp_path / name, 2, (32, 32), 10, codec)
        kind = sniff_file(path)
        assert kind == {"mov": "mp4"}.get(path.suffix[1:], path.suffix[1:])
        assert media_type_of(kind) == "video"


def test_sniff_ignores_names(tmp_path: Path, quadrants: np.ndarray) -> None:
    png_named_mp4 = mf.write_image(tmp_path / "clip.mp4", quadrants, "png")
    assert sniff_file(png_named_mp4) == "png"
    text_named_jpg = tmp_path / "photo.jpg"
    text_named_jpg.write_bytes(mf.text_bytes())
    assert sniff_file(text_named_jpg) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_sniff_never_raises(data: bytes) -> None:
    assert sniff(data) in IMAGE_KINDS | VIDEO_KINDS | {None}


def test_media_type_of() -> None:
    assert {k: media_type_of(k) for k in ("jpeg", "png", "webp", "bmp")} == dict.fromkeys(
        ("jpeg", "png", "webp", "bmp"), "image"
    )
    assert {media_type_of(k) for k in ("mp4", "webm", "mkv", "avi")} == {"video"}
    assert media_type_of("gif") == "image"  # without the bytes: the single-frame rule
    assert media_type_of("heic") == media_type_of("avif") == "image"
    with pytest.raises(ValueError):
        media_type_of("tiff")


def test_animated_gif_is_video(quadrants: np.ndarray) -> None:
    anim = mf.animated_gif([quadrants, quadrants[::-1], quadrants[:, ::-1]])
    still = mf.encode_image(quadrants, "gif")
    assert is_animated_gif(anim) and media_type_of("gif", anim) == "video"
    assert not is_animated_gif(still) and media_type_of("gif", still) == "image"
    assert not is_animated_gif(b"GIF89a broken") and not is_animated_gif(mf.text_bytes())
    assert status_of(anim) == "unsupported"


def test_apng_is_video_animated_webp_is_refused_clearly(quadrants: np.ndarray) -> None:
    frames = [quadrants, quadrants[::-1], quadrants[:, ::-1]]
    apng, still = mf.animated(frames, "PNG"), mf.encode_image(quadrants, "png")
    assert is_animated(apng) and media_type_of("png", apng) == "video" and not is_animated_gif(apng)
    assert not is_animated(still) and media_type_of("png", still) == "image"
    assert status_of(apng) == "unsupported"  # as a still image: it is a video
    webp = mf.animated(frames, "WEBP")
    assert not is_animated(webp) and media_type_of("webp", webp) == "image"
    with pytest.raises(MediaError, match="animated WebP is not supported.*convert") as info:
        decode_image(webp)
    assert info.value.status == Status.unsupported


def test_refused_formats_are_named() -> None:
    assert describe_unknown(b"II*\x00" + bytes(60)) == "a TIFF image"
    assert describe_unknown(bytes(64)) == "an unrecognised binary file"  # NULs are not text
    assert describe_unknown(b"MM\x00*" + bytes(60)) == "a TIFF image"
    assert describe_unknown(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1jpeg" + bytes(40)) == (
        "a HEIF image of another codec, brand 'mif1'"
    )
    assert describe_unknown(b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom" + bytes(40)) == (
        "a Canon CR3 raw photo"
    )


def test_is_animated_gif_reads_no_pixels() -> None:
    t = time.perf_counter()
    assert not is_animated_gif(mf.gif_bomb(65535, 65535))
    assert time.perf_counter() - t < 1.0


def test_describe_unknown() -> None:
    assert describe_unknown(b"") == "an empty file"
    assert "ZIP" in describe_unknown(mf.zip_bytes())
    assert "HTML" in describe_unknown(mf.html_bytes())
    assert "text" in describe_unknown(mf.text_bytes())
    assert "binary" in describe_unknown(b"\x00\xff\xfe\x80" * 8)


# -- decode_image: good inputs ----------------------------------------------------------
@pytest.mark.parametrize("fmt, tol", [("png", 0), ("bmp", 0), ("gif", 0), ("webp", 6), ("jpeg", 12)])
def test_decode_each_format(fmt: str, tol: int, quadrants: np.ndarray) -> None:
    options = {"quality": 95} if fmt in ("jpeg", "webp") else {}
    out = decode_image(mf.encode_image(quadrants, fmt, **options))
    assert out.shape == quadrants.shape and out.dtype == np.uint8 and out.flags.writeable
    assert np.abs(out.astype(int) - quadrants).mean() <= tol


def test_decode_real_photo(astronaut: np.ndarray) -> None:
    out = decode_image(mf.encode_image(astronaut, "png"))
    np.testing.assert_array_equal(out, astronaut)


def test_one_pixel() -> None:
    out = decode_image(mf.encode_image(np.full((1, 1, 3), 200, np.uint8), "png"))
    assert out.shape == (1, 1, 3) and out[0, 0, 0] == 200


# Expected display transform of stored pixels for each EXIF orientation (EXIF 2.3 spec).
EXIF_TRANSFORMS = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.rot90(np.fliplr(a), 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(np.fliplr(a), -1),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(orientation: int, quadrants: np.ndarray) -> None:
    out = decode_image(mf.exif_jpeg(quadrants, orientation))
    expected = EXIF_TRANSFORMS[orientation](quadrants)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 12


def test_broken_exif_is_ignored(quadrants: np.ndarray) -> None:
    jpeg = mf.encode_image(quadrants, "jpeg", quality=95)
    bad_app1 = b"\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff\xff\xff"  # IFD offset past the end
    out = decode_image(jpeg[:2] + bad_app1 + jpeg[2:])
    assert out.shape == quadrants.shape


def test_alpha_is_composited_over_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # opaque red-ish
    rgba[0, 1, 3] = 0  # fully transparent
    rgba[0, 2, 3] = 128  # half
    out = decode_image(mf.encode_image(rgba, "png"))
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert abs(int(out[0, 2, 1]) - 127) <= 1 and abs(int(out[0, 2, 0]) - 227) <= 1


def test_other_modes() -> None:
    def png(im: Image.Image, **kw: object) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "PNG", **kw)
        return buf.getvalue()

    grey16 = Image.fromarray(np.array([[0, 65535], [32896, 257]], dtype=np.uint16))
    out = decode_image(png(grey16))
    assert out[:, :, 0].tolist() == [[0, 255], [128, 1]] and (out[..., 0] == out[..., 2]).all()
    la = Image.fromarray(np.array([[[10, 255], [10, 0]]], np.uint8), "LA")
    assert decode_image(png(la))[0].tolist() == [[10, 10, 10], [255, 255, 255]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 255, 9, 9, 9])
    pal.putpixel((1, 0), 1)
    assert decode_image(png(pal, transparency=1))[0].tolist() == [[0, 0, 255], [255, 255, 255]]
    bilevel = Image.new("1", (3, 2), 1)
    assert (decode_image(png(bilevel)) == 255).all()
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    out = decode_image(buf.getvalue())
    assert out.shape == (8, 8, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_polyglot_decodes_its_image(quadrants: np.ndarray) -> None:
    jpeg = mf.encode_image(quadrants, "jpeg", quality=95)
    out = decode_image(mf.polyglot_jpeg_zip(jpeg))
    np.testing.assert_array_equal(out, decode_image(jpeg))


# -- decode_image: refusals ----------------------------------------------------------------
def test_not_images(tmp_path: Path, quadrants: np.ndarray) -> None:
    assert status_of(b"") == "unreadable"
    for data in (mf.text_bytes(), mf.html_bytes(), mf.zip_bytes(), b"%PDF-1.4\n",
                 mf.zip_bytes() + mf.encode_image(quadrants, "jpeg")):
        assert status_of(data) == "unsupported"
    with pytest.raises(MediaError, match="HTML"):
        decode_image(mf.html_bytes())
    video = mf.write_video(tmp_path / "v.mp4", 2, (32, 32), 10).read_bytes()
    with pytest.raises(MediaError, match="video"):
        decode_image(video)
    assert status_of(video) == "unsupported"


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "bmp", "gif"])
@pytest.mark.parametrize("keep", [0.2, 0.6, 0.95])
def test_truncated_is_unreadable(fmt: str, keep: float, astronaut: np.ndarray) -> None:
    data = mf.encode_image(astronaut, fmt)
    assert status_of(mf.truncated(data, keep)) == "unreadable"


def test_corrupt_header_is_unreadable(quadrants: np.ndarray) -> None:
    png = bytearray(mf.encode_image(quadrants, "png"))
    png[16:24] = b"\x00" * 8  # IHDR width and height = 0
    assert status_of(bytes(png)) == "unreadable"
    assert status_of(b"GIF89a" + b"\x00" * 4) == "unreadable"


def test_animated_webp_refused(quadrants: np.ndarray) -> None:
    ims = [Image.fromarray(quadrants), Image.fromarray(quadrants[::-1].copy())]
    buf = io.BytesIO()
    ims[0].save(buf, "WEBP", save_all=True, append_images=ims[1:], duration=100)
    assert status_of(buf.getvalue()) == "unsupported"


def test_png_bomb_refused_fast() -> None:
    bomb = mf.png_bomb(30000)
    assert len(bomb) < 2_000_000  # 900 megapixels in a small file
    t = time.perf_counter()
    with pytest.raises(MediaError, match="30000x30000") as info:
        decode_image(bomb)
    assert info.value.status == Status.too_large
    assert time.perf_counter() - t < 2.0


def test_gif_bomb_refused() -> None:
    assert status_of(mf.gif_bomb(65535, 65535)) == "too_large"


def test_pixel_and_side_caps(quadrants: np.ndarray) -> None:
    data = mf.encode_image(quadrants, "png")  # 64 x 48 = 3072 pixels
    assert decode_image(data, max_pixels=3072, max_side=64).shape == (48, 64, 3)
    assert status_of(data, max_pixels=3071) == "too_large"
    assert status_of(data, max_side=63) == "too_large"
    # a long thin image: few pixels, one side over the default 20000
    assert status_of(mf.png_bomb(20001, 1)) == "too_large"
    assert decode_image(mf.png_bomb(20000, 1)).shape == (1, 20000, 3)


def test_hostile_catalogue(astronaut: np.ndarray) -> None:
    for name, (data, expected) in mf.hostile_images(astronaut).items():
        if expected is None:
            out = decode_image(data)
            assert out.ndim == 3 and out.shape[2] == 3, name
        else:
            assert status_of(data) == expected, name


def test_pillow_globals_untouched(quadrants: np.ndarray) -> None:
    decode_image(mf.encode_image(quadrants, "png"))
    assert status_of(mf.png_bomb(30000)) == "too_large"
    assert Image.MAX_IMAGE_PIXELS == PIL_DEFAULT_MAX_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# -- errors and hashes ---------------------------------------------------------------------
def test_media_error() -> None:
    err = MediaError("too_large", "big")
    assert err.status is Status.too_large and err.status == "too_large" and str(err) == "big"
    assert "too_large" in repr(err)
    with pytest.raises(ValueError):
        MediaError("nonsense", "x")
    timeout = MediaTimeout()
    assert isinstance(timeout, MediaError) and timeout.status == Status.timeout and str(timeout)


def test_sha256(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == expected
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk_size=1000) == expected  # many chunks
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
