"""Writing image records: what each image is, and what the pipeline has made of it (the
record's view is `pipeline.core.image_record`; its notes of bytes, `pipeline.core.digests`).

One item per (owner, image id). The API writes the upload's facts (file name, type, bytes,
SHA-256, the original's ETag); the consumer writes the result (renditions, dimensions, or the
failure) for the ETag it processed. The status is derived, so neither overwrites the other's
half: `ready`/`failed` when the result names the current original's ETag, `pending` otherwise.

S3 holds the truth about which original is current; records follow it. Every write is
optimistic (`revision` must be what the writer read), and the consumer writes only after S3
confirmed that the original it processed is still the current one, so a stale or duplicate
event cannot overwrite a newer result: it either finds the record moved on (and re-reads) or
rewrites the same result.
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from config.settings import MEZZANINE
from pipeline.core import reservations
from pipeline.core.changes import Changes
from pipeline.core.cursors import decode_cursor, encode_cursor
from pipeline.core.digests import DigestNotes
from pipeline.core.errors import RecordConflict, ServiceError
from pipeline.core.image_record import PUBLIC_FIELD, ImageRecord, UploadFacts, counted_for_another
from pipeline.core.items import (
    Add,
    AllOf,
    AnyOf,
    Condition,
    ConditionFailed,
    DeleteItem,
    Equals,
    Include,
    Item,
    Lacks,
    Missing,
    Present,
    PutItem,
    Remove,
    Set,
    TransactionRefused,
    UpdateItem,
    Write,
)
from pipeline.core.layout import IMAGE_IDS_ABOVE, ImageRef
from pipeline.core.listing import SCAN_BUDGET, SCAN_CHUNK, Listing
from pipeline.core.ports import ItemTable
from pipeline.core.results import RenditionResult
from pipeline.core.timing import now_iso

#: Optimistic writes that lose a race re-read and try again this often before giving up.
WRITE_ATTEMPTS = 5
#: An upload's fact for `PUBLIC_FIELD`: public, with the record's nonce if it has one when written.
KEEP_PUBLIC = object()
#: Seconds between a long poll's re-reads of a record no write in this process has changed: at
#: most a read a second per wait (a change made here wakes it at once).
WAIT_READ_SECONDS = 1.0


#: Asks S3 for the current original's ETag (None: it no longer exists).
CurrentEtag = Callable[[], Awaitable[str | None]]


log = logging.getLogger(__name__)


class _Unread(enum.Enum):
    UNREAD = 0


#: "The caller has not read the record": `_write` reads it first.
UNREAD = _Unread.UNREAD
#: A record as a caller read it (None: there was none), or UNREAD.
Known = Item | _Unread | None


class Superseded(Exception):
    """The original a writer describes is no longer the current one (`current` is, or None)."""

    def __init__(self, current: str | None) -> None:
        super().__init__(current)
        self.current = current


class Counted(enum.Enum):
    """What counting a stored variant did."""

    COUNTED = "counted"
    PRESENT = "present"  # counted before (a duplicate made elsewhere): not counted again
    CHANGED = "changed"  # the record is of another original by now (replaced, or deleted)


#: The quota conditions on the owner's counters for a change of (bytes, images), or None.
Limit = Callable[[int, int], Condition | None]


class ImageTaken(Exception):
    """The id is in use: by an image, or by a reservation (`held`) whose URL still works."""

    def __init__(self, held: reservations.Reservation | None) -> None:
        super().__init__(held)
        self.held = held


class UsageRefused(Exception):
    """The owner's counters refused the change (a quota `Limit`, or no such user)."""


