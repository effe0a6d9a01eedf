"""A streaming reader for the inline upload's multipart body: one `file` part and a
`bucket` field, read chunk by chunk as the client sends them.

Other text fields (a form's `caption`, `alt`, ...) are accepted within bounds and ignored:
at most `MAX_EXTRA_FIELDS`, each at most `MAX_EXTRA_FIELD_BYTES`; their names come back in
`metadata.ignored_fields`. A second file, or a field that would decide what the server
decides (`user_id`, `key` ...), is refused: `UNEXPECTED_FIELD`.

The whole body is never held: the file part goes to a spooled temporary file (in memory up
to a small threshold, then on disk), the reader refuses with 413 the moment the file passes
its cap (the rest is never read), and as soon as the first bytes are in, the type is sniffed
and checked, so a wrong file is refused with 415 before the rest of it is read.

    async with read_upload(request, settings) as upload:
        upload.bucket, upload.size, upload.file, upload.content_type

`python_multipart` (the streaming parser Starlette itself uses) is imported on first use.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from starlette.requests import Request

from functions.upload_media import rules
from functions.upload_media.settings import UploadMediaSettings
from functions.upload_media.sniff import SNIFF_BYTES, sniff
from shared import errors

#: room for the multipart framing and the `bucket` field around the file
FRAMING_ALLOWANCE = 64 * 1024
MAX_FIELD_BYTES = 256
#: text fields besides `file` and `bucket` that are read and ignored
MAX_EXTRA_FIELDS = 8
MAX_EXTRA_FIELD_BYTES = 1024
MAX_PARTS = 2 + MAX_EXTRA_FIELDS
#: fields the server decides: sending one is a mistake worth a 400, not something to ignore
SERVER_DECIDES = frozenset({"user_id", "owner_id", "owner", "key", "object_key", "content_type", "size", "id"})


@dataclass
class Upload:
    bucket: str | None = None
    filename: str | None = None
    declared_type: str | None = None
    #: the sniffed type, once the first bytes are in (checked against the bucket if known)
    content_type: str | None = None
    size: int = 0
    file: IO[bytes] | None = None
    head: bytearray = field(default_factory=bytearray)
    #: bytes of the request body read so far (tests and the benchmark look)
    body_bytes: int = 0
    #: names of the extra text fields that were read and ignored
    ignored_fields: list[str] = field(default_factory=list)


def _disposition(value: bytes) -> tuple[str | None, str | None]:
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(value)
    if kind.lower() != b"form-data":
        raise errors.BadRequest("each part needs Content-Disposition: form-data", code="MALFORMED_MULTIPART")
    name = params.get(b"name")
    filename = params.get(b"filename")
    return (
        name.decode("utf-8", "replace") if name is not None else None,
        filename.decode("utf-8", "replace") if filename is not None else None,
    )


def boundary_of(content_type: str | None) -> bytes:
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind.lower() != b"multipart/form-data":
        raise errors.UnsupportedMediaType(
            "send the file as multipart/form-data (fields `file` and `bucket`)", code="UNSUPPORTED_CONTENT_TYPE"
        )
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise errors.BadRequest("the multipart body has no usable boundary", code="MALFORMED_MULTIPART")
    return boundary


class _Reader:
    """Collects the parser's callbacks for one chunk, then acts on them in order."""

    def __init__(self, s: UploadMediaSettings) -> None:
        self.s = s
        self.upload = Upload()
        #: what the parser saw in the current chunk: (kind, data or the part's headers)
        self.events: list[tuple[str, Any]] = []
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.parts = 0
        self.current: str | None = None  # "file", "bucket", "extra", or None between parts
        self.field_value = bytearray()
        self.extra_bytes = 0
        self.ended = False
        self.head_checked = False

    # -- parser callbacks (synchronous, no I/O) ------------------------------------------

    def callbacks(self) -> dict[str, Any]:
        ev = self.events

        def on_part_begin() -> None:
            self.headers = {}
            ev.append(("part_begin", b""))

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self.header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self.header_value += data[start:end]

        def on_header_end() -> None:
            self.headers[bytes(self.header_field).lower()] = bytes(self.header_value)
            self.header_field.clear()
            self.header_value.clear()

        def on_headers_finished() -> None:
            ev.append(("headers", self.headers))

        def on_part_data(data: bytes, start: int, end: int) -> None:
            ev.append(("data", data[start:end]))

        def on_part_end() -> None:
            ev.append(("part_end", b""))

        def on_end() -> None:
            ev.append(("end", b""))

        return {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
        }  # fmt: skip

    # -- acting on them ------------------------------------------------------------------

    def stream_cap(self) -> int:
        """What the file may grow to: the inline limit, or the bucket's cap if smaller."""
        cap = self.s.upload_inline_max_bytes
        if self.upload.bucket is not None:
            cap = min(cap, rules.max_bytes(self.upload.bucket, self.s))
        return cap

    def too_large(self) -> errors.PayloadTooLarge:
        u = self.upload
        if u.bucket is not None and rules.max_bytes(u.bucket, self.s) <= self.s.upload_inline_max_bytes:
            return rules.too_large(u.bucket, rules.max_bytes(u.bucket, self.s))
        return inline_too_large(self.s)

    def drain(self) -> None:
        events, self.events[:] = list(self.events), []
        for kind, data in events:
            if kind == "part_begin":
                self.parts += 1
                if self.parts > MAX_PARTS:
                    raise errors.ValidationFailed(
                        f"too many parts: `file`, `bucket` and at most {MAX_EXTRA_FIELDS} other text fields",
                        code="UNEXPECTED_FIELD",
                    )
            elif kind == "headers":
                self._start_part(data)
            elif kind == "data":
                self._data(data)
            elif kind == "part_end":
                self._end_part()
            elif kind == "end":
                self.ended = True

    def _start_part(self, headers: dict[bytes, bytes]) -> None:
        name, filename = _disposition(headers.get(b"content-disposition", b""))
        u = self.upload
        if name == "file":
            if u.file is not None:
                raise errors.ValidationFailed("send one `file` part", code="UNEXPECTED_FIELD")
            u.filename = filename
            ctype = headers.get(b"content-type")
            u.declared_type = ctype.decode("latin-1") if ctype is not None else None
            u.file = tempfile.SpooledTemporaryFile(max_size=self.s.upload_spool_memory_bytes)
            self.current = "file"
        elif name == "bucket" and filename is None:
            if u.bucket is not None:
                raise errors.ValidationFailed("send one `bucket` field", code="UNEXPECTED_FIELD")
            self.current = "bucket"
            self.field_value.clear()
        elif name is None:
            raise errors.BadRequest("a part has no field name", code="MALFORMED_MULTIPART")
        elif filename is not None:
            raise errors.ValidationFailed(
                f"unexpected file {name[:40]!r}: send one file, in the `file` field", code="UNEXPECTED_FIELD"
            )
        elif name.lower() in SERVER_DECIDES:
            raise errors.ValidationFailed(
                f"the form field {name[:40]!r} is not accepted: the server decides it (the owner is the token's user)",
                code="UNEXPECTED_FIELD",
            )
        else:
            u.ignored_fields.append(name[:64])
            self.current = "extra"
            self.extra_bytes = 0

    def _data(self, data: bytes) -> None:
        u = self.upload
        if self.current == "bucket":
            self.field_value += data
            if len(self.field_value) > MAX_FIELD_BYTES:
                raise errors.ValidationFailed("the `bucket` field is too long", code="INVALID_BUCKET")
            return
        if self.current == "extra":  # counted, never kept
            self.extra_bytes += len(data)
            if self.extra_bytes > MAX_EXTRA_FIELD_BYTES:
                raise errors.ValidationFailed(
                    f"the form field {self.upload.ignored_fields[-1]!r} is longer than {MAX_EXTRA_FIELD_BYTES} bytes",
                    code="FIELD_TOO_LARGE",
                )
            return
        assert self.current == "file" and u.file is not None
        u.size += len(data)
        if u.size > self.stream_cap():
            raise self.too_large()
        if len(u.head) < SNIFF_BYTES:
            u.head += data[: SNIFF_BYTES - len(u.head)]
        u.file.write(data)
        if not self.head_checked and len(u.head) >= SNIFF_BYTES:
            self._check_head()

    def _end_part(self) -> None:
        u = self.upload
        if self.current == "bucket":
            u.bucket = rules.check_bucket(self.field_value.decode("utf-8", "replace").strip())
            # a file part that came first is now checked against the bucket's own rules
            if u.size > self.stream_cap():
                raise self.too_large()
            if self.head_checked:
                self._check_type()
        elif self.current == "file" and not self.head_checked and u.size > 0:
            self._check_head()
        self.current = None

    def _check_head(self) -> None:
        self.head_checked = True
        self.upload.content_type = sniff(bytes(self.upload.head))
        self._check_type()

    def _check_type(self) -> None:
        u = self.upload
        rules.check_type(u.bucket, sniffed=u.content_type, declared=u.declared_type, filename=u.filename)


