"""Turn one ObjectCreated record into renditions and the image record's result.

Idempotent: rendition keys are deterministic and the work always reads the *current* original,
so a duplicate or stale event rewrites the same result instead of adding or reverting one.
Before writing a result the job makes sure the original it processed is still the current one
(the record names it, or else S3 says so: `RecordStore.record_result`): if a newer one arrived it
processes that instead; if the image was deleted meanwhile it removes what it wrote and
acknowledges (nothing to dead-letter for an image that is gone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from config.settings import Settings
from pipeline.core import metrics
from pipeline.core.errors import (
    InvalidKey,
    JobTimeout,
    NotFound,
    PermanentError,
    PoisonMessage,
    ProcessingTimeout,
    ServiceError,
    SourceMissing,
    UploadMismatch,
    UploadNotReserved,
)
from pipeline.core.events import ObjectCreated
from pipeline.core.formats import ImageInfo
from pipeline.core.image_record import ImageRecord, UploadFacts
from pipeline.core.layout import ImageRef, valid_image_id, valid_user_id
from pipeline.core.logs import REQUEST_ID
from pipeline.core.objects import ObjectMeta, OversizeObject, source_tag
from pipeline.core.originals import Destination, Fetched
from pipeline.core.ports import ItemTable, ObjectStore
from pipeline.core.records import Known, RecordStore, Superseded
from pipeline.core.removal import drop_renditions
from pipeline.core.reservations import FIELD, METADATA_KEY, USED, Reservation
from pipeline.core.results import Rendition, RenditionResult
from pipeline.imaging.tasks import renditions_of
from pipeline.imaging.workers import InlineRunner, WorkerPool

log = logging.getLogger(__name__)
Outcome = Literal["ready", "failed", "source_missing"]
#: How often a job re-does its work when the original changes under it before giving way.
MAX_SOURCE_CHANGES = 3


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    key: str
    engine: str | None = None
    renditions: int = 0
    error: ServiceError | None = None
    request_id: str = "-"  # of the upload that stored the original, from its S3 metadata


@dataclass(frozen=True)
class Processed:
    """What a job learnt of its original, and what it made of it (`JobRunner._original`)."""

    meta: ObjectMeta
    sha256: str | None  # None: not read (too large)
    head: bytes | None  # its first bytes (its format); None where nothing was read
    result: RenditionResult | None
    error: PermanentError | None
    duplicate: ImageRecord | None  # the owner's image of the same bytes its renditions are copied from
    noted: str | None  # the image the owner's note of these bytes names, if it was read


class Notifier(Protocol):
    """Where a job hands the record it wrote, for its owner's webhook (`pipeline.webhooks.outbox.Outbox`)."""

    async def notify(self, record: ImageRecord) -> None: ...


class JobRunner:
    """Reads the original, resizes it in the worker pool, writes renditions and the record."""

    def __init__(
        self,
        storage: ObjectStore,
        records: RecordStore,
        pool: WorkerPool | InlineRunner,
        settings: Settings,
        webhooks: Notifier | None = None,
        users: ItemTable | None = None,
    ) -> None:
        self._users = users
        self._storage = storage
        self._records = records
        self._pool = pool
        self._settings = settings
        self._webhooks = webhooks

    async def process(self, record: ObjectCreated) -> JobResult:
        """Returns `failed` (with the permanent error, already recorded) or raises `TransientError`."""
        aws = self._settings.aws
        if record.bucket != aws.source_bucket:
            raise PoisonMessage(f"event for bucket {record.bucket!r}, expected {aws.source_bucket!r}")
        ref = ImageRef(record.key)
        owner, image_id = ref.owner_and_id
        if not (valid_user_id(owner) and valid_image_id(image_id)):
            # No API route could download or delete what it would become: never make it a record.
            raise InvalidKey(f"the key {_short(record.key)!r} is not {{user_id}}/{{image_id}}")
        rid = REQUEST_ID.get()
        for _ in range(MAX_SOURCE_CHANGES):
            recorded = await self._records.read(ref)
            known: Known = recorded.item if recorded is not None else None
            try:
                got = await self._original(ref, record.etag, known)
            except NotFound:
                return JobResult("source_missing", ref.source_key, request_id=rid)
            meta, result, error = got.meta, got.result, got.error
            digest, duplicate = got.sha256, got.duplicate
            rid = meta.metadata.get("request-id") or rid
            REQUEST_ID.set(rid)  # this job's log lines carry the upload's request id
            await self._check_owner(ref, meta.metadata)
            reserved = await self._reservation(ref, meta, recorded)
            if reserved is None or isinstance(error, OversizeObject):
                wrong = None
            else:
                wrong = reserved.mismatch(meta.size, got.head)
            if wrong is not None:  # whatever the worker made of them (or failed to): not kept
                result, error = None, wrong
            if result is not None:
                await self._write_renditions(ref, meta.etag, result)
            else:  # renditions an earlier upload of this id left are never valid again
                await self._drop_renditions(ref)
            try:
                written = await self._records.record_result(
                    ref,
                    meta.etag,
                    result,
                    error,
                    lambda: self._current_etag(ref),
                    duplicate_of=duplicate.image_id if duplicate else None,
                    facts=_read(known, meta.size, digest)
                    if reserved is None
                    else _arrived(reserved, meta.size, digest, error),
                    known=known,
                )
                await self._confirm_created(ref, written, meta.etag)
            except Superseded as exc:
                if exc.current is None:  # deleted while we worked: leave nothing behind
                    await self._drop_renditions(ref)
                    return JobResult("source_missing", ref.source_key, request_id=rid)
                log.info("original changed during processing key=%s, processing it again", ref.source_key)
                continue
            if reserved is not None and _refused(error):
                # Not what its URL allowed: its bytes are not kept (nor counted: see `_arrived`).
                await self._remove_if_current(ref, meta.etag)
            if digest is not None and result is not None and duplicate is None and got.noted != image_id:
                await self._records.digests.remember(ref, digest)  # unless noted already (a redelivery)
            if self._webhooks is not None and written.item.get("notify"):
                # Before the message is acknowledged: a crash here redoes the job and the event.
                await self._webhooks.notify(written)
            if error is not None:
                return JobResult("failed", ref.source_key, error=error, request_id=rid)
            assert result is not None
            return JobResult("ready", ref.source_key, result.engine, len(result.renditions), request_id=rid)
        raise SourceMissing("the original keeps changing; the latest upload's own event will process it")

    async def _confirm_created(self, ref: ImageRef, written: ImageRecord, etag: str) -> None:
        """A record this job created (revision 1) was written without asking S3 first
        (`record_result`): ask now. `Superseded` if the original was replaced meanwhile (the
        newer one is processed instead) or deleted (our record is undone, unless someone wrote
        since)."""
        if written.item.get("revision") != 1 or (now := await self._current_etag(ref)) == etag:
            return
        if now is None:
            await self._records.delete_if(ref, 1)
        raise Superseded(now)

    async def _check_owner(self, ref: ImageRef, metadata: Mapping[str, str]) -> None:
        """API uploads name their (authenticated) owner in the object's metadata; anything else
        put into the bucket is checked against the users table (one read, only for those)."""
        owner, _ = ref.owner_and_id
        if metadata.get("user-id") == owner or self._users is None:
            return
        if await self._users.get({"user_id": owner}) is None:
            raise InvalidKey(f"no user {owner} exists to own this object")

    async def _reservation(
        self, ref: ImageRef, meta: ObjectMeta, record: ImageRecord | None
    ) -> Reservation | None:
        """For bytes put through a presigned URL (their metadata names its reservation): the
        reservation they complete (held, or used already: a repeated event, or the same URL used
        again, is checked against it just the same). Bytes whose reservation is gone (released,
        its image deleted, or spent on bytes it did not allow) are removed: `UploadNotReserved`,
        which dead-letters the event with that reason. `record`: as the job read it."""
        token = meta.metadata.get(METADATA_KEY)
        if token is None:
            return None
        reservation = Reservation.named(record.item, token) if record is not None else None
        if reservation is None:
            await self._remove_if_current(ref, meta.etag)
            raise UploadNotReserved()
        return reservation

    async def _remove_if_current(self, ref: ImageRef, etag: str) -> None:
        """Delete the original `etag` unless another has replaced it since it was read."""
        if await self._current_etag(ref) == etag:
            await self._storage.delete_many(self._settings.aws.source_bucket, [ref.source_key])

    async def _original(self, ref: ImageRef, event_etag: str | None, known: Known) -> Processed:
        """The original's metadata and SHA-256 with its renditions (or the permanent error that
        prevents them): copied from the owner's image of the same bytes when its record names
        their digest (the API hashed them) and there is one, else read, hashed and made by a
        worker, the bytes never passing through this loop. `NotFound` if it is gone."""
        digest = _recorded_digest(known, event_etag)
        noted = None if digest is None else await self._records.digests.noted(ref, digest)
        if digest is not None and (duplicate := await self._records.find_duplicate(ref, digest, noted)):
            meta = await self._source_meta(ref)
            if meta.etag == _quoted(event_etag) and METADATA_KEY not in meta.metadata:
                copied = await self._copy_from(duplicate, ref, meta.etag)
                if copied is not None:
                    return Processed(meta, digest, None, copied, None, duplicate, noted)
        try:
            fetched = await self._made(ref, store=known is not None and self._pool.stops_on_timeout)
        except OversizeObject as exc:  # nothing to decode, but the user must learn why
            return Processed(exc.meta, None, None, None, exc, None, noted)
        except JobTimeout:
            # A timeout now starts with the job and touches only its own worker: a second one
            # for the same original says the image is too costly, not that the machine was busy.
            # Counted under the original S3 has now (the worker never said what it read).
            meta = await self._source_meta(ref)
            if await self._records.count_timeout(ref, meta.etag) < 2:
                raise
            timeout = self._settings.consumer.job_timeout
            too_costly = ProcessingTimeout(
                f"processing took longer than {timeout:g}s on two attempts; the image is too costly"
            )
            return Processed(meta, None, None, None, too_costly, None, noted)
        result, error = fetched.result, fetched.error
        return Processed(fetched.meta, fetched.sha256, fetched.head, result, error, None, noted)

    async def _made(self, ref: ImageRef, *, store: bool) -> Fetched:
        """Renditions made by a worker that reads the original itself and, with `store`, puts
        them into S3 itself when the object names its owner as the API does and no presigned
        reservation (whose checks come after): never for bytes not yet checked. Not where a
        timed-out worker cannot be stopped (`InlineRunner`): it could write after its job gave up."""
        aws, imaging = self._settings.aws, self._settings.imaging
        started = time.perf_counter()
        timeout = self._settings.consumer.job_timeout
        where = await self._storage.locate(aws.source_bucket, ref.source_key, imaging.max_bytes)
        keys = {spec.name: ref.rendition_key(spec) for spec in imaging.stored_renditions}
        dest = Destination(aws.dest_bucket, keys, ref.owner_and_id[0]) if store else None
        owner = ref.owner_and_id[0]
        fetched = await self._pool.run_for(owner, timeout, renditions_of, where, imaging, dest)
        if fetched.result is not None:
            result = fetched.result
            metrics.PROCESSING_SECONDS.labels(result.engine, result.info.format).observe(
                time.perf_counter() - started
            )
        return fetched

    async def _copy_from(self, duplicate: ImageRecord, ref: ImageRef, etag: str) -> RenditionResult | None:
        """The renditions of `duplicate` (the owner's image with the same bytes), copied to `ref`'s
        keys in storage without decoding anything; None if they cannot be (made with other
        settings, or replaced or deleted meanwhile): the caller makes them afresh."""
        dest = self._settings.aws.dest_bucket
        copied = []
        for spec in self._settings.imaging.renditions:
            made = duplicate.renditions.get(spec.name)
            if made is None or made.get("content_type") != spec.content_type:
                return None
            try:
                # Made from that original? (A replacement's job writes renditions before its
                # record; the record alone could still name the bytes these were not made from.)
                source = await self._storage.head(dest, str(made["key"]))
                if source.metadata.get("source-etag") != duplicate.source_etag.strip('"'):
                    return None
                await self._storage.copy(
                    dest,
                    str(made["key"]),
                    ref.rendition_key(spec),
                    spec.content_type,
                    source_tag(etag),
                )
            except NotFound:
                return None
            copied.append(Rendition(spec, b"", int(made["width"]), int(made["height"]), int(made["bytes"])))
        # Still the same original there? (A replacement's record names its new original before
        # its renditions are made, so what was copied is of these bytes if this holds.)
        now = await self._records.read(ImageRef.of(duplicate.owner, duplicate.image_id))
        if now is None or now.source_etag != duplicate.source_etag:
            return None
        info = duplicate.item.get("info", {})
        log.info("duplicate of %s: renditions copied key=%s", duplicate.image_id, ref.source_key)
        return RenditionResult(
            ImageInfo(str(info.get("format")), int(info.get("width", 0)), int(info.get("height", 0))),
            info.get("engine", "vips"),
            tuple(copied),
            0.0,
            duplicate.item.get("placeholder"),
            duplicate.item.get("metadata"),
        )

    async def _source_meta(self, ref: ImageRef) -> ObjectMeta:
        return await self._storage.head(self._settings.aws.source_bucket, ref.source_key)

    async def _current_etag(self, ref: ImageRef) -> str | None:
        return await self._storage.etag_of(self._settings.aws.source_bucket, ref.source_key)

    async def _write_renditions(self, ref: ImageRef, etag: str, result: RenditionResult) -> None:
        """Those not in storage already (copied from a duplicate, or put by their worker)."""
        for rendition in result.renditions:
            if rendition.stored_bytes is not None:
                continue
            await self._storage.put(
                self._settings.aws.dest_bucket,
                ref.rendition_key(rendition.spec),
                rendition.data,
                rendition.spec.content_type,
                source_tag(etag),
            )

    async def _drop_renditions(self, ref: ImageRef) -> None:
        await drop_renditions(self._storage, self._settings, ref)


def _refused(error: ServiceError | None) -> bool:
    """Bytes a presigned URL did not allow (another length or format, or too large to read): not
    kept, and nothing counted. (Bytes it allowed that then fail to decode are kept, and counted,
    as an upload through the API's would be.)"""
    return isinstance(error, UploadMismatch | OversizeObject)


def _arrived(
    reservation: Reservation, size: int, digest: str | None, error: ServiceError | None
) -> UploadFacts:
    """A presigned upload's facts, which the API could not know: the reservation is used, and
    the record counts what is kept (nothing, for bytes its URL did not allow)."""
    if _refused(error):  # the URL is spent: bytes put through it again are removed, not counted
        return {FIELD: None, USED: None, "bytes": 0, "sha256": None}
    return {  # bytes it allowed: of its length and format (`Reservation.mismatch` passed)
        FIELD: None,
        USED: reservation.as_item(),
        "bytes": size,
        "sha256": digest,
        "format": reservation.format,
        "content_type": reservation.content_type,
    }


def _read(known: Known, size: int, digest: str | None) -> UploadFacts | None:
    """The facts of the original as read, where the record says otherwise: an original put or
    replaced outside the API (`aws s3 cp` over an image) is counted at its own size, and a digest
    of other bytes is not kept for it."""
    recorded = known if isinstance(known, dict) else {}
    facts: UploadFacts = {}
    if recorded.get("bytes") != size:
        facts["bytes"] = size
        facts["sha256"] = digest  # None where the worker did not read it: no stale one kept
    elif digest is not None and recorded.get("sha256") not in (None, digest):
        facts["sha256"] = digest
    return facts or None


def _recorded_digest(known: Known, event_etag: str | None) -> str | None:
    """The SHA-256 the record gives for the original of the event: an upload through the API
    hashed its bytes as they streamed (a presigned upload's is known once its job ran)."""
    if not isinstance(known, dict) or event_etag is None or known.get("source_etag") != _quoted(event_etag):
        return None
    digest = known.get("sha256")
    return digest if isinstance(digest, str) else None


def _quoted(etag: str | None) -> str:
    """An ETag as S3's answers and the records give it (S3's events give it bare)."""
    return f'"{(etag or "").strip(chr(34))}"'


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
