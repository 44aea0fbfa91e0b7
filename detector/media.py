"""Safe media intake: recognise files by their magic bytes, decode still images with caps.

Only the content decides what a file is (never its name or Content-Type). The
allowlist is:

- images: ``'jpeg'``, ``'png'``, ``'webp'``, ``'bmp'``, ``'gif'`` (single frame),
  ``'avif'`` (Pillow's own AVIF plugin; animated AVIF is refused) and ``'heic'`` (HEIF with
  HEVC, the default photo format of iPhones: the primary image, decoded by the optional
  ``pillow-heif`` package, the ``heic`` extra; without it ``unsupported``, saying so);
- videos: ``'mp4'`` (ISO BMFF / QuickTime: mp4, mov, m4v, 3gp), ``'webm'`` and
  ``'mkv'`` (EBML / Matroska), ``'avi'`` (RIFF AVI), animated ``'gif'`` and animated
  ``'png'`` (APNG). Animated WebP is refused (``unsupported``): this FFmpeg cannot
  decode it as a video.

Every refusal is a :class:`MediaError` whose ``status`` is a
:class:`detector.schema.Status` (``unreadable``, ``unsupported``, ``too_large``,
or ``timeout`` for :class:`MediaTimeout`) and whose message says why.

Decompression bombs are refused from the header dimensions, before any pixel is
decoded. The header is parsed by the format's own Pillow plugin class (not
``Image.open``), so Pillow's global ``Image.MAX_IMAGE_PIXELS`` check and its
``DecompressionBombWarning`` never fire here and are left untouched for other
code; our own ``max_pixels``/``max_side`` caps take their place.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from detector._heif import HeifStructureError, check_heif
from detector.schema import Status

#: Bytes of a file's start that :func:`sniff` needs (it looks at no more than this).
SNIFF_BYTES = 64

IMAGE_KINDS = frozenset({"jpeg", "png", "webp", "bmp", "gif", "avif", "heic"})
VIDEO_KINDS = frozenset({"mp4", "webm", "mkv", "avi", "gif", "png"})
#: Kinds that are a still image or a video depending on their frame count.
ANIMATABLE_KINDS = frozenset({"gif", "png"})

#: Pillow plugin class per image kind: each parses only its own format.
_PLUGINS: dict[str, type[ImageFile.ImageFile]] = {
    "jpeg": JpegImagePlugin.JpegImageFile,
    "png": PngImagePlugin.PngImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "gif": GifImagePlugin.GifImageFile,
}

#: ISO BMFF (``ftyp``) brands of still images, not videos: AVIF, HEIC (HEIF with HEVC), the
#: generic HEIF structure brands (the codec is then named among the compatible brands), and
#: others that are refused (Canon CR3 raw photos).
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"miaf", b"mif2", b"MiHE", b"MiHA", b"MiHB"})
_IMAGE_BRANDS = _AVIF_BRANDS | _HEIC_BRANDS | _HEIF_BRANDS | {b"crx ", b"jpeg", b"avci", b"vvic"}
#: First box types of old QuickTime files that have no ``ftyp`` box.
_QT_BOXES = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
#: Sizes of the BMP DIB headers Pillow reads (core, info, v2..v5).
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

# A truncated file must be an error, never a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_QUIET_LOCK = threading.Lock()


@contextmanager
def _metadata_quiet() -> Iterator[None]:
    """Silence Pillow's warnings about malformed metadata (e.g. "Corrupt EXIF data").

    Broken metadata is not a decoding error: the header is parsed and the EXIF read
    with warnings ignored. ``warnings.catch_warnings`` swaps process-wide state, so
    the (short) sections it guards are serialised by a lock; pixel decoding is not.
    """
    with _QUIET_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class MediaError(Exception):
    """A file that cannot be analysed; ``status`` says why, ``str(exc)`` explains."""

    def __init__(self, status: Status | str, message: str) -> None:
        super().__init__(message)
        self.status = Status(status)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status.value!r}, {self.message!r})"

    def __reduce__(self) -> tuple[object, tuple[str, str]]:  # picklable (process pools)
        return (type(self), (self.status.value, self.message))


class MediaTimeout(MediaError):
    """Decoding went past its deadline (status ``timeout``)."""

    def __init__(self, message: str = "decoding exceeded its time limit") -> None:
        super().__init__(Status.timeout, message)

    def __reduce__(self) -> tuple[object, tuple[str]]:  # type: ignore[override]
        return (type(self), (self.message,))


# -- recognising formats ---------------------------------------------------------
def sniff(head: bytes) -> str | None:
    """The allowed format of a file from its first bytes (>= :data:`SNIFF_BYTES`), else ``None``.

    Returns one of ``'jpeg' 'png' 'webp' 'bmp' 'gif' 'avif' 'heic' 'mp4' 'webm' 'mkv' 'avi'``.
    Judges magic bytes only; whether a GIF is animated needs the whole file
    (see :func:`media_type_of`).
    """
    h = bytes(head[:SNIFF_BYTES])
    if h.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if h.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(h) >= 12 and h.startswith(b"RIFF"):
        if h[8:12] == b"WEBP":
            return "webp"
        if h[8:12] == b"AVI ":
            return "avi"
        return None
    if h.startswith(b"BM") and len(h) >= 18:
        dib = struct.unpack_from("<I", h, 14)[0]
        return "bmp" if dib in _BMP_DIB_SIZES else None
    if h.startswith(b"\x1a\x45\xdf\xa3"):
        # EBML header: the DocType string says webm or matroska.
        return "webm" if b"webm" in h else "mkv"
    if len(h) >= 12:
        size = struct.unpack_from(">I", h, 0)[0]
        box = h[4:8]
        if box == b"ftyp" and size >= 8:
            return _ftyp_image(h, size) if h[8:12] in _IMAGE_BRANDS else "mp4"
        if box in _QT_BOXES and (size == 1 or size >= 8):
            return "mp4"
    return None


def _ftyp_image(h: bytes, size: int) -> str | None:
    """``'avif'``/``'heic'`` for an image ``ftyp`` box of ``size`` bytes at the start of ``h``,
    from its major brand or, for a generic HEIF brand, its compatible brands; else None."""
    major = h[8:12]
    compat = {h[i : i + 4] for i in range(16, min(size, len(h)) - 3, 4)}
    if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and compat & _AVIF_BRANDS):
        return "avif"
    if major in _HEIC_BRANDS or (major in _HEIF_BRANDS and compat & _HEIC_BRANDS):
        return "heic"
    return None


def sniff_file(path: str | os.PathLike[str]) -> str | None:
    """:func:`sniff` applied to the first bytes of the file at ``path``."""
    with open(path, "rb") as fh:
        return sniff(fh.read(SNIFF_BYTES))


def is_animated(data: bytes) -> bool:
    """True if ``data`` is a GIF or an APNG with more than one frame (False for anything
    unreadable or of another kind).

    Reads headers only (GIF frame headers, the APNG ``acTL`` chunk): no pixel is decoded,
    whatever the canvas size.
    """
    kind = sniff(data[:SNIFF_BYTES])
    if kind not in ANIMATABLE_KINDS:
        return False
    try:
        with _metadata_quiet(), _PLUGINS[kind](io.BytesIO(data)) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:  # any broken file: not treated as animated; decode_image reports it
        return False


def is_animated_gif(data: bytes) -> bool:
    """True if ``data`` is a GIF with more than one frame (see :func:`is_animated`)."""
    return sniff(data[:SNIFF_BYTES]) == "gif" and is_animated(data)


def media_type_of(kind: str, data: bytes | None = None) -> Literal["image", "video"]:
    """``'image'`` or ``'video'`` for a :func:`sniff` kind.

    Rule for GIF and PNG: animated ones (more than one frame, decided from ``data`` by
    :func:`is_animated`) are videos; a single-frame one, or one whose bytes are not
    given, is an image. Raises ``ValueError`` for an unknown kind.
    """
    if kind in ANIMATABLE_KINDS:
        return "video" if data is not None and is_animated(data) else "image"
    if kind in IMAGE_KINDS:
        return "image"
    if kind in VIDEO_KINDS:
        return "video"
    raise ValueError(f"unknown media kind {kind!r}")


def describe_unknown(head: bytes) -> str:
    """A short guess at what a refused file is, for error messages (``'ZIP archive'``...)."""
    h = bytes(head[:SNIFF_BYTES])
    if not h:
        return "an empty file"
    stripped = h.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    # text formats match case-insensitively after leading blanks (``stripped``), binary image
    # formats on the raw bytes
    for magic, name in (
        (b"pk\x03\x04", "a ZIP archive"),
        (b"%pdf", "a PDF document"),
        (b"<!doctype html", "an HTML page"),
        (b"<html", "an HTML page"),
        (b"<?xml", "an XML/SVG document"),
        (b"<svg", "an SVG drawing"),
        (b"\x7felf", "an executable"),
        (b"mz", "an executable"),
        (b"II*\x00", "a TIFF image"),
        (b"MM\x00*", "a TIFF image"),
        (b"\x00\x00\x00\x0cjxl ", "a JPEG XL image"),
        (b"\xff\x0a", "a JPEG XL image"),
        (b"\x00\x00\x01\x00", "an ICO icon"),
        (b"8BPS", "a Photoshop document"),
    ):
        if stripped.startswith(magic) or h.startswith(magic):
            return name
    if len(h) >= 12 and h[4:8] == b"ftyp" and h[8:12] in _IMAGE_BRANDS:
        brand = h[8:12].decode("latin-1").strip()
        if brand == "crx":
            return "a Canon CR3 raw photo"
        return f"a HEIF image of another codec, brand {brand!r}"
    try:
        if b"\x00" in h:  # NUL bytes: not text, whatever UTF-8 says
            raise UnicodeDecodeError("utf-8", h, 0, 1, "NUL byte")
        h.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "an unrecognised binary file"


# -- still images ---------------------------------------------------------------
#: The allowed formats, as error messages name them.
ALLOWED_NAMES = "JPEG, PNG, WebP, BMP, GIF, AVIF, HEIC, MP4/MOV, WebM/MKV, AVI"


def _plugin(kind: str) -> type[ImageFile.ImageFile]:
    """The Pillow plugin class that parses ``kind``; ``unsupported`` when this install has none."""
    if kind == "avif":
        try:
            from PIL import AvifImagePlugin
        except ImportError:  # Pillow < 11.3
            AvifImagePlugin = None  # noqa: N806
        if AvifImagePlugin is None or not AvifImagePlugin.SUPPORTED:
            raise MediaError(Status.unsupported, "this Pillow cannot decode AVIF: install Pillow >= 11.3")
        return AvifImagePlugin.AvifImageFile
    if kind == "heic":
        try:
            import _pillow_heif  # noqa: F401  (the compiled part: as_plugin imports it only when opening)
            from pillow_heif.as_plugin import HeifImageFile
        except ImportError as exc:
            raise MediaError(
                Status.unsupported,
                "HEIC needs the optional pillow-heif package: pip install 'facetrust[heic]' "
                "(or convert the photo to JPEG)",
            ) from exc
        return HeifImageFile
    return _PLUGINS[kind]


def decode_image(data: bytes, *, max_pixels: int = 50_000_000, max_side: int = 20_000) -> np.ndarray:
    """Decode an allowed still image to ``H x W x 3`` uint8 RGB, upright.

    - format from magic bytes only; video or unknown content -> ``unsupported``;
      an animated GIF or PNG -> ``unsupported`` (analyse it as a video); an animated
      WebP or AVIF -> ``unsupported`` (not decodable here as a video: convert it); a HEIC
      without the optional ``pillow-heif`` package -> ``unsupported``; of a HEIC holding
      several images, the primary one (the photo a phone shows) is decoded;
    - ``width * height > max_pixels`` or a side ``> max_side`` -> ``too_large``,
      decided from the header before any pixel is decoded;
    - empty, truncated or corrupt data -> ``unreadable`` (the whole image is
      decoded; truncation is never padded);
    - the EXIF orientation is applied (a broken EXIF block is ignored);
    - transparency is composited over white (as a browser page would show
      it); 16-bit greyscale is scaled to 8 bits; palettes, CMYK, etc. become RGB.
    """
    data = bytes(data)
    if not data:
        raise MediaError(Status.unreadable, "empty file")
    kind = sniff(data[:SNIFF_BYTES])
    if kind is None:
        raise MediaError(
            Status.unsupported,
            f"not an allowed image or video format ({describe_unknown(data)}); allowed: {ALLOWED_NAMES}",
        )
    if kind not in IMAGE_KINDS:
        raise MediaError(Status.unsupported, f"this is a {kind} video, not a still image")
    plugin = _plugin(kind)
    if kind in ("avif", "heic"):  # the decoders trust the file's boxes: check them first
        try:
            check_heif(data, max_pixels, max_side)
        except HeifStructureError as exc:
            raise MediaError(exc.status, f"{kind} file refused: {exc}") from exc
    try:
        with _metadata_quiet():
            im = plugin(io.BytesIO(data))
    except Exception as exc:  # Pillow plugins raise SyntaxError, OSError, struct.error, ...
        raise MediaError(Status.unreadable, f"corrupt {kind} header: {exc}") from exc
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise MediaError(Status.unreadable, f"{kind} header declares an empty {width}x{height} image")
        if width * height > max_pixels or max(width, height) > max_side:
            raise MediaError(
                Status.too_large,
                f"{kind} image of {width}x{height} pixels exceeds the limit "
                f"({max_pixels:,} pixels, {max_side} per side); refused before decoding",
            )
        if kind in ANIMATABLE_KINDS and getattr(im, "is_animated", False):
            raise MediaError(Status.unsupported, f"animated {kind}: analyse it as a video")
        if kind == "avif" and getattr(im, "is_animated", False):
            raise MediaError(
                Status.unsupported,
                "animated AVIF is not supported: convert it to MP4 or GIF, or send a single frame",
            )
        if kind == "webp" and getattr(im, "is_animated", False):
            raise MediaError(
                Status.unsupported,
                "animated WebP is not supported (FFmpeg here cannot decode it as a video): "
                "convert it to MP4 or GIF, or send a single frame",
            )
        try:
            im.load()
        except MemoryError as exc:
            raise MediaError(Status.too_large, f"not enough memory to decode this {kind} image") from exc
        except Exception as exc:  # truncated data, bad compressed stream, broken chunks
            raise MediaError(Status.unreadable, f"{kind} image cannot be decoded: {exc}") from exc
        if kind in ("avif", "heic"):
            # HEIF turns pictures by its irot/imir properties only (the decoders give them as
            # EXIF orientation); Pillow's getexif would also take an orientation from XMP
            im.info.pop("xmp", None)
        try:
            return _to_rgb(_upright(im))
        except MemoryError as exc:
            raise MediaError(Status.too_large, f"not enough memory to convert this {kind} image") from exc


_ORIENTATION = 0x0112  # the EXIF Orientation tag, which ImageOps.exif_transpose reads


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the image as stored."""
    try:
        with _metadata_quiet():
            if im.getexif().get(_ORIENTATION, 1) == 1:
                return im  # upright already: exif_transpose would only copy it (37 ms for 12 MP)
            out = ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF must not make a decodable image unreadable
        return im
    return im if out is None else out


_ALPHA_ROWS = 256


def _to_rgb(im: Image.Image) -> np.ndarray:
    """``H x W x 3`` uint8 RGB; alpha composited over white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and grey.max(initial=0) > 255):
            grey = grey / 257.0
        g8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g8[:, :, None], 3, axis=2))
    has_alpha = im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        im.mode == "P" and "transparency" in im.info
    ) or (im.mode in ("L", "RGB") and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        out = np.empty(rgba.shape[:2] + (3,), np.uint8)
        for top in range(0, len(rgba), _ALPHA_ROWS):  # in blocks: float copies of 50 MP took 2.9 GB
            block = rgba[top : top + _ALPHA_ROWS].astype(np.float32)
            alpha = block[:, :, 3:4] / 255.0
            mixed = block[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
            out[top : top + _ALPHA_ROWS] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        return out
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8, copy=True)


# -- hashing --------------------------------------------------------------------
def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