def inline_too_large(s: UploadMediaSettings) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"files above {s.upload_inline_max_bytes} bytes go by presigned upload "
        "(POST /functions/v1/upload-media/presign, PUT, then /confirm)",
        code="USE_PRESIGNED_UPLOAD",
        details={"max_inline_bytes": s.upload_inline_max_bytes, "presign": "/functions/v1/upload-media/presign"},
    )


@asynccontextmanager
async def read_upload(request: Request, s: UploadMediaSettings) -> AsyncIterator[Upload]:
    """Read the multipart body as it arrives and yield the checked upload, its file rewound.
    The type rules run as soon as the file's first bytes are in (the bucket's own rules too
    if `bucket` came first, else when it arrives), so a wrong file is refused before the
    rest is read. The spooled file is closed on exit."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    boundary = boundary_of(request.headers.get("content-type"))
    body_cap = s.upload_inline_max_bytes + FRAMING_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > body_cap:
        raise inline_too_large(s)
    reader = _Reader(s)
    parser = MultipartParser(boundary, reader.callbacks(), max_header_count=8, max_header_size=1024)
    u = reader.upload
    from starlette.requests import ClientDisconnect

    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            u.body_bytes += len(chunk)
            if u.body_bytes > body_cap:
                raise reader.too_large()
            try:
                parser.write(chunk)
            except MultipartParseError:
                raise errors.BadRequest("the multipart body is malformed", code="MALFORMED_MULTIPART") from None
            reader.drain()
            if reader.ended:
                break
        if not reader.ended:
            raise errors.BadRequest("the multipart body ended early", code="MALFORMED_MULTIPART")
        if u.file is None:
            raise errors.ValidationFailed("the `file` field is required", code="FILE_REQUIRED")
        if u.size == 0:
            raise errors.ValidationFailed("the file is empty", code="EMPTY_FILE")
        if u.bucket is None:
            rules.check_bucket(None)
        u.file.seek(0)
        yield u
    except ClientDisconnect:
        raise errors.BadRequest("the client went away during the upload", code="CLIENT_DISCONNECTED") from None
    finally:
        if u.file is not None:
            u.file.close()
