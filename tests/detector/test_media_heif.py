"""detector.media on AVIF (Pillow's own plugin) and HEIC (pillow-heif, the ``heic`` extra).

Every file here is encoded by the test itself: AVIF with Pillow's libavif encoder, HEIC with
pillow-heif's x265 encoder.
"""

from __future__ import annotations

import io
import struct
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


def _refusal_without(module: str, path: Path) -> tuple[str, str]:
    """(status, message) of decoding ``path`` in a fresh Python where ``module`` cannot be imported."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from detector.media import MediaError, decode_image\n"
        "try:\n"
        f"    decode_image(open({str(path)!r}, 'rb').read())\n"
        "except MediaError as exc:\n"
        "    print(exc.status.value, '|', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    status, message = out.stdout.strip().split(" | ")
    return status, message


@pytest.mark.parametrize("module", ["pillow_heif", "_pillow_heif"])
def test_heic_without_pillow_heif_is_unsupported(module: str, tmp_path: Path, quadrants: np.ndarray) -> None:
    """A core install (no ``heic`` extra), or a broken one: a clear ``unsupported`` naming the
    extra, no crash."""
    status, message = _refusal_without(module, mf.write_image(tmp_path / "photo.heic", quadrants, "heic"))
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


# -- structure checks made before decoding (detector._heif), from an audit's reproducers ----------
@pytest.fixture(scope="module")
def grid_heic(astronaut: np.ndarray) -> bytes:
    """A 1024 x 1024 HEIC stored as a grid of four 512 px tiles, as iPhones store photos."""
    import pillow_heif

    big = np.ascontiguousarray(np.kron(astronaut, np.ones((2, 2, 1), np.uint8)))
    buf = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(big)).save(buf, quality=80, tile_size=512)
    data = buf.getvalue()
    assert b"grid" in data and decode_image(data).shape == (1024, 1024, 3)
    return data


def _top_boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    from detector._heif import _boxes

    return {kind: (at, stop) for kind, at, stop in _boxes(data, 0, len(data))}


def test_cut_grid_photo_is_never_analysed(grid_heic: bytes) -> None:
    """libheif fills the tiles of a cut grid photo with a flat colour and reports nothing: the
    item locations are checked against the file's length first."""
    for keep in np.linspace(0.05, 0.9999, 40):
        cut = grid_heic[: int(len(grid_heic) * keep)]
        assert status_of(cut) == "unreadable", keep
    # the same with the mdat box's own size shortened to match: only the item locations tell
    at, stop = _top_boxes(grid_heic)[b"mdat"]
    assert stop == len(grid_heic)
    cut = bytearray(grid_heic[:-1000])
    struct.pack_into(">I", cut, at - 8, struct.unpack_from(">I", cut, at - 8)[0] - 1000)
    with pytest.raises(MediaError, match="runs past the end of the file"):
        decode_image(bytes(cut))


def test_second_meta_box_refused(grid_heic: bytes, quadrants: np.ndarray) -> None:
    """libheif shows the last top-level meta box: appended boxes must not replace the picture."""
    for data in (grid_heic, mf.encode_image(quadrants, "heic")):
        at, stop = _top_boxes(data)[b"meta"]
        with pytest.raises(MediaError, match="2 top-level meta boxes") as info:
            decode_image(data + data[at - 8 : stop])
        assert info.value.status == Status.unreadable


def _patch_grid(data: bytes, width: int, height: int) -> bytes:
    """The grid description (in the idat box) declaring a ``width`` x ``height`` canvas."""
    at, _ = _top_boxes(data)[b"meta"]
    idat = data.index(b"idat", at) + 4
    out = bytearray(data)
    assert out[idat + 1] & 1 == 0  # 16-bit sizes
    struct.pack_into(">HH", out, idat + 4, width, height)
    return bytes(out)


def test_grid_canvas_and_tiles_checked_before_decoding(grid_heic: bytes) -> None:
    t = time.perf_counter()
    with pytest.raises(MediaError, match="a grid canvas of 40000x40000") as info:
        decode_image(_patch_grid(grid_heic, 40000, 40000))
    assert info.value.status == Status.too_large and time.perf_counter() - t < 1.0
    # a small canvas over tiles that add up to far more (here, caps lowered to 300,000 pixels)
    small = bytearray(_patch_grid(grid_heic, 256, 256))
    first_ispe = small.index(b"ispe")  # the grid's own (its tiles' follow): 256 x 256 too
    assert struct.unpack_from(">II", small, first_ispe + 8) == (1024, 1024)
    struct.pack_into(">II", small, first_ispe + 8, 256, 256)
    small = bytes(small)
    with pytest.raises(MediaError, match="tiles of this picture add up") as info:
        decode_image(small, max_pixels=300_000)
    assert info.value.status == Status.too_large
    assert decode_image(grid_heic, max_pixels=1024 * 1024).shape == (1024, 1024, 3)


def test_av1_coded_size_checked_whatever_ispe_says(quadrants: np.ndarray) -> None:
    """libavif decodes the coded AV1 frame and scales it to ispe: the sequence header is read."""
    big = np.ascontiguousarray(np.kron(quadrants, np.ones((20, 20, 1), np.uint8)))  # 1920 x 1280
    data = mf.encode_image(big, "avif", quality=30)
    assert decode_image(data, max_pixels=2_500_000).shape == (1280, 1920, 3)
    lying = mf.set_bmff_image_size(data, 64, 64)
    with pytest.raises(MediaError, match="AV1 coded frame of 1920x1280") as info:
        decode_image(lying, max_pixels=1_000_000)
    assert info.value.status == Status.too_large
    with pytest.raises(MediaError, match="1920x1280"):
        decode_image(lying, max_side=1919)


def _sequence_header(width: int, height: int, *, reduced: bool, timing: bool, points: int) -> bytes:
    """An AV1 Sequence Header OBU (spec 5.5) written bit by bit."""
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))

    put(0, 3), put(1, 1), put(int(reduced), 1)
    if reduced:
        put(31, 5)
    else:
        put(int(timing), 1)
        if timing:
            put(1, 32), put(30, 32), put(1, 1), put(0b00101, 5)  # uvlc(4): 00 1 01
            put(1, 1)  # decoder_model_info_present
            put(9, 5), put(1, 32), put(31, 5), put(31, 5)  # buffer delays of 10 bits
        put(1, 1)  # initial_display_delay_present
        put(points - 1, 5)
        for k in range(points):
            put(k, 12), put(9 if k else 4, 5)
            if k:
                put(1, 1)  # seq_tier (level > 7)
            if timing:
                put(1, 1), put(5, 10), put(6, 10), put(0, 1)
            put(1, 1), put(3, 4)
    put(15, 4), put(15, 4), put(width - 1, 16), put(height - 1, 16)
    bits += [1] + [0] * (-(len(bits) + 1) % 8)  # trailing bits
    payload = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
    delimiter = bytes([0b00010010, 0])  # a temporal delimiter OBU first, with its size
    return delimiter + bytes([0b00001010, len(payload)]) + payload


@pytest.mark.parametrize("reduced, timing, points", [(True, False, 1), (False, False, 1), (False, True, 3)])
def test_av1_sequence_header_sizes(reduced: bool, timing: bool, points: int) -> None:
    from detector._heif import av1_max_frame_size

    header = _sequence_header(40000, 123, reduced=reduced, timing=timing, points=points)
    assert av1_max_frame_size(header) == (40000, 123)
    assert av1_max_frame_size(bytes([0b00010010, 0]) * 4) is None  # no sequence header


def test_avif_orientation_from_xmp_is_ignored(quadrants: np.ndarray) -> None:
    """HEIF pictures turn by irot/imir only (HEIC ignores XMP too); Pillow's getexif would read an
    XMP tiff:Orientation."""
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
           b"</rdf:RDF></x:xmpmeta>")
    data = mf.encode_image(quadrants, "avif", quality=95, xmp=xmp)
    assert b'tiff:Orientation="6"' in data
    out = decode_image(data)
    assert out.shape == quadrants.shape and np.abs(out.astype(int) - quadrants).mean() < 8


def test_looping_grid_references_end(grid_heic: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid made of itself: followed to a bounded depth and a bounded number of references."""
    from detector import _heif

    data = bytearray(grid_heic)
    dimg = data.index(b"dimg")
    assert struct.unpack_from(">HH4H", data, dimg + 4) == (1, 4, 2, 3, 4, 5)
    struct.pack_into(">4H", data, dimg + 8, 1, 1, 1, 1)
    t = time.perf_counter()
    assert status_of(bytes(data)) == "unreadable"  # libheif refuses the loop
    assert time.perf_counter() - t < 2.0
    monkeypatch.setattr(_heif, "MAX_VISITS", 100)
    with pytest.raises(MediaError, match="over 100 derived picture references"):
        decode_image(bytes(data))


# -- hand-built HEIF structures (a second audit's reproducers) -------------------------------------
def _box(kind: bytes, payload: bytes, version: int | None = None) -> bytes:
    if version is not None:
        payload = struct.pack(">I", version << 24) + payload
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _heif(items: list[tuple[int, bytes, int, list[tuple[int, int]]]], *, primary: int = 1,
          sizes: dict[int, tuple[int, int]] | None = None, dimg: dict[int, list[int]] | None = None,
          idat: bytes = b"", mdat: bytes = b"") -> bytes:
    """A HEIF file: ``items`` are (id, type, construction method, [(offset, length)]); offsets of
    method 0 count from the start of ``mdat``'s payload, of method 1 from ``idat``'s."""
    sizes = sizes or {}

    def meta(mdat_at: int) -> bytes:
        iloc = struct.pack(">BBH", 0x44, 0x40, len(items))  # offset/length 4 bytes, base 4 bytes
        for item_id, _, method, extents in items:
            base = mdat_at if method == 0 else 0
            iloc += struct.pack(">HHHIH", item_id, method, 0, base, len(extents))
            iloc += b"".join(struct.pack(">II", o, n) for o, n in extents)
        infe = b"".join(_box(b"infe", struct.pack(">HH4s", i, 0, t) + b"\0", 2) for i, t, _, _ in items)
        ipco = b"".join(_box(b"ispe", struct.pack(">II", *sizes[i]), 0) for i, *_ in items if i in sizes)
        assoc = [(i, k + 1) for k, i in enumerate(i for i, *_ in items if i in sizes)]
        ipma = struct.pack(">I", len(assoc)) + b"".join(struct.pack(">HBB", i, 1, 0x80 | k) for i, k in assoc)
        refs = b"".join(_box(b"dimg", struct.pack(">HH", s, len(r)) + struct.pack(f">{len(r)}H", *r))
                        for s, r in (dimg or {}).items())
        return _box(b"meta", b"".join([
            _box(b"hdlr", bytes(4) + b"pict" + bytes(13), 0), _box(b"pitm", struct.pack(">H", primary), 0),
            _box(b"iloc", iloc, 1), _box(b"iinf", struct.pack(">H", len(items)) + infe, 0),
            _box(b"iprp", _box(b"ipco", ipco) + _box(b"ipma", ipma, 0)),
            *([_box(b"iref", refs, 0)] if refs else []), *([_box(b"idat", idat)] if idat else []),
        ]), 0)

    head = _box(b"ftyp", b"avif" + bytes(4) + b"avifmif1")
    at = len(head) + len(meta(0)) + 8
    return head + meta(at) + _box(b"mdat", mdat)


def _bomb_header(prefix: bytes = b"") -> bytes:
    return prefix + _sequence_header(16384, 16384, reduced=True, timing=False, points=1)[2:]


@pytest.mark.parametrize("where", ["mdat", "idat", "split", "after delimiters", "alpha"])
def test_av1_coded_size_found_wherever_the_data_lies(where: str) -> None:
    """A picture declaring 64 x 64 whose AV1 sequence header says 16384 x 16384."""
    from detector._heif import HeifStructureError, check_heif

    bomb = _bomb_header(bytes([0b00010010, 0]) * 8 if where == "after delimiters" else b"")
    small = _sequence_header(64, 64, reduced=True, timing=False, points=1)[2:]
    size = {1: (64, 64), 2: (64, 64)}
    if where == "idat":
        data = _heif([(1, b"av01", 1, [(0, len(bomb))])], sizes=size, idat=bomb)
    elif where == "split":
        data = _heif([(1, b"av01", 0, [(0, 1), (1, len(bomb) - 1)])], sizes=size, mdat=bomb)
    elif where == "alpha":  # the primary is small; its alpha picture (another item) is not
        data = _heif([(1, b"av01", 0, [(0, len(small))]), (2, b"av01", 0, [(len(small), len(bomb))])],
                     sizes=size, mdat=small + bomb)
    else:
        data = _heif([(1, b"av01", 0, [(0, len(bomb))])], sizes=size, mdat=bomb)
    with pytest.raises(HeifStructureError, match="AV1 coded frame of 16384x16384") as info:
        check_heif(data, 50_000_000, 20_000)
    assert info.value.status == Status.too_large
    fine = _heif([(1, b"av01", 0, [(0, len(small))])], sizes=size, mdat=small)
    check_heif(fine, 50_000_000, 20_000)
    padded = _bomb_header(bytes([0b01111010, 0x80, 0x80, 0x04]) + bytes(65536))  # 64 KB of padding first
    with pytest.raises(HeifStructureError, match="no AV1 sequence header"):
        check_heif(_heif([(1, b"av01", 0, [(0, len(padded))])], sizes=size, mdat=padded), 50_000_000, 20_000)


def test_huge_counts_in_small_boxes_end_fast() -> None:
    """Counts that promise more entries than their box holds stop the parse at once; zero-size
    iloc fields do not make a small file list billions of extents."""
    from detector import _heif

    t = time.perf_counter()
    zero_iloc = struct.pack(">BBH", 0, 0, 1000) + struct.pack(">HHH", 1, 0, 65535) * 1000  # 6 KB
    meta = _box(b"meta", _box(b"hdlr", bytes(4) + b"pict" + bytes(13), 0)
                + _box(b"pitm", struct.pack(">H", 1), 0) + _box(b"iloc", zero_iloc, 0), 0)
    data = _box(b"ftyp", b"heic" + bytes(4) + b"mif1heic") + meta
    _heif.check_heif(data, 50_000_000, 20_000)
    assert status_of(data) == "unreadable"
    items: dict[int, _heif._Item] = {}
    iloc = struct.pack(">IBBH", 0, 0, 0, 3) + b"".join(struct.pack(">HHH", k, 0, 65535) for k in (1, 2, 3))
    _heif._parse_iloc(iloc, items)
    assert [len(items[k].extents) for k in (1, 2, 3)] == [1, 1, 1]  # not 65535 each
    with pytest.raises(IndexError):
        _heif._parse_iref(struct.pack(">I", 0) + _box(b"dimg", struct.pack(">HH", 1, 65535)), {})
    with pytest.raises(IndexError):
        _heif._parse_iprp(_box(b"ipma", struct.pack(">II", 0, 1_000_000), None), {})
    assert time.perf_counter() - t < 1.0
