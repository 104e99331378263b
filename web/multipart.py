"""Reading an upload sent as `multipart/form-data`: exactly one file part, everything bounded.

Browsers and `curl -F` send a file with a few small fields beside it. Anything else is refused
before the upload is complete, so nothing of it is stored:
- the whole body, preamble and fields included, counts against the byte cap (the connection
  enforces it as bytes arrive: an endless preamble or field is cut off too);
- at most `MAX_FIELDS` plain fields of at most `MAX_FIELD_BYTES` each;
- a nested multipart part, or a second file part, is a 400. The rest of the body after the
  file is read (bounded) before the upload is completed, so a second file is refused and the
  first one is not stored.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam

from pipeline.core.errors import BadRequest
from web.server import guard_of

#: Plain (non-file) fields a multipart upload may carry, and the size of each.
MAX_FIELDS = 16
MAX_FIELD_BYTES = 8 * 1024
#: What a multipart body may hold beyond the file's own bytes: boundaries, part headers, fields.
OVERHEAD_BYTES = 64 * 1024
CHUNK = 256 * 1024
#: The plain fields an upload understands (the rest are read and dropped), and how much of each.
KEPT = frozenset({"public"})
KEPT_BYTES = 16
#: How aiohttp's multipart parser reports a malformed body: besides `ValueError` and
#: `HttpProcessingError`, a `RuntimeError` (a `_charset_` field over 31 bytes) and, where warnings
#: are errors, its warnings about a malformed Content-Disposition. Each is the client's mistake: 400.
MALFORMED = (
    HttpProcessingError,
    ValueError,
    RuntimeError,
    BadContentDispositionHeader,
    BadContentDispositionParam,
)


class MultipartUpload:
    """One upload's multipart body: find the file part, stream it, refuse what follows it."""

    def __init__(self, reader: MultipartReader) -> None:
        self._reader = reader
        self._fields = 0
        #: The values of the plain fields the upload understands (`KEPT`), as read so far: those
        #: after the file part are read by `chunks` once the file's bytes are through.
        self.fields: dict[str, str] = {}

    @classmethod
    async def open(cls, request: web.Request, max_bytes: int) -> MultipartUpload:
        guard = guard_of(request)
        if guard is not None:
            guard.limit_body(max_bytes + OVERHEAD_BYTES)
        try:
            reader = await request.multipart()
        except ValueError:  # found by schemathesis: multipart without a boundary was a 500
            raise BadRequest("the multipart Content-Type has no boundary") from None
        return cls(reader)

    async def file_part(self) -> BodyPartReader:
        """The first part with a file name; plain fields before it are read and dropped."""
        while True:
            part = await self._next()
            if part is None:
                raise BadRequest("the multipart body has no file part")
            if _filename(part) is not None:
                return part
            await self._skip_field(part)

    async def chunks(self, part: BodyPartReader) -> AsyncIterator[bytes]:
        """The file part's bytes, then the rest of the body checked: only plain fields may follow."""
        try:
            while chunk := await part.read_chunk(CHUNK):
                yield chunk
        except MALFORMED as exc:
            raise BadRequest(f"the multipart body is malformed: {type(exc).__name__}") from None
        while (after := await self._next()) is not None:
            if _filename(after) is not None:
                raise BadRequest("a multipart upload carries one file; this one has a second file part")
            await self._skip_field(after)

    async def _next(self) -> BodyPartReader | None:
        try:
            part = await self._reader.next()
        except MALFORMED as exc:
            raise BadRequest(f"the multipart body is malformed: {type(exc).__name__}") from None
        if part is not None and not isinstance(part, BodyPartReader):
            raise BadRequest("nested multipart parts are not accepted")
        return part

    async def _skip_field(self, part: BodyPartReader) -> None:
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise BadRequest(f"a multipart upload may carry at most {MAX_FIELDS} plain fields")
        size = 0
        value = bytearray()
        try:
            while chunk := await part.read_chunk(MAX_FIELD_BYTES):
                size += len(chunk)
                if size > MAX_FIELD_BYTES:
                    raise BadRequest(f"a plain multipart field may hold at most {MAX_FIELD_BYTES} bytes")
                value += chunk[:KEPT_BYTES]
        except MALFORMED as exc:
            raise BadRequest(f"the multipart body is malformed: {type(exc).__name__}") from None
        if part.name in KEPT:
            self.fields[part.name] = bytes(value[:KEPT_BYTES]).decode("utf-8", "replace").strip()


def _filename(part: BodyPartReader) -> str | None:
    """The part's file name (parsed from its Content-Disposition on first use, so it may raise)."""
    try:
        return part.filename
    except MALFORMED as exc:
        raise BadRequest(f"the multipart body is malformed: {type(exc).__name__}") from None


def ignore_parser_warnings() -> None:
    """Ignore aiohttp's warnings about a client's malformed Content-Disposition, process-wide.

    Under Python's default filters each distinct warning text is printed and remembered in
    `aiohttp.multipart.__warningregistry__`, so distinct malformed headers grow that dict and the
    log without bound. Ignored, the malformed parameter is just dropped (and a part left without
    a file name is a plain field: an upload with no file part is a 400).
    """
    for category in (BadContentDispositionHeader, BadContentDispositionParam):
        warnings.filterwarnings("ignore", category=category)
