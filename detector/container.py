"""Where a media file's own data ends: bytes appended after it are reported, never analysed.

Decoders stop at the end of the image or of the container and ignore whatever follows it:
a phone's motion-photo video after a JPEG, a second file concatenated to the first, a
hidden archive. The SHA-256 covers those bytes, the verdict does not, so an investigator
must be told. :func:`trailing_bytes` walks the container's structure (JPEG markers, PNG
chunks, GIF blocks, RIFF chunks of WebP and AVI, top-level ISO BMFF boxes of MP4/MOV, HEIC and
AVIF, top-level EBML elements of Matroska/WebM) and returns how many bytes follow its end.
Formats it cannot walk (BMP, whose size field writers often leave at 0), Matroska/WebM whose
segment size is left unknown (live recordings, such as a browser's MediaRecorder writes) and
files that break off before their end (reported as cut elsewhere) give None.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import struct
from typing import BinaryIO

#: Most structures (segments, chunks, blocks, boxes) walked; a file with more is not checked.
MAX_STEPS = 1_000_000
#: What :func:`trailing_bytes` returns for a file with more than :data:`MAX_STEPS` structures:
#: not checked (a file padded with a million empty segments must not pass as checked).
UNCHECKED = -1
#: MP4/MOV top-level boxes. A box of another type that runs past the end of the file is not a
#: cut box but appended data whose first bytes happen to read as a size and four letters.
_MP4_TOP = frozenset({
    b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"meta", b"moof", b"mfra",
    b"sidx", b"ssix", b"styp", b"emsg", b"prft", b"pdin", b"pnot", b"PICT", b"udta", b"junk",
})


#: Kinds walked box by box (ISO BMFF top-level boxes; AVI RIFF chunks).
_BOX_WALKED = frozenset({"mp4", "avif", "heic", "avi"})


class _TooMany(Exception):
    """More than :data:`MAX_STEPS` structures."""

# A marker inside JPEG entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart
# marker RST0-7 or another fill 0xFF.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_FILL = re.compile(rb"\xff+")
_BOX_TYPE = re.compile(rb"[A-Za-z0-9 _\-\xa9]{4}")


def trailing_bytes(
    kind: str, data: bytes | None = None, path: str | os.PathLike[str] | None = None
) -> int | None:
    """Bytes after the end of the ``kind`` data (a :func:`detector.media.sniff` name) in
    ``data`` or in the file at ``path``: 0 when the data fill it exactly, None when unknown
    (format not walked, file cut short), :data:`UNCHECKED` when it has too many structures.

    A JPEG's end is that of its last image: multi-picture files (MPO, the gain map of an Ultra
    HDR or iPhone HDR photo) list their other images in an APP2 ``MPF`` index."""
    if not isinstance(kind, str) or not isinstance(data, (bytes, bytearray, memoryview, type(None))):
        return None
    try:
        if data is not None:
            return _walk(kind, bytes(data))
        if path is None:
            raise ValueError("give data or path")
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if kind in _BOX_WALKED:
                return _walk_file(kind, fh, size)
            if size == 0:
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:  # not read whole
                return _walk(kind, mapped)
    except _TooMany:
        return UNCHECKED
    except (struct.error, IndexError, KeyError, ValueError, OSError):
        return None


def _walk(kind: str, buf: bytes | mmap.mmap) -> int | None:
    """``buf``: the whole file (indexing gives ints, slicing bytes)."""
    end = {
        "jpeg": _jpeg_end, "png": _png_end, "gif": _gif_end, "webp": _riff_end, "webm": _ebml_end,
        "mkv": _ebml_end,
    }.get(kind)
    if end is None:
        if kind in _BOX_WALKED:
            return _walk_file(kind, io.BytesIO(buf), len(buf))
        return None
    stop = end(buf)
    return None if stop is None or stop > len(buf) else len(buf) - stop


def _jpeg_end(data: bytes | mmap.mmap) -> int | None:
    if data[:2] != b"\xff\xd8":
        return None
    pos, declared = 2, 0
    for _ in range(MAX_STEPS):
        if pos + 2 > len(data) or data[pos] != 0xFF:
            return None
        pos = _JPEG_FILL.match(data, pos).end() - 1  # the last of any fill 0xFF bytes
        if pos + 1 >= len(data):
            return None
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            return max(pos + 2, declared)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return None
        if marker == 0xE2 and data[pos + 4 : pos + 8] == b"MPF\x00":
            declared = max(declared, _mpf_end(bytes(data[pos + 8 : pos + 2 + length]), pos + 8))
        pos += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                return None
            pos = found.start()
    raise _TooMany


def _mpf_end(tiff: bytes, base: int) -> int:
    """End of the last image an APP2 ``MPF`` index (CIPA DC-007) lists: its MP entries give each
    image's size and offset from ``base`` (where the index's TIFF header starts); 0 if none."""
    order = {b"II": "<", b"MM": ">"}[tiff[:2]]
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for i in range(min(count, 64)):
        tag, _, size, at = struct.unpack(order + "HHII", tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
        if tag == 0xB002:  # MP entries, 16 bytes each: attributes, size, offset, 2 dependants
            entries = tiff[at : at + size]
            fields = struct.iter_unpack(order + "IIIHH", entries[: len(entries) // 16 * 16])
            return max((base + off + n for _, n, off, _, _ in fields if off), default=0)
    return 0


def _png_end(buf: bytes | mmap.mmap) -> int | None:
    if bytes(buf[:8]) != b"\x89PNG\r\n\x1a\n":
        return None
    pos = 8
    for _ in range(MAX_STEPS):
        length, ctype = struct.unpack(">I4s", buf[pos : pos + 8])
        pos += 12 + length
        if ctype == b"IEND":
            return pos
    raise _TooMany


def _gif_end(buf: bytes | mmap.mmap) -> int | None:
    if bytes(buf[:3]) != b"GIF":
        return None
    flags = buf[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    steps = 0  # blocks and sub-blocks together
    while steps < MAX_STEPS:
        steps += 1
        block = buf[pos]
        if block == 0x3B:  # trailer
            return pos + 1
        if block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif block == 0x2C:  # image: descriptor, local colour table, LZW code size, sub-blocks
            local = buf[pos + 9]
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
        else:
            return None
        while True:  # sub-blocks up to the 0 terminator
            steps += 1
            if steps > MAX_STEPS:
                raise _TooMany
            size = buf[pos]
            pos += 1 + size
            if size == 0:
                break
    raise _TooMany


_EBML_HEADER = b"\x1a\x45\xdf\xa3"
_EBML_SEGMENT = b"\x18\x53\x80\x67"
_EBML_VOID = 0xEC


def _ebml_size(buf: bytes | mmap.mmap, pos: int) -> tuple[int | None, int]:
    """An EBML element size (a variable-length integer) at ``pos``: (value, bytes taken); the
    value is None when the size is left unknown (all value bits set). IndexError past the end."""
    first = buf[pos]
    if first == 0:
        raise ValueError("not an EBML size")
    length = 9 - first.bit_length()
    raw = bytes(buf[pos : pos + length])
    if len(raw) < length:
        raise IndexError("cut EBML size")
    value = int.from_bytes(raw, "big") & ((1 << (7 * length)) - 1)
    return (None if value == (1 << (7 * length)) - 1 else value), length


def _ebml_end(buf: bytes | mmap.mmap) -> int | None:
    """Matroska/WebM: the EBML header, then Segments (Void elements allowed between them). A
    second EBML header starts another file appended to this one; anything else after a whole
    Segment is appended; a Segment of unknown size (live recordings) ends nowhere: None."""
    if bytes(buf[:4]) != _EBML_HEADER:
        return None
    pos, segments = 0, 0
    for _ in range(MAX_STEPS):
        if pos == len(buf):
            return pos if segments else None  # no Segment at all: a cut file
        ident = bytes(buf[pos : pos + 4])
        if len(ident) < 4 and _EBML_SEGMENT.startswith(ident):
            return None  # cut inside a Segment's ID
        if pos == 0 or ident == _EBML_SEGMENT:
            head = 4
            segments += pos > 0
        elif buf[pos] == _EBML_VOID:
            head = 1
        else:
            return pos  # another file's EBML header, or bytes that are no element at all
        try:
            size, taken = _ebml_size(buf, pos + head)
        except (ValueError, IndexError):
            return None if pos == 0 or ident == _EBML_SEGMENT else pos
        if size is None:
            return None
        end = pos + head + taken + size
        if end > len(buf):
            return None  # a cut file
        pos = end
    raise _TooMany


def _riff_end(buf: bytes | mmap.mmap) -> int | None:
    if bytes(buf[:4]) != b"RIFF":
        return None
    (size,) = struct.unpack("<I", buf[4:8])
    return 8 + size + (size & 1)


def _walk_file(kind: str, fh: BinaryIO, size: int) -> int | None:
    """MP4/MOV, HEIC, AVIF: top-level boxes; AVI: its RIFF chunks (``RIFF AVI `` then ``RIFF AVIX``)."""
    pos = 0
    for _ in range(MAX_STEPS):
        if pos == size:
            return 0
        fh.seek(pos)
        head = fh.read(16)
        if len(head) < 8:
            return None  # under 8 bytes: a cut header as likely as appended bytes
        known = True
        if kind == "avi":
            # after the first chunk only AVIX extensions belong to the file (a second AVI is appended)
            if head[:4] != b"RIFF" or (pos and head[8:12] != b"AVIX"):
                return size - pos if pos else None
            (length,) = struct.unpack("<I", head[4:8])
            step = 8 + length + (length & 1)
        else:
            (length,) = struct.unpack(">I", head[:4])
            # a second ftyp starts another file appended to this one
            if not _BOX_TYPE.fullmatch(head[4:8]) or (pos and head[4:8] == b"ftyp"):
                return size - pos if pos else None
            known = head[4:8] in _MP4_TOP
            if length == 0:  # the box runs to the end of the file
                return 0 if known or not pos else size - pos
            if length == 1:
                if len(head) < 16:
                    return None
                (length,) = struct.unpack(">Q", head[8:16])
            if length < 8:
                return size - pos if pos else None
            step = length
        if pos + step > size:
            # a known box cut short is a cut file; an unknown "box" running past the end is not
            # a box at all (e.g. text or base64 appended, read as a size and four letters)
            return None if known or not pos else size - pos
        pos += step
    raise _TooMany
