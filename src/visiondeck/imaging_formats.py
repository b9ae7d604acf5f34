"""The format allow-list: which image formats VisionDeck reads, told by their magic bytes.

One home for it (the decoder, the folder scan, the upload archive and the benchmarks all
ask here), and kept apart from the decoder (imaging.py) because it is a table, not a
parser: JPEG (MPO too), PNG (APNG), GIF, BMP, TIFF (BigTIFF) and WebP are read, never by
file name. Formats we know but refuse - EPS/PostScript, PDF, SVG/XML, ICO/CUR, PSD,
HEIC/AVIF, JPEG 2000, JPEG XL, PNM, QOI, DDS, ICNS, XCF, OpenEXR, Radiance HDR, WMF,
DICOM - are named by `refused_format`, so an error can say what a file is.
"""

from __future__ import annotations

import re

__all__ = ["ALLOWED_FORMATS", "refused_format", "sniff_format"]

ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"})

_ALLOWED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
)  # fmt: skip
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}  # the DIB headers Pillow can read
_REFUSED = {
    b"%!PS": "EPS/PostScript", b"\xc5\xd0\xd3\xc6": "EPS", b"%PDF": "PDF", b"8BPS": "PSD",
    b"\x00\x00\x01\x00": "ICO", b"\x00\x00\x02\x00": "CUR", b"\xff\x4f\xff\x51": "JPEG 2000",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n": "JPEG 2000", b"\xff\x0a": "JPEG XL",
    b"\x00\x00\x00\x0cJXL \r\n\x87\n": "JPEG XL", b"qoif": "QOI", b"DDS ": "DDS",
    b"icns": "ICNS", b"gimp xcf": "XCF", b"v/1\x01": "OpenEXR", b"#?RADIANCE": "Radiance HDR",
    b"#?RGBE": "Radiance HDR", b"\xd7\xcd\xc6\x9a": "WMF",
}  # fmt: skip
_FTYP_BRANDS = {b"avif": "AVIF", b"avis": "AVIF"} | dict.fromkeys(
    (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"), "HEIC/HEIF"
)
_PNM = re.compile(rb"P[1-7][ \t\r\n]")


def sniff_format(head: bytes) -> str | None:
    """Format name from the first bytes (magic numbers), None when no allowed format matches.

    32 bytes suffice. BMP's two-letter magic is also checked against its DIB header size so
    that text which happens to start with "BM" is not taken for a bitmap.
    """
    head = bytes(head[:32])
    for magic, fmt in _ALLOWED_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    dib_header_size = int.from_bytes(head[14:18], "little")
    if head[:2] == b"BM" and (len(head) < 18 or dib_header_size in _BMP_HEADER_SIZES):
        return "BMP"
    return None


def refused_format(head: bytes) -> str | None:
    """Name a format we recognise but refuse, so the message can say what the file is.

    `head`: the file's first 4 KiB (DICOM's magic sits at offset 128; an SVG's `<svg` may
    follow a long XML prologue)."""
    for magic, name in _REFUSED.items():
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    if _PNM.match(head):
        return "PNM"
    if head[128:132] == b"DICM":
        return "DICOM"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 text, e.g. an SVG from Windows tools
        head = head[2:].decode("utf-16-le" if head[0] == 0xFF else "utf-16-be", "ignore")
        head = head.encode("utf-8", "ignore")
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!")) and b"<svg" in text):
        return "SVG"
    return "XML" if text.startswith(b"<?xml") else None