class RecordStore:
    """Image records. Given the users table, every write that changes what a record counts (its
    existence, its original's bytes, its variants' bytes) changes the owner's `bytes_used` and
    `image_count` in the same transaction, so the counters always equal what the records add up
    to: there is no step between the two for a crash to fall into. Without it (tools, tests)
    records are written alone."""

    def __init__(
        self, table: ItemTable, users: ItemTable | None = None, changes: Changes | None = None
    ) -> None:
        self._table = table
        self._users = users
        #: Which image of an owner is made from which bytes (the consumer's duplicate check).
        self.digests = DigestNotes(table)
        #: Woken on every write here (the backend's: the API and an in-process consumer share it).
        self._changes = changes if changes is not None else Changes()

    async def read(self, ref: ImageRef, *, consistent: bool = True) -> ImageRecord | None:
        owner, image_id = ref.owner_and_id
        item = await self._table.get({"user_id": owner, "image_id": image_id}, consistent=consistent)
        return ImageRecord(owner, image_id, item) if item else None

    async def wait(self, ref: ImageRef, seconds: float) -> ImageRecord | None:
        """The record, waiting up to `seconds` for a pending one (or one awaiting its presigned
        upload) to settle (long polling). A change written in this process wakes the wait at
        once (`pipeline.core.changes`), and so does one written elsewhere where the backend can
        notice it (the local backend); otherwise it is found by re-reading, eventually consistent,
        once a second: a wait costs at most a read a second, or a read a change."""
        since = self._changes.version()
        record = await self.read(ref)
        deadline = time.monotonic() + seconds
        while record is not None and record.state in ("pending", "awaiting_upload"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            changed = await self._changes.wait(ref.source_key, min(WAIT_READ_SECONDS, remaining), since)
            since = self._changes.version()
            # Woken by a write here: read what it wrote (consistent); else any recent copy will do.
            record = await self.read(ref, consistent=changed)
        return record

    async def record_upload(
        self,
        ref: ImageRef,
        etag: str,
        facts: UploadFacts,
        current: CurrentEtag,
        *,
        read: ImageRecord | _Unread | None = UNREAD,
        limit: Limit | None = None,
    ) -> ImageRecord:
        """The API stored a new original: its facts and ETag become the record's current version.
        Raises `Superseded` if another upload of the same id replaced it first, `UsageRefused` if
        it is a new image that `limit` (the owner's quotas) refuses, `ImageTaken` if the id is
        reserved for a presigned upload whose URL may still be used.

        `read`: the record as the caller read it *before storing the original* (None: there was
        none). It saves the read, and the first write needs no HEAD of the original either: any
        upload whose original replaced ours landed after our read, and writes its own record
        after its PUT; if that write came before ours, it changed the revision and ours fails
        (its retry confirms with S3 as usual); if it comes after ours, it replaces ours. Either
        way the record ends naming S3's current original. A record read *after* storing gives
        no such order: then the first write is confirmed too (`current`)."""
        known = read if isinstance(read, _Unread) else (read.item if read else None)

        # Another picture under the same id: where its predecessor's subject was means nothing,
        # and its variants are deleted (their bytes are the replaced record's `variant_bytes`).
        def fields(old: Item | None) -> dict[str, Any]:
            if old is not None and (held := reservations.Reservation.live(old)) is not None:
                raise ImageTaken(held)  # reserved while this upload streamed: its URL may still PUT
            same = old is not None and old.get("sha256") == facts.get("sha256")  # the same bytes again
            written = {**facts, "source_etag": etag, **({} if same else {"focal_point": None})}
            if written.get(PUBLIC_FIELD) is KEEP_PUBLIC:
                # Public, keeping the nonce the record has now (a replaced public image keeps its
                # token; one made private meanwhile gets a new nonce, never its revoked one back).
                current_nonce = (old or {}).get(PUBLIC_FIELD)
                written[PUBLIC_FIELD] = current_nonce or secrets.token_hex(12)
            return written

        return await self._write(ref, etag, current, fields, known, limit, confirmed=known is not UNREAD)

    async def reserve(
        self,
        ref: ImageRef,
        reservation: reservations.Reservation,
        facts: UploadFacts,
        *,
        limit: Limit | None = None,
    ) -> ImageRecord:
        """Create the record of a new image awaiting its presigned upload, charging the owner's
        quota its length in the same transaction. `ImageTaken` if the id is in use (by an image,
        or by a reservation whose URL may still be used: one whose URL expired more than
        `RELEASE_MARGIN_SECONDS` ago, unused, is replaced);
        `UsageRefused` if `limit` refuses it."""
        owner, image_id = ref.owner_and_id
        key = {"user_id": owner, "image_id": image_id}
        old: Item | None = None  # a new id is the rule: written without reading it first
        for _ in range(2):
            now = now_iso()
            new = {
                **key,
                **facts,
                reservations.FIELD: reservation.as_item(),
                "bytes": reservation.content_length,
                "revision": int(old.get("revision", 0)) + 1 if old else 1,
                "created_at": now,
                "updated_at": now,
                "created_key": f"{now}#{image_id}",
            }
            new = {k: v for k, v in new.items() if v is not None}
            written = PutItem(self._table, new, Missing("user_id") if old is None else _at(old))
            try:
                await self._with_usage(written, owner, old, new, limit)
            except ConditionFailed:  # the id is in use, or was taken meanwhile: by what?
                old = await self._table.get(key)
                held = reservations.Reservation.of(old) if old is not None else None
                if old is not None and (held is None or not held.released_by(time.time())):
                    raise ImageTaken(held) from None
                continue  # gone meanwhile, or a reservation long expired unused: take the id
            return ImageRecord(owner, image_id, new, replaced=old)
        raise ImageTaken(None)

    async def record_result(
        self,
        ref: ImageRef,
        etag: str,
        result: RenditionResult | None,
        error: ServiceError | None,
        current: CurrentEtag,
        duplicate_of: str | None = None,
        facts: UploadFacts | None = None,
        known: Known = UNREAD,
    ) -> ImageRecord:
        """The consumer made (or failed to make) renditions of the original with `etag`: they
        become the record's result, and that ETag its version. Raises `Superseded` if S3 holds
        another original (or none) by the time the record is written. `facts`: the upload's
        facts, for an original that arrived without the API (a presigned upload completes its
        reservation here). `known`: the record as the job read it, saving the first round's
        read; a conflict reads afresh.

        A record this write *creates* (revision 1: an original put straight into the bucket)
        is not confirmed with S3 first: the caller asks S3 after the write instead (it must,
        to undo a record of an original deleted meanwhile), which orders it just as well and
        costs one HEAD where both would cost two."""

        def fields(old: Item | None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "source_etag": etag,
                "result_etag": etag,
                "processed_at": now_iso(),
                "result_state": "ready" if error is None else "failed",
                "error": None if error is None else {"code": error.code, "message": error.message},
                "renditions": {},
                "duplicate_of": duplicate_of,  # None: made from these bytes here
            }
            if result is not None:
                made = {
                    r.spec.name: {
                        "key": ref.rendition_key(r.spec),
                        "width": r.width,
                        "height": r.height,
                        "bytes": r.size,
                        "content_type": r.spec.content_type,
                    }
                    for r in result.renditions
                }
                # Never served: kept apart, for the variants that read it (`ImageRecord.mezzanine`).
                out["mezzanine"] = made.pop(MEZZANINE, None)
                out["renditions"] = made
                out["info"] = {
                    "format": result.info.format,
                    "width": result.info.width,
                    "height": result.info.height,
                    "frames": result.info.frames,
                    "engine": result.engine,
                }
                out["placeholder"] = result.placeholder
                out["metadata"] = result.metadata
            return {**out, **(facts or {})}

        return await self._write(ref, etag, current, fields, known, recorded_is_current=True)

    async def count_timeout(self, ref: ImageRef, etag: str) -> int:
        """Count one timed-out attempt at processing the original `etag`; returns how many it has
        had (1 for a first, and for an image without a record yet, whose count cannot be kept).

        Kept on the record, beside its revision (no revision change: it is no result), so every
        consumer process sees the same count and a repeat is known for what it is: the image."""
        owner, image_id = ref.owner_and_id
        key = {"user_id": owner, "image_id": image_id}
        try:
            item = await self._table.update(
                key, [Add("timeouts", 1), Set("timeout_etag", etag)], Equals("timeout_etag", etag)
            )
        except ConditionFailed:
            try:
                item = await self._table.update(
                    key, [Set("timeouts", 1), Set("timeout_etag", etag)], Present("user_id")
                )
            except ConditionFailed:
                return 1
        return int(item.get("timeouts", 1))

    async def find_duplicate(self, ref: ImageRef, digest: str, noted: str | None) -> ImageRecord | None:
        """Another image of the same owner, ready, made from the same bytes; None if there is none
        (never another owner's: one user must not learn what another uploaded). `noted`: the
        image the bytes' note names (`DigestNotes.noted`)."""
        owner, image_id = ref.owner_and_id
        if noted is None or noted == image_id:
            return None
        record = await self.read(ImageRef.of(owner, noted))
        if record is None or record.state != "ready" or record.item.get("sha256") != digest:
            return None  # deleted or replaced since: the note is stale
        return record

    async def set_public(self, ref: ImageRef, nonce: str | None) -> ImageRecord | None:
        """Make the image public under `nonce` (its public URLs are made from it), or private
        (None: every public URL it had stops working at once); None if there is no record.
        The revision moves, so a concurrent whole-record write retries instead of undoing it."""
        owner, image_id = ref.owner_and_id
        change = Set(PUBLIC_FIELD, nonce) if nonce is not None else Remove(PUBLIC_FIELD)
        try:
            item = await self._table.update(
                {"user_id": owner, "image_id": image_id},
                [change, Add("revision", 1), Set("updated_at", now_iso())],
                Present("user_id"),
            )
        except ConditionFailed:
            return None
        self._changes.notify(ref.source_key)
        return ImageRecord(owner, image_id, item)

    async def set_focal_point(self, ref: ImageRef, point: dict[str, float]) -> ImageRecord | None:
        """Store where the image's subject is (for `crop=focal`); None if there is no record.
        The revision moves too, so a concurrent whole-record write retries instead of undoing it."""
        owner, image_id = ref.owner_and_id
        try:
            item = await self._table.update(
                {"user_id": owner, "image_id": image_id},
                [Set("focal_point", point), Add("revision", 1), Set("updated_at", now_iso())],
                Present("user_id"),
            )
        except ConditionFailed:
            return None
        return ImageRecord(owner, image_id, item)

    async def add_variant(
        self, ref: ImageRef, etag: str, name: str, size: int, limit: Limit | None = None
    ) -> Counted:
        """Count a stored variant of the original `etag` on its record, once: its name joins the
        record's `variant_names`, and its bytes are counted only if the name was not there (a
        duplicate made in another process is counted once). The revision moves too, so a
        whole-record write that read the record before this retries instead of losing it.
        `UsageRefused` if `limit` (the owner's byte quota) refuses its bytes."""
        owner, image_id = ref.owner_and_id
        key = {"user_id": owner, "image_id": image_id}
        count = UpdateItem(
            self._table,
            key,
            [
                Add("variant_bytes", size),
                Add("variant_count", 1),
                Include("variant_names", name),
                Set("variant_etag", etag),
                Add("revision", 1),
            ],
            AllOf((*_variants_of(etag), Lacks("variant_names", name))),
        )
        try:
            await self._with_usage(count, owner, {"bytes": 0}, {"bytes": size}, limit)
        except ConditionFailed:  # rare: which condition failed is read afresh
            now = await self.read(ref)
            if now is not None and now.source_etag == etag and name in (now.variant_names or ()):
                return Counted.PRESENT
            return Counted.CHANGED
        return Counted.COUNTED

    async def delete(self, ref: ImageRef) -> ImageRecord | None:
        """Delete the record (and uncount it); the record as it was, None if there was none."""
        owner, image_id = ref.owner_and_id
        key = {"user_id": owner, "image_id": image_id}
        for _ in range(WRITE_ATTEMPTS):
            old = await self._table.get(key)
            if old is None:
                return None
            try:
                await self._with_usage(DeleteItem(self._table, key, _at(old)), owner, old, None)
            except ConditionFailed:  # written meanwhile: what it counts now is read again
                continue
            self._changes.notify(ref.source_key)
            if digest := old.get("sha256"):
                await self.digests.forget(ref, str(digest))
            return ImageRecord(owner, image_id, old)
        raise RecordConflict(f"record {owner}/{image_id} kept changing")

    async def delete_if(self, ref: ImageRef, revision: int) -> bool:
        """Delete the record only if nobody wrote it since `revision` (undoing our own write, or
        expiring what was read); whether it was deleted."""
        owner, image_id = ref.owner_and_id
        key = {"user_id": owner, "image_id": image_id}
        old = await self._table.get(key)
        if old is None or old.get("revision") != revision:
            return False
        try:
            await self._with_usage(
                DeleteItem(self._table, key, Equals("revision", revision)), owner, old, None
            )
        except ConditionFailed:
            return False
        self._changes.notify(ref.source_key)
        return True

    async def page(
        self, owner: str, limit: int, cursor: str | None, listing: Listing | None = None
    ) -> tuple[list[ImageRecord], str | None]:
        """One page of an owner's images in `listing`'s order and the cursor of the next page.

        By creation, the order is (creation time, id), which never changes for an image (a
        re-upload keeps its place), so pages stay consistent while new images arrive: they sort
        before page one. A filtered listing reads at most `SCAN_BUDGET` records a request
        (`pipeline.core.listing`): its page may be short, with a cursor to go on from.
        """
        listing = listing or Listing()
        index = "by_created" if listing.sort == "created" else None
        start = decode_cursor(cursor, owner, listing.order) if cursor else None
        if start is not None and index is None:  # the table's own key: no index attribute
            start = {"user_id": start["user_id"], "image_id": start["image_id"]}
        found: list[ImageRecord] = []
        scanned = 0
        while True:
            chunk = limit if not listing.filtered else min(SCAN_CHUNK, SCAN_BUDGET - scanned)
            items, last = await self._table.query(
                owner,
                index=index,
                forward=not listing.descending,
                limit=chunk,
                start=start,
                above=None if index else IMAGE_IDS_ABOVE,  # by id: never the digest notes
            )
            scanned += len(items)
            for position, item in enumerate(items):
                record = ImageRecord(owner, str(item["image_id"]), item)
                if not listing.matches(record):
                    continue
                found.append(record)
                if len(found) == limit:
                    at_end = last is None and position == len(items) - 1
                    return found, None if at_end else encode_cursor(item, listing.order)
            if last is None:
                return found, None
            if scanned >= SCAN_BUDGET:  # a short page: the caller goes on from here
                return found, encode_cursor(items[-1], listing.order)
            start = last

    async def _with_usage(
        self,
        write: Write,
        owner: str,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
        limit: Limit | None = None,
    ) -> None:
        """Write the record, and with it (one transaction) the owner's counters by what it changes.
        `ConditionFailed`: the record's condition failed; `UsageRefused`: the counters' did."""
        (new_bytes, new_images), (old_bytes, old_images) = counted(new), counted(old)
        change = new_bytes - old_bytes, new_images - old_images
        if self._users is None or change == (0, 0):
            await _single(write)
            return
        room = limit(*change) if limit is not None else None
        usage = UpdateItem(
            self._users,
            {"user_id": owner},
            [Add("bytes_used", change[0]), Add("image_count", change[1])],
            AllOf((Present("user_id"), room)) if room is not None else Present("user_id"),
        )
        try:
            await self._table.transact([write, usage])
        except TransactionRefused as exc:
            if exc.index == 0:
                raise ConditionFailed() from None
            if room is not None:
                raise UsageRefused() from None
            # No such user (removed under its images): the record is still the truth to keep.
            log.warning("record written without usage: no user %s", owner)
            await _single(write)

    async def _write(
        self,
        ref: ImageRef,
        etag: str,
        current: CurrentEtag,
        fields: Any,
        known: Item | _Unread | None = UNREAD,
        limit: Limit | None = None,
        *,
        confirmed: bool = False,
        recorded_is_current: bool = False,
    ) -> ImageRecord:
        """Read, confirm with S3 that `etag` is still the current original, write if the record is
        still at the revision read. Confirming *between* the read and the conditional write is
        what makes it safe: any write that lands after our read (say, a newer upload's) changes
        the revision, so ours fails, and the next round's confirmation sees the newer original.
        `confirmed`: `known` was read before `etag` was stored, which orders it before any newer
        original's record write as well as a confirmation would (`record_upload`): the first
        round skips the HEAD; later rounds (after a conflict) confirm as always.
        `recorded_is_current` (the consumer's result): a record that already names `etag` needs
        no HEAD either. An upload that replaces it writes the record only after its PUT: if that
        came before our read we see its ETag (and confirm); if it comes after, it changes the
        revision and our write fails, or it replaces our write, and its own event makes its
        result. A delete is the same (its record delete fails our write, or follows it). No
        record at all: the write creates it, and `record_result`'s caller asks S3 after it. Only
        a record naming another original leaves the order unknown: then S3 is asked."""
        owner, image_id = ref.owner_and_id
        key = {"user_id": owner, "image_id": image_id}
        for _ in range(WRITE_ATTEMPTS):
            old = await self._table.get(key) if isinstance(known, _Unread) else known
            known = UNREAD  # a conflict means it changed: later rounds read afresh
            revision = int(old.get("revision", 0)) if old else 0
            ordered = confirmed or (
                # The record names `etag` already, or there is none: the caller confirms after.
                recorded_is_current and (old is None or old.get("source_etag") == etag)
            )
            if not ordered and (now_current := await current()) != etag:
                raise Superseded(now_current)
            confirmed = False
            now = now_iso()
            created = old.get("created_at", now) if old else now
            new: dict[str, Any] = {
                **(old or {}),
                **key,
                **fields(old),
                "revision": revision + 1,
                "updated_at": now,
                "created_at": created,
                "created_key": f"{created}#{image_id}",
            }
            if counted_for_another(old, etag):  # its variants are gone: so are their counters
                new.update(variant_bytes=None, variant_count=None, variant_etag=None, variant_names=None)
            new = {k: v for k, v in new.items() if v is not None}
            written = PutItem(
                self._table, new, Missing("user_id") if old is None else Equals("revision", revision)
            )
            # Only a new image can be refused (a replacement's bytes are stored already); one whose
            # record the consumer made first is new too (that record has no upload's facts).
            new_image = old is None or "sha256" not in old
            try:
                await self._with_usage(written, owner, old, new, limit if new_image else None)
            except ConditionFailed:
                continue
            self._changes.notify(ref.source_key)
            return ImageRecord(owner, image_id, new, replaced=old)
        raise RecordConflict(f"record {owner}/{image_id} kept changing")


def counted(item: Mapping[str, Any] | None) -> tuple[int, int]:
    """What a record adds to its owner's counters: (bytes, images)."""
    if item is None:
        return 0, 0
    return int(item.get("bytes", 0)) + int(item.get("variant_bytes", 0)), 1


def _at(item: Mapping[str, Any]) -> Condition:
    """The record is still as read: at its revision (records without one are from before it)."""
    revision = item.get("revision")
    return Equals("revision", revision) if revision is not None else Missing("revision")


async def _single(write: Write) -> None:
    match write:
        case PutItem(table, item, condition):
            await table.put(item, condition)
        case UpdateItem(table, key, changes, condition):
            await table.update(key, changes, condition)
        case DeleteItem(table, key, condition):
            await table.delete(key, condition)


def _variants_of(etag: str) -> tuple[Condition, ...]:
    """The record is of the original `etag`, and its variant counters are for it too."""
    return (
        Equals("source_etag", etag),
        AnyOf((Missing("variant_etag"), Equals("variant_etag", etag))),
    )
