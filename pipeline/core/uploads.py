"""Storing an upload: the one use case behind every upload route (`PUT`/`POST /images`, the
original system's `POST /upload`, and the `PUT` of a local backend's upload URL), callable
without HTTP.

An upload is admitted (room on the store, the owner's share of uploads and of the buffer),
screened as its bytes stream in (a decompression bomb is refused from its header, before it is
stored), charged to its owner's decode budget, streamed into the store, then recorded: the record
and the owner's counters in one transaction. Each step that can fail after bytes are stored
undoes what only it left behind, so a refused upload leaves nothing: no original, no record, no
charge.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from config.settings import ImagingSettings, Settings
from pipeline.core import metrics
from pipeline.core.errors import ImageNotFound, InsufficientStorage, ServiceError, UploadPending
from pipeline.core.formats import decode_megapixels, screen_prefix
from pipeline.core.image_record import ImageRecord, UploadFacts
from pipeline.core.layout import ImageRef
from pipeline.core.logs import REQUEST_ID
from pipeline.core.objects import StoredUpload
from pipeline.core.ports import BufferLease, ObjectStore
from pipeline.core.quotas import Usage
from pipeline.core.records import ImageTaken, RecordStore, Superseded, UsageRefused
from pipeline.core.removal import drop_variants
from pipeline.core.reservations import FIELD, USED, Reservation

log = logging.getLogger(__name__)
#: How much of an upload is kept to read its header (bombs are refused before being stored).
SCREEN_BYTES = 64 * 1024
#: Seconds past its expiry before DynamoDB's TTL removes a record gc has not removed.
PURGE_AFTER = 7 * 86_400

#: One upload of a user, holding its share of the upload buffer (`web.admission.UploadGate.admit`).
Admit = Callable[[str], AbstractAsyncContextManager[BufferLease | None]]
#: Charges the owner's decode budget what the upload will cost to decode (megapixels x frames).
Charge = Callable[[float], None]
#: The record's visibility fields for the owner's item and the record replaced (None: a new
#: image); it may refuse with a `ServiceError` (it reads options sent after the bytes).
Visibility = Callable[[Mapping[str, Any], ImageRecord | None], UploadFacts]


@dataclass(frozen=True)
class Upload:
    """One upload's bytes and what its client said of them."""

    ref: ImageRef
    chunks: AsyncIterator[bytes]
    file_name: str
    #: Its Content-Length, if it had one (a quota is checked against it before any byte is read).
    declared: int | None
    #: When `python -m pipeline gc` removes the image (epoch seconds); None: never.
    expires_at: int | None


@dataclass(frozen=True)
class Stored:
    """An upload recorded: the image's record (another upload's, if one landed after it) and the
    SHA-256 of the bytes it stored."""

    record: ImageRecord
    sha256: str


