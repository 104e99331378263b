"""Removing an image and everything made from it: the API's delete, and gc's expiry."""

from __future__ import annotations

from config.settings import Mezzanine, Settings
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef, source_key_of
from pipeline.core.ports import ObjectStore
from pipeline.core.records import RecordStore
from pipeline.core.reservations import Reservation


def stale_derivative(key: str, current_etag: str | None) -> bool:
    """Whether the rendition or variant at `key` serves no current original: its original is gone
    (`current_etag` None), or it is a variant of another original than the current one."""
    if current_etag is None:
        return True
    ref = ImageRef(source_key_of(key))
    return key.startswith(ref.variants_prefix()) and not key.startswith(ref.variants_prefix(current_etag))


async def drop_renditions(storage: ObjectStore, settings: Settings, ref: ImageRef) -> None:
    """Delete an image's renditions (whichever exist), its mezzanine too (made while one was
    configured, perhaps no longer)."""
    specs = (*settings.imaging.renditions, Mezzanine(0))
    await storage.delete_many(settings.aws.dest_bucket, [ref.rendition_key(spec) for spec in specs])


async def drop_variants(
    storage: ObjectStore, settings: Settings, ref: ImageRef, *, keep_etag: str | None = None
) -> int:
    """Delete an image's variants (all, or all but those of the original `keep_etag`); returns
    how many went. Their bytes are given back with the record that counted them (the record
    write that replaced or deleted it). One listing when there are none."""
    keep = ref.variants_prefix(keep_etag) if keep_etag else None
    doomed: list[str] = []
    async for page in storage.list_objects(settings.aws.dest_bucket, ref.variants_prefix()):
        doomed += [listed.key for listed in page if keep is None or not listed.key.startswith(keep)]
    await storage.delete_many(settings.aws.dest_bucket, doomed)
    return len(doomed)


async def remove_image(
    storage: ObjectStore, records: RecordStore, settings: Settings, ref: ImageRef
) -> ImageRecord | None:
    """The original, every rendition and variant, then the record (uncounted from the owner's
    usage with it). Idempotent; the record as it was, None if there was none.

    The original goes first, so a message already in flight for the image finds nothing to
    process and is acknowledged; the record goes last, so a retried removal still finds its parts.
    """
    await storage.delete_many(settings.aws.source_bucket, [ref.source_key])
    await drop_renditions(storage, settings, ref)
    await drop_variants(storage, settings, ref)
    old = await records.delete(ref)
    # A variant stored and counted while this ran was put after the listing above and before
    # the record went; once it has gone no variant can be counted, so a second look is the last.
    await drop_variants(storage, settings, ref)
    reserved = Reservation.of(old.item) if old is not None else None
    if reserved is not None and reserved.upload_id is not None:  # a resumable upload, aborted
        await storage.abort_parts(settings.aws.source_bucket, ref.source_key, reserved.upload_id)
    return old


async def expire_image(
    storage: ObjectStore, records: RecordStore, settings: Settings, record: ImageRecord
) -> bool:
    """Remove an image found past its expiry, only as it was read: its record goes first, at
    the revision read (a re-upload meanwhile wrote another, and keeps the image); then its
    original, renditions and variants, but only if the original is still the one the record
    named (else they are a re-upload's, made or in the making). False if nothing was removed."""
    ref = ImageRef.of(record.owner, record.image_id)
    if not await records.delete_if(ref, int(record.item.get("revision", 0))):
        return False
    if await storage.etag_of(settings.aws.source_bucket, ref.source_key) != record.source_etag:
        return True  # what is there is newer; the old original's variants are gc's next time
    await storage.delete_many(settings.aws.source_bucket, [ref.source_key])
    await drop_renditions(storage, settings, ref)
    await drop_variants(storage, settings, ref)
    return True
