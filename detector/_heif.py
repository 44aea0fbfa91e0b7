"""HEIF/AVIF structure checks made before decoding: libheif and libavif trust what they read.

:func:`check_heif` reads the boxes that say where a picture's data lies and how big it is
(``meta``: ``pitm``, ``iinf``, ``iloc``, ``iprp``/``ipco``/``ipma``, ``iref``, ``idat``) and
refuses, before any pixel is decoded:

- data of an item that lies past the end of the file (a cut file: libheif fills the missing
  tiles of a grid photo with a flat colour and reports nothing) -> ``unreadable``;
- more than one top-level ``meta`` box (libheif shows the last one, so a picture appended
  to a file would replace the one a phone shows) -> ``unreadable``;
- a primary picture or a grid or overlay canvas over the caps, or tiles adding up to more
  than :data:`TILE_SLACK` times the pixel cap (a small file can declare a small ``ispe`` and a
  huge grid) -> ``too_large``;
- any AV1 picture of the file (alpha and gain maps included: libavif decodes them too) whose
  coded frame (the maximum size in the first sequence header of its data, wherever the data
  lies) is over the caps, whatever its ``ispe`` says (libavif decodes the coded frame, then
  scales it to ``ispe``: a 3 KB file declaring 64 x 64 took 593 MB) -> ``too_large``; data
  longer than :data:`AV1_HEADER_SEARCH` bytes with no sequence header in them -> ``unreadable``
  (shorter data without one is left to the decoder).

Every box is parsed within its own bounds, and references are followed to a bounded depth and
number (:data:`MAX_DEPTH`, :data:`MAX_VISITS`).

HEVC pictures need no such check: libheif compares the coded size with ``ispe`` before it
allocates. Anything this module cannot parse is left to the decoder, which reports it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from detector.schema import Status

#: Tiles of a grid, or layers of an overlay, may add up to this many times the pixel cap
#: (edge tiles reach past the canvas).
TILE_SLACK = 2
#: Derived pictures (grid of grids, overlay of grids...) followed at most this deep.
MAX_DEPTH = 4
#: At most this many picture references followed in all.
MAX_VISITS = 70_000


class HeifStructureError(Exception):
    """A HEIF/AVIF file refused from its structure; ``status`` says why."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Item:
    type: bytes = b""
    method: int = 0  # iloc construction method: 0 file offsets, 1 idat offsets
    base: int = 0
    extents: list[tuple[int, int]] = field(default_factory=list)  # (offset, length)
    size: tuple[int, int] | None = None  # ispe
    refs: list[int] = field(default_factory=list)  # dimg: the pictures it is derived from
    coded: tuple[int, int] | None = None  # an AV1 item's coded frame size


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in ``data[start:end]``; stops at a broken one."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield kind, pos + head, pos + size
        pos += size