class Uploads:
    def __init__(
        self, settings: Settings, storage: ObjectStore, records: RecordStore, usage: Usage, admit: Admit
    ) -> None:
        self._settings = settings
        self._storage = storage
        self._records = records
        self._usage = usage
        self._admit = admit

    @asynccontextmanager
    async def admitted(self, user_id: str) -> AsyncIterator[BufferLease | None]:
        """Room on the store (507 while a local disk is short of it, so what is left stays for
        deletes), then one of the user's uploads and its first slice of buffer (429, 503)."""
        state = await self._storage.check_space()
        if state != "ok":
            raise InsufficientStorage(
                f"the server's storage is low on space ({state}); retry later (deleting images still works)",
                headers={"Retry-After": str(self._settings.web.retry_after * 30)},
            )
        async with self._admit(user_id) as lease:
            yield lease

    async def put(
        self,
        ref: ImageRef,
        chunks: AsyncIterator[bytes],
        lease: BufferLease | None,
        *,
        charge: Charge,
        metadata: Mapping[str, str],
        max_bytes: int | None = None,
        allowed_formats: frozenset[str] | None = None,
    ) -> StoredUpload:
        """Stream an admitted upload's bytes, screened and charged, into the source bucket."""
        settings = self._settings
        return await self._storage.upload_stream(
            settings.aws.source_bucket,
            ref.source_key,
            screened(chunks, settings.imaging, charge),
            max_bytes=settings.imaging.max_bytes if max_bytes is None else max_bytes,
            part_size=settings.web.part_size,
            allowed_formats=settings.imaging.allowed_formats if allowed_formats is None else allowed_formats,
            metadata=dict(metadata),
            lease=lease,
        )

    async def store(self, upload: Upload, *, charge: Charge, visibility: Visibility) -> Stored:
        """Admit, check quotas, stream the original, record it with the owner's counters."""
        ref, owner = upload.ref, upload.ref.owner_and_id[0]
        records, usage = self._records, self._usage
        async with self.admitted(owner) as lease:
            previous = await records.read(ref)
            if previous is not None and Reservation.live(previous.item) is not None:
                raise UploadPending()  # its URL could replace these bytes
            user = await usage.check(
                owner,
                new_image=previous is None,
                incoming=upload.declared,
                replaced_bytes=previous.bytes if previous else 0,
            )
            digest = hashlib.sha256()
            stored = await self.put(
                ref,
                _hashed(upload.chunks, digest),
                lease,
                charge=charge,
                metadata=upload_metadata(owner, upload.file_name),
            )
        metrics.UPLOAD_BYTES.inc(stored.size)
        facts: UploadFacts = {
            "file_name": upload.file_name[:255],
            "content_type": f"image/{stored.format}",
            "format": stored.format,
            "bytes": stored.size,
            "sha256": digest.hexdigest(),
            "expires_at": upload.expires_at,  # removed by `python -m pipeline gc` after this
            "purge_at": upload.expires_at + PURGE_AFTER if upload.expires_at else None,  # TTL's backstop
            # The consumer looks the webhook up only for images whose owner had one at upload time.
            "notify": bool(user.get("webhook_url")),
            FIELD: None,  # a reservation of this id long expired is this upload's now
            USED: None,  # and a presigned upload's URL no longer puts anything here
            **await self._visibility(ref, stored, visibility, user, previous),
        }
        record = await self._record(ref, stored, facts, previous)
        log.info("upload stored key=%s bytes=%d format=%s", ref.source_key, stored.size, stored.format)
        return Stored(record, digest.hexdigest())

    async def _visibility(
        self,
        ref: ImageRef,
        stored: StoredUpload,
        visibility: Visibility,
        user: Mapping[str, Any],
        previous: ImageRecord | None,
    ) -> UploadFacts:
        try:
            return visibility(user, previous)
        except ServiceError:
            if previous is not None:
                # An option after the file said something invalid, but the new bytes have replaced
                # the old ones already: the upload stands, its visibility as it was.
                log.warning("upload's public field ignored key=%s", ref.source_key)
                return {}
            await self._take_back(ref, stored)
            raise  # a new image: nothing of it is kept

    async def _record(
        self, ref: ImageRef, stored: StoredUpload, facts: UploadFacts, previous: ImageRecord | None
    ) -> ImageRecord:
        """The record and the owner's counters in one transaction; a new image is refused there if
        it crosses a quota (an upload without Content-Length can get that far)."""
        storage, bucket, key = self._storage, self._settings.aws.source_bucket, ref.source_key
        try:
            record = await self._records.record_upload(
                ref,
                stored.etag,
                facts,
                lambda: storage.etag_of(bucket, key),
                read=previous,
                limit=self._usage.limit,
            )
        except Superseded:  # another upload of this id landed after ours: it is the image now
            found = await self._records.read(ref)
            if found is None:
                raise ImageNotFound("the image was deleted while it was being uploaded") from None
            return found
        except UsageRefused:  # nothing recorded: the new original goes again
            await self._take_back(ref, stored)
            raise await self._usage.refusal(ref.owner_and_id[0], 1) from None
        except ImageTaken:  # reserved for a presigned upload while this one streamed: it gives way
            await self._take_back(ref, stored)
            raise UploadPending() from None
        if record.replaced is not None:  # the replaced original's variants are never served again
            try:
                await drop_variants(storage, self._settings, ref, keep_etag=record.source_etag)
            except Exception as exc:  # recorded already: the upload stands; gc removes them later
                log.warning("variants of a replaced original not dropped key=%s error=%r", key, exc)
        return record

    async def _take_back(self, ref: ImageRef, stored: StoredUpload) -> None:
        """Delete an original this upload stored and must not keep, unless another upload of the
        same id has replaced it since (that one is not ours to delete)."""
        bucket = self._settings.aws.source_bucket
        if await self._storage.etag_of(bucket, ref.source_key) == stored.etag:
            await self._storage.delete_many(bucket, [ref.source_key])


def upload_metadata(user_id: str, file_name: str, **more: str) -> dict[str, str]:
    """An original's metadata in the store, however it is put. It travels as HTTP headers: kept
    ASCII whatever the client sent."""
    return {
        "original-filename": quote(file_name[:255], safe=" ._-"),
        "user-id": user_id,  # the consumer trusts an owner named here (`JobRunner._check_owner`)
        "request-id": REQUEST_ID.get(),  # so the consumer's log lines for it carry the same id
        **more,
    }


async def screened(
    chunks: AsyncIterator[bytes], imaging: ImagingSettings, charge: Charge | None = None
) -> AsyncIterator[bytes]:
    """Pass chunks through, refusing a decompression bomb as soon as its header has arrived, and
    charging `charge` what it will cost to decode (megapixels x frames) from that header."""
    prefix = bytearray()
    screened = False
    async for chunk in chunks:
        if not screened:
            prefix += chunk
            if len(prefix) >= SCREEN_BYTES:
                _screen(bytes(prefix), imaging, charge)
                screened = True
        yield chunk
    if not screened:
        _screen(bytes(prefix), imaging, charge)


def _screen(prefix: bytes, imaging: ImagingSettings, charge: Charge | None) -> None:
    info = screen_prefix(prefix, imaging)
    if charge is not None:
        charge(decode_megapixels(info))


async def _hashed(chunks: AsyncIterator[bytes], digest: Any) -> AsyncIterator[bytes]:
    """Pass chunks through, hashing them: the record keeps the original's SHA-256."""
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk
