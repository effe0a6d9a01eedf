"""What a file is, from its first bytes (never from what the client says).

    sniff(b"\\x89PNG\\r\\n\\x1a\\n...")   -> "image/png"
    sniff(b"<html>...")               -> None

Only the seven types the function accepts are recognised; anything else is None. The
signatures are short and fixed, so no library is needed:

- JPEG  FF D8 FF
- PNG   89 50 4E 47 0D 0A 1A 0A
- GIF   "GIF87a" / "GIF89a"
- WebP  "RIFF" <size:4> "WEBP"
- MP4 / QuickTime: an ISO BMFF `ftyp` box first; its major brand says which
  ("qt  " is QuickTime; isom, iso2.., mp41, mp42, avc1 ... are MP4). HEIF/AVIF images and
  3GP use the same box with other brands and are refused.
- WebM  EBML magic 1A 45 DF A3, then the EBML header's DocType element must be "webm"
  (a Matroska file has the same magic with DocType "matroska").
"""

from __future__ import annotations

#: bytes a caller should hand to `sniff` (an EBML header with padding fits well inside)
SNIFF_BYTES = 256

JPEG, PNG, GIF, WEBP = "image/jpeg", "image/png", "image/gif", "image/webp"
MP4, QUICKTIME, WEBM = "video/mp4", "video/quicktime", "video/webm"

_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9", b"mp41", b"mp42",
     b"avc1", b"dash", b"mmp4", b"M4V ", b"M4VH", b"M4VP", b"f4v ", b"MSNV", b"XAVC"}  # fmt: skip
)
_QT_BRAND = b"qt  "


def sniff(head: bytes) -> str | None:
    """The media type of a file starting with `head`, or None if it is none we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _iso_bmff(head)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return WEBM if _ebml_doctype(head) == b"webm" else None
    return None


def _iso_bmff(head: bytes) -> str | None:
    size = int.from_bytes(head[:4], "big")
    major = head[8:12]
    if major == _QT_BRAND:
        return QUICKTIME
    if major in _MP4_BRANDS:
        return MP4
    # an unknown major brand is MP4 only if the box declares an MP4 compatible brand and
    # nothing that makes it an image or a 3GP/QuickTime file
    if size < 16 or size > len(head):
        return None
    compatible = {head[i : i + 4] for i in range(16, size - 3, 4)}
    if compatible & {b"mif1", b"msf1", b"heic", b"heix", b"avif", b"3gp4", b"3gp5", b"3gp6", b"3g2a", _QT_BRAND}:
        return None
    if compatible & {b"isom", b"mp41", b"mp42"}:
        return MP4
    return None


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `pos`: (value, next position), or None."""
    if pos >= len(data):
        return None
    first = data[pos]
    length = 1
    mask = 0x80
    while length <= 8 and not first & mask:
        mask >>= 1
        length += 1
    if length > 8 or pos + length > len(data):
        return None
    value = first if keep_marker else first & (mask - 1)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    return value, pos + length


def _ebml_doctype(head: bytes) -> bytes | None:
    """The DocType (element 0x4282) inside the EBML header that starts `head`."""
    size = _vint(head, 4, keep_marker=False)
    if size is None:
        return None
    header_len, pos = size
    end = min(len(head), pos + header_len)
    while pos < end:
        element = _vint(head, pos, keep_marker=True)
        if element is None:
            return None
        element_id, pos = element
        length = _vint(head, pos, keep_marker=False)
        if length is None:
            return None
        n, pos = length
        if element_id == 0x4282:
            return head[pos : pos + n] if pos + n <= len(head) else None
        pos += n
    return None