def _uint(data: bytes, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise IndexError("field past the end of its box")
    return int.from_bytes(data[pos : pos + size], "big") if size else 0


def _parse_iloc(box: bytes, items: dict[int, _Item]) -> None:
    """``box``: the iloc payload (reads past it raise IndexError)."""
    version = box[0]
    offset_size, length_size = box[4] >> 4, box[4] & 15
    base_size, index_size = box[5] >> 4, (box[5] & 15) if version in (1, 2) else 0
    id_size = 2 if version < 2 else 4
    per_extent = index_size + offset_size + length_size
    count, pos = _uint(box, 6, id_size), 6 + id_size
    for _ in range(count):
        item = items.setdefault(_uint(box, pos, id_size), _Item())
        pos += id_size
        if version in (1, 2):
            item.method = _uint(box, pos, 2) & 15
            pos += 2
        pos += 2  # data_reference_index
        item.base, pos = _uint(box, pos, base_size), pos + base_size
        extents, pos = _uint(box, pos, 2), pos + 2
        if pos + extents * per_extent > len(box):
            raise IndexError("iloc extents run past the box")
        if per_extent == 0:  # offset and length 0 in every extent: one is enough
            extents = min(extents, 1)
        for _ in range(extents):
            pos += index_size
            offset, pos = _uint(box, pos, offset_size), pos + offset_size
            length, pos = _uint(box, pos, length_size), pos + length_size
            item.extents.append((offset, length))


def _parse_iinf(box: bytes, items: dict[int, _Item]) -> None:
    for kind, at, _ in _boxes(box, 4 + (2 if box[0] == 0 else 4), len(box)):
        if kind == b"infe" and box[at] >= 2:
            id_size = 2 if box[at] == 2 else 4
            item_id = _uint(box, at + 4, id_size)
            items.setdefault(item_id, _Item()).type = box[at + 4 + id_size + 2 : at + 4 + id_size + 6]


def _parse_iprp(box: bytes, items: dict[int, _Item]) -> None:
    sizes: list[tuple[int, int] | None] = []
    for kind, at, stop in _boxes(box, 0, len(box)):
        if kind == b"ipco":
            for prop, p_at, p_stop in _boxes(box, at, stop):
                ispe = prop == b"ispe" and p_stop - p_at >= 12
                sizes.append(struct.unpack_from(">II", box, p_at + 4) if ispe else None)
        elif kind == b"ipma":
            ipma = box[at:stop]
            version, wide = ipma[0], _uint(ipma, 1, 3) & 1
            id_size = 2 if version < 1 else 4
            count, p = _uint(ipma, 4, 4), 8
            if p + count * (id_size + 1) > len(ipma):
                raise IndexError("ipma entries run past the box")
            for _ in range(count):
                item = items.setdefault(_uint(ipma, p, id_size), _Item())
                n, p = ipma[p + id_size], p + id_size + 1
                for _ in range(n):
                    index = _uint(ipma, p, 2 if wide else 1) & (0x7FFF if wide else 0x7F)
                    p += 2 if wide else 1
                    if 0 < index <= len(sizes) and sizes[index - 1] is not None:
                        item.size = sizes[index - 1]


def _parse_iref(box: bytes, items: dict[int, _Item]) -> None:
    id_size = 2 if box[0] == 0 else 4
    for kind, at, stop in _boxes(box, 4, len(box)):
        if kind != b"dimg":
            continue
        source = items.setdefault(_uint(box, at, id_size), _Item())
        count, base = _uint(box, at + id_size, 2), at + id_size + 2
        if base + count * id_size > stop:
            raise IndexError("dimg references run past the box")
        source.refs += [_uint(box, base + k * id_size, id_size) for k in range(count)]


def _item_data(data: bytes, item: _Item, idat: tuple[int, int] | None, limit: int) -> tuple[bytes, int]:
    """The first ``limit`` bytes of an item's data (its extents joined, in the file or in idat),
    and its whole length."""
    if item.method == 1 and idat is not None:
        start, stop = idat
    elif item.method == 0:
        start, stop = 0, len(data)
    else:
        return b"", 0
    parts, total = [], 0
    for offset, length in item.extents:
        begin = start + item.base + offset
        end = stop if length == 0 else min(stop, begin + length)
        if total < limit:
            parts.append(data[begin : min(end, begin + limit - total)])
        total += max(0, end - begin)
    return b"".join(parts), total


def _canvas(description: bytes, kind: bytes) -> tuple[int, int] | None:
    """Output size of a ``grid`` (ISO/IEC 23008-12 ImageGrid) or ``iovl`` (ImageOverlay)."""
    if len(description) < 2:
        return None
    wide = description[1] & 1
    at = 4 if kind == b"grid" else 2 + 8  # overlay: version, flags, then 4 16-bit fill values
    n = 4 if wide else 2
    if len(description) < at + 2 * n:
        return None
    return _uint(description, at, n), _uint(description, at + n, n)


class _Bits:
    """Big-endian bit reader (AV1 syntax elements)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                raise ValueError("uvlc too long")
        return (1 << zeros) - 1 + self.read(zeros)


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("leb128 too long")


def av1_max_frame_size(stream: bytes) -> tuple[int, int] | None:
    """``(max_frame_width, max_frame_height)`` from the first Sequence Header OBU of an AV1
    bitstream (AV1 spec 5.5), or None if frame data comes first or ``stream`` ends before one."""
    pos = 0
    while pos < len(stream):
        header = stream[pos]
        obu_type, extension, has_size = (header >> 3) & 15, (header >> 2) & 1, (header >> 1) & 1
        pos += 1 + extension
        if has_size:
            size, pos = _leb128(stream, pos)
        else:
            size = len(stream) - pos
        if obu_type in (3, 4, 6):  # frame data before any sequence header: the decoder refuses it
            return None
        if obu_type != 1:  # a temporal delimiter, metadata, padding: skip it
            pos += size
            continue
        bits = _Bits(stream[pos : pos + size])
        bits.read(3)  # seq_profile
        bits.read(1)  # still_picture
        if bits.read(1):  # reduced_still_picture_header
            bits.read(5)
        else:
            decoder_model = False
            buffer_delay_bits = 0
            if bits.read(1):  # timing_info_present_flag
                bits.read(32), bits.read(32)
                if bits.read(1):  # equal_picture_interval
                    bits.uvlc()
                decoder_model = bool(bits.read(1))
                if decoder_model:
                    buffer_delay_bits = bits.read(5) + 1
                    bits.read(32), bits.read(5), bits.read(5)
            display_delay = bits.read(1)
            for _ in range(bits.read(5) + 1):  # operating points
                bits.read(12)
                if bits.read(5) > 7:
                    bits.read(1)  # seq_tier
                if decoder_model and bits.read(1):
                    bits.read(buffer_delay_bits), bits.read(buffer_delay_bits), bits.read(1)
                if display_delay and bits.read(1):
                    bits.read(4)
        width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
        return bits.read(width_bits) + 1, bits.read(height_bits) + 1
    return None


_PARSERS = {b"iloc": _parse_iloc, b"iinf": _parse_iinf, b"iprp": _parse_iprp, b"iref": _parse_iref}


def check_heif(data: bytes, max_pixels: int, max_side: int) -> None:
    """Refuse a HEIF/AVIF file from its structure (module docstring); raise
    :class:`HeifStructureError`. Structures it cannot parse are left to the decoder."""
    metas = [(at, stop) for kind, at, stop in _boxes(data, 0, len(data)) if kind == b"meta"]
    if len(metas) > 1:
        raise HeifStructureError(
            Status.unreadable,
            f"{len(metas)} top-level meta boxes: readers differ on which picture they show (another "
            "file appended?)",
        )
    if not metas:
        return
    items: dict[int, _Item] = {}
    primary, idat = None, None
    at, stop = metas[0]
    try:
        for kind, b_at, b_stop in _boxes(data, at + 4, stop):  # meta is a full box
            if kind == b"pitm":
                primary = _uint(data, b_at + 4, 2 if data[b_at] == 0 else 4)
            elif kind in _PARSERS:
                _PARSERS[kind](data[b_at:b_stop], items)
            elif kind == b"idat":
                idat = (b_at, b_stop)
    except (IndexError, struct.error):
        return  # left to the decoder
    for item_id, item in items.items():
        room = len(data) if item.method == 0 else (idat[1] - idat[0] if idat else 0)
        for offset, length in item.extents if item.method in (0, 1) else ():
            if item.base + offset + length > room:
                where = "the file" if item.method == 0 else "its idat box"
                raise HeifStructureError(
                    Status.unreadable,
                    f"the data of picture item {item_id} runs past the end of {where} (the file is cut "
                    "or damaged)",
                )
    for item in items.values():  # every AV1 picture: libavif also decodes alpha and gain maps
        if item.type == b"av01":
            item.coded = _av1_coded_size(data, item, idat, max_pixels, max_side)
    if primary is None or primary not in items:
        return
    _check_size(data, items, primary, idat, max_pixels, max_side, 0, [MAX_VISITS])


#: Bytes of an AV1 item searched for its sequence header.
AV1_HEADER_SEARCH = 65536


def _av1_coded_size(data: bytes, item: _Item, idat: tuple[int, int] | None, max_pixels: int,
                    max_side: int) -> tuple[int, int] | None:
    head, total = _item_data(data, item, idat, AV1_HEADER_SEARCH)
    try:
        coded = av1_max_frame_size(head)
    except (IndexError, ValueError):
        coded = None
    if coded is None and total > AV1_HEADER_SEARCH:
        raise HeifStructureError(
            Status.unreadable, f"no AV1 sequence header in the first {AV1_HEADER_SEARCH:,} bytes of a picture"
        )
    if coded is not None and (coded[0] * coded[1] > max_pixels or max(coded) > max_side):
        raise _too_large("an AV1 coded frame", *coded, max_pixels, max_side)
    return coded


def _too_large(what: str, width: int, height: int, max_pixels: int, max_side: int) -> HeifStructureError:
    return HeifStructureError(
        Status.too_large,
        f"{what} of {width}x{height} pixels exceeds the limit ({max_pixels:,} pixels, {max_side} per "
        "side); refused before decoding",
    )


def _check_size(data: bytes, items: dict[int, _Item], item_id: int, idat: tuple[int, int] | None,
                max_pixels: int, max_side: int, depth: int, budget: list[int]) -> int:
    """Check ``item_id`` and what it is derived from against the caps; its pixels in tiles.
    ``budget``: pictures left to visit (references may repeat or loop)."""
    budget[0] -= 1  # every reference counts, followed or not
    if budget[0] < 0:
        raise HeifStructureError(
            Status.unreadable, f"over {MAX_VISITS:,} derived picture references (looping references?)"
        )
    item = items.get(item_id)
    if item is None or depth > MAX_DEPTH:
        return 0
    if item.size is not None:
        width, height = item.size
        if width * height > max_pixels or max(width, height) > max_side:
            raise _too_large("the picture" if depth == 0 else "a tile", width, height, max_pixels, max_side)
    if item.type in (b"grid", b"iovl"):
        canvas = _canvas(_item_data(data, item, idat, 64)[0], item.type)
        if canvas is not None and (canvas[0] * canvas[1] > max_pixels or max(canvas) > max_side):
            name = "a grid" if item.type == b"grid" else "an overlay"
            raise _too_large(f"{name} canvas", *canvas, max_pixels, max_side)
    if not item.refs:
        pixels = item.size[0] * item.size[1] if item.size else 0
        return max(pixels, item.coded[0] * item.coded[1]) if item.coded else pixels
    total = 0
    for ref in item.refs:
        total += _check_size(data, items, ref, idat, max_pixels, max_side, depth + 1, budget)
        if total > TILE_SLACK * max_pixels:
            raise HeifStructureError(
                Status.too_large,
                f"the tiles of this picture add up to over {total:,} pixels, more than {TILE_SLACK}x the "
                f"limit of {max_pixels:,}; refused before decoding",
            )
    return total
