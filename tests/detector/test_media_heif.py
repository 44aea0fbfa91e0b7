"""detector.media on AVIF (Pillow's own plugin) and HEIC (pillow-heif, the ``heic`` extra).

Every file here is encoded by the test itself: AVIF with Pillow's libavif encoder, HEIC with
pillow-heif's x265 encoder.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.container import trailing_bytes
from detector.media import SNIFF_BYTES, MediaError, decode_image, media_type_of, sniff
from detector.schema import Status
from tests.detector import media_factory as mf
from tests.detector.test_media import EXIF_TRANSFORMS, status_of

REPO = Path(__file__).resolve().parents[2]
FORMATS = ["avif", "heic"]


@pytest.fixture(scope="module")
def quadrants() -> np.ndarray:
    """64x96, four flat coloured quadrants (survive lossy coding, show orientation)."""
    img = np.zeros((64, 96, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for (row, col), colour in zip(np.ndindex(2, 2), colours, strict=True):
        img[32 * row : 32 * row + 32, 48 * col : 48 * col + 48] = colour
    return img


@pytest.mark.parametrize("fmt", FORMATS)
def test_sniffed_and_decoded(fmt: str, quadrants: np.ndarray) -> None:
    data = mf.encode_image(quadrants, fmt, quality=95)
    assert sniff(data[:SNIFF_BYTES]) == fmt
    assert media_type_of(fmt, data) == "image"
    out = decode_image(data)
    assert out.shape == quadrants.shape and out.dtype == np.uint8 and out.flags.writeable
    assert np.abs(out.astype(int) - quadrants).mean() < 8


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(fmt: str, orientation: int, quadrants: np.ndarray) -> None:
    """Shown upright, as a phone's gallery shows it, whichever way the encoder stored the turn
    (libavif keeps the EXIF tag and writes irot/imir; pillow-heif applies the turn on decoding)."""
    out = decode_image(mf.with_exif_orientation(quadrants, fmt, orientation, quality=95))
    expected = EXIF_TRANSFORMS[orientation](quadrants)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).mean() < 8


def test_avif_alpha_is_composited_over_white() -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 16:, 3] = 255  # left half transparent, right half opaque red
    out = decode_image(mf.encode_image(rgba, "avif", quality=100))
    assert out[:, :12].min() > 240  # white
    assert out[:, 20:, 0].min() > 240 and out[:, 20:, 1:].max() < 16  # red


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [0.2, 0.6, 0.95])
def test_truncated_is_unreadable(fmt: str, keep: float, astronaut: np.ndarray) -> None:
    data = mf.encode_image(astronaut, fmt)
    assert status_of(mf.truncated(data, keep)) == "unreadable"


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_after_the_magic_is_unreadable(fmt: str, quadrants: np.ndarray) -> None:
    head = mf.encode_image(quadrants, fmt)[:40]
    assert status_of(head + bytes(500)) == "unreadable"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", [(20001, 100), (30000, 30000), (100000, 100000)])
def test_declared_size_refused_before_decoding(
    fmt: str, size: tuple[int, int], quadrants: np.ndarray
) -> None:
    """The header's image size is checked before any pixel is decoded (libavif refuses sizes
    over its own limit while parsing: still ``too_large``, not ``unreadable``)."""
    bomb = mf.set_bmff_image_size(mf.encode_image(quadrants, fmt), *size)
    t = time.perf_counter()
    with pytest.raises(MediaError, match=f"{size[0]}x{size[1]}") as info:
        decode_image(bomb)
    assert info.value.status == Status.too_large
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_pixel_caps_apply(fmt: str, quadrants: np.ndarray) -> None:
    data = mf.encode_image(quadrants, fmt)  # 96 x 64 = 6144 pixels
    assert decode_image(data, max_pixels=6144, max_side=96).shape == (64, 96, 3)
    assert status_of(data, max_pixels=6143) == "too_large"
    assert status_of(data, max_side=95) == "too_large"


def test_animated_avif_refused(quadrants: np.ndarray) -> None:
    ims = [Image.fromarray(quadrants), Image.fromarray(quadrants[::-1].copy())]
    buf = io.BytesIO()
    ims[0].save(buf, "AVIF", save_all=True, append_images=ims[1:], duration=100)
    with pytest.raises(MediaError, match="animated AVIF is not supported.*convert") as info:
        decode_image(buf.getvalue())
    assert info.value.status == Status.unsupported


def test_heic_primary_image_of_several(quadrants: np.ndarray) -> None:
    """A HEIC holding two pictures: the primary one (the photo a phone shows) is decoded."""
    import pillow_heif

    other = np.ascontiguousarray(quadrants[::-1, ::-1])
    heif = pillow_heif.from_pillow(Image.fromarray(quadrants))
    heif.add_from_pillow(Image.fromarray(other))
    buf = io.BytesIO()
    heif.save(buf, quality=95, primary_index=1)
    assert pillow_heif.open_heif(io.BytesIO(buf.getvalue())).primary_index == 1
    out = decode_image(buf.getvalue())
    assert np.abs(out.astype(int) - other).mean() < 8


def test_pillow_registry_untouched(tmp_path: Path, quadrants: np.ndarray) -> None:
    """Decoding a HEIC does not register pillow-heif's opener for other code in the process
    (checked in a fresh interpreter: scikit-image's imageio registers it when it reads a file)."""
    path = mf.write_image(tmp_path / "photo.heic", quadrants, "heic")
    code = (
        "from PIL import Image\n"
        "from detector.media import decode_image\n"
        f"print(decode_image(open({str(path)!r}, 'rb').read()).shape, 'HEIF' in Image.OPEN)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(64,", "96,", "3)", "False"]


def test_heic_without_pillow_heif_is_unsupported(tmp_path: Path, quadrants: np.ndarray) -> None:
    """A core install (no ``heic`` extra): a clear ``unsupported`` naming the extra, no crash."""
    path = mf.write_image(tmp_path / "photo.heic", quadrants, "heic")
    code = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from detector.media import MediaError, decode_image\n"
        "try:\n"
        f"    decode_image(open({str(path)!r}, 'rb').read())\n"
        "except MediaError as exc:\n"
        "    print(exc.status.value, '|', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    status, message = out.stdout.strip().split(" | ")
    assert status == "unsupported"
    assert "facetrust[heic]" in message and "pillow-heif" in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_appended_bytes_found(fmt: str, quadrants: np.ndarray) -> None:
    data = mf.encode_image(quadrants, fmt)
    archive = mf.zip_bytes({"a.txt": b"hidden"})
    assert trailing_bytes(fmt, data) == 0
    assert trailing_bytes(fmt, data + archive) == len(archive)
    assert trailing_bytes(fmt, data + data) == len(data)  # a second file: its ftyp
    assert trailing_bytes(fmt, data[:-10]) is None  # cut: reported as unreadable, not appended
