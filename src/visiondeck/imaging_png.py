"""PNG bytes read without Pillow: the chunk walk behind the plain-PNG fast path, and the
taming of compressed metadata before Pillow sees a file.

Both need the same thing - PNG chunks walked in one linear pass over bytes nobody
trusts, never raising - and neither needs Pillow, so they live apart from the decoder
(imaging.py), which calls them. This module imports nothing of VisionDeck.

* PNG metadata: Pillow inflates compressed metadata chunks (zTXt, compressed iTXt,
  iCCP) while opening - up to 1 MB a chunk and 64 MB of text a file, so 30 KB of zTXt
  costs 30 MB and 0.1 s before a single pixel (1 ms once tamed). We never read image
  text, so before Pillow sees a PNG, every such chunk that would take the file's inflated
  metadata past `PNG_METADATA_BUDGET` (256 KiB) is dropped, uninflated (the check
  inflates at most the budget, once per file). Small ones - an XMP packet, ImageMagick's
  raw EXIF profile - stay, so the orientation they carry still applies. No Pillow global
  is changed for this.
* Plain PNGs - 8-bit grey or RGB, not interlaced, nothing but IHDR, IDAT and IEND chunks,
  every CRC right, no byte after IEND - skip `Image.open`: the chunks are walked here and
  the decoder hands the pixels straight to Pillow's zlib decoder (`Image.frombytes`): the
  small PNGs a served model mostly gets decode in ~60 % of the time (80 -> 47 us for the
  28x28 benchmark upload, the two paths timed in the same minute). Anything else, and
  anything that fails there, takes the full path, so every error, array and note is the
  full path's.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["PLAIN_PNG_MODES", "PNG_METADATA_BUDGET", "plain_png_layout", "plain_png_size",
           "tame_png"]

#: inflated bytes of compressed PNG metadata a file may hand Pillow: XMP packets are a few
#: KB, a hex-encoded 64 KB EXIF profile 130 KB; beyond that it is a bomb, not metadata
PNG_METADATA_BUDGET = 256 * 1024

_INFLATED_PNG_CHUNKS = (b"zTXt", b"iTXt", b"iCCP")


def _compressed_payload(kind: bytes, body: bytes) -> bytes | None:
    """The zlib stream Pillow would inflate from this chunk's data, parsed as Pillow
    parses it; None where Pillow inflates nothing (iTXt stored as plain text...)."""
    keyword_end = body.find(b"\0")
    if kind == b"iCCP":  # Pillow reads the method byte after the NUL, or at 0 if none
        return body[keyword_end + 2:]
    if keyword_end < 0:
        return None
    if kind == b"zTXt":  # keyword, NUL, method byte, stream
        return body[keyword_end + 2:]
    rest = body[keyword_end + 1:]
    if len(rest) < 2 or rest[0] == 0 or rest[1] != 0:  # flag 0: stored as plain text
        return None
    parts = rest[2:].split(b"\0", 2)  # language tag, translated keyword, text
    return parts[2] if len(parts) == 3 else None


def _inflate_within(stream: bytes, budget: int) -> int:
    """The budget left after inflating `stream`, or -1 when it needs more than `budget`
    bytes or is broken; inflates at most `budget + 1` bytes."""
    if budget <= 0:  # (max_length=0 would mean "no limit")
        return -1
    inflater = zlib.decompressobj()
    try:
        spent = len(inflater.decompress(stream, budget + 1))
    except zlib.error:
        return -1
    return budget - spent if spent <= budget and not inflater.unconsumed_tail else -1


def tame_png(data: bytes) -> bytes:
    """`data` without the compressed metadata chunks that would take the file's inflated
    metadata past `PNG_METADATA_BUDGET` (module docstring: "PNG metadata").

    Inflates at most the budget (+1 byte) in all, whatever the file holds: a chunk found
    too big, or whose stream breaks (Pillow ignores those: its text is lost either way),
    is dropped and spends what was left, so later ones are dropped uninflated. Kept
    chunks are copied verbatim (CRCs stay right); anything that does not parse as chunks
    is left to Pillow. A file with nothing to drop is returned as it is.
    """
    if not any(kind in data for kind in _INFLATED_PNG_CHUNKS):
        return data
    budget, pos, end, kept, dropped = PNG_METADATA_BUDGET, 8, len(data), [], False
    start = 0  # of the bytes not yet copied to `kept`
    while pos + 12 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        stop = pos + 12 + length
        if stop > end or kind == b"IEND":
            break
        if kind in _INFLATED_PNG_CHUNKS:
            stream = _compressed_payload(kind, data[pos + 8:stop - 4])
            if stream is not None:
                left = _inflate_within(stream, budget)
                budget = max(left, 0)
                if left < 0:
                    kept.append(data[start:pos])
                    start, dropped = stop, True
        pos = stop
    if not dropped:
        return data
    kept.append(data[start:])
    return b"".join(kept)


#: IHDR colour type -> Pillow mode (and raw mode) of the plain PNGs, at bit depth 8
PLAIN_PNG_MODES = {0: "L", 2: "RGB"}


def plain_png_layout(data: bytes) -> tuple[tuple[int, ...], list[tuple[int, int]]] | None:
    """(IHDR fields, IDAT spans) of a plain PNG (see the module docstring), or None.

    Walks the chunks once and checks every CRC; never raises for any bytes."""
    view, end = memoryview(data), len(data)
    if end < 57 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None  # signature + IHDR + an IDAT + IEND at least
    pos, idat, ihdr = 8, [], None
    while True:
        if pos + 12 > end:
            return None
        length, kind = struct.unpack_from(">I4s", data, pos)
        stop = pos + 12 + length
        if stop > end:
            return None
        (crc,) = struct.unpack_from(">I", data, stop - 4)
        if zlib.crc32(view[pos + 4:stop - 4]) != crc:
            return None
        if kind == b"IHDR":
            if pos != 8 or length != 13:
                return None
            ihdr = struct.unpack_from(">IIBBBBB", data, 16)
        elif kind == b"IDAT":
            if idat and idat[-1][1] != pos:  # IDAT chunks must follow one another
                return None
            idat.append((pos + 8, stop))
        elif kind == b"IEND":
            if length or stop != end:
                return None
            break
        else:  # tRNS, PLTE, eXIf, acTL, text, colour chunks...: the full path knows them
            return None
        pos = stop
    _width, _height, depth, colour, compression, filtering, interlace = ihdr
    if (depth != 8 or colour not in PLAIN_PNG_MODES or compression or filtering or interlace
            or not idat):
        return None
    return ihdr, idat


def plain_png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a plain PNG - the fast path's kind: 8-bit grey or RGB, not
    interlaced, nothing but IHDR, IDAT and IEND, every CRC right - else None.

    Decoding one costs one zlib inflate of its IDAT bytes into width × height pixels and
    nothing else (no metadata to parse or inflate), which is what lets the server decode a
    small one on its event loop. Header only: the pixels are not inflated here.
    """
    layout = plain_png_layout(data)
    return None if layout is None else (layout[0][0], layout[0][1])

