"""Small but well-formed starts of each file type (the function sniffs the first bytes),
padded to any size, and a multipart body builder that can stream."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
GIF = b"GIF89a\x10\x00\x10\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00"
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00\x00\x00\x08free"
MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  " + b"\x00\x00\x00\x08wide"
#: EBML header: version 1, read version 1, max id 4, max size 8, DocType "webm", v4, read v2
WEBM = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d4287810442858102")
MKV = bytes.fromhex("1a45dfa3a34286810142f7810142f2810442f381084282886d6174726f736b614287810442858102")
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
HTML = b"<!doctype html><html><script>alert(1)</script></html>"

BOUNDARY = "edgefnTestBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


_NOISE = os.urandom(1 << 20)


def sized(start: bytes, size: int) -> bytes:
    """`start` padded with random bytes to exactly `size` bytes (a random MiB, repeated: cheap
    enough to build on the event loop)."""
    pad = max(0, size - len(start))
    return (start + _NOISE * (pad >> 20) + _NOISE[: pad & ((1 << 20) - 1)])[:size]


def _field(name: str, value: str) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def _file_head(filename: str | None, ctype: str | None, name: str = "file") -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n"
    if ctype is not None:
        head += f"Content-Type: {ctype}\r\n"
    return (head + "\r\n").encode()


def form(
    data: bytes | None, *, bucket: str | None = "avatars", filename: str | None = "photo.png",
    ctype: str | None = "image/png", bucket_first: bool = True, extra: dict[str, str] | None = None,
) -> bytes:
    """A whole multipart body (fields `bucket` and `file`, plus `extra`)."""
    return b"".join(form_parts(data, bucket=bucket, filename=filename, ctype=ctype, bucket_first=bucket_first, extra=extra))


def form_parts(
    data: bytes | None, *, bucket: str | None = "avatars", filename: str | None = "photo.png",
    ctype: str | None = "image/png", bucket_first: bool = True, extra: dict[str, str] | None = None,
) -> list[bytes]:
    parts: list[bytes] = []
    fields = [_field(k, v) for k, v in (extra or {}).items()]
    if bucket is not None:
        fields.append(_field("bucket", bucket))
    file_parts = [_file_head(filename, ctype), data, b"\r\n"] if data is not None else []
    parts += fields + file_parts if bucket_first else file_parts + fields
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return parts


class Streamed:
    """A multipart body sent in `chunk`-byte pieces; `sent` says how much the app pulled."""

    def __init__(self, body: bytes, chunk: int = 16 * 1024) -> None:
        self.body = body
        self.chunk = chunk
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.body), self.chunk):
            piece = self.body[i : i + self.chunk]
            self.sent += len(piece)
            yield piece
