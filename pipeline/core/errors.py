"""The service's exception hierarchy: every error class with a code, in this one module.

Every failure the service knows about is one of these, with a stable `code` for clients and
the DLQ, and an HTTP status for the web tier (docs/api.md lists every code; tests/test_docs.py
checks it does). The consumer decides retry or DLQ from the branch
(`TransientError` or `PermanentError`) alone; the web middleware maps `http_status` to a response.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    code = "internal_error"
    http_status = 500
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        #: HTTP headers the web tier adds to the error response (WWW-Authenticate, Retry-After).
        self.headers = headers or {}
        super().__init__(self.message)


class PermanentError(ServiceError):
    """Retrying cannot help: bad input or a missing thing. The consumer dead-letters at once."""

    code = "permanent_error"
    http_status = 400


class TransientError(ServiceError):
    """May succeed later: the consumer retries with backoff, the web tier answers 503."""

    code = "transient_error"
    http_status = 503
    default_message = "a dependency is unavailable, try again"


# Imaging (permanent) -------------------------------------------------------------------------


class NotAnImage(PermanentError):
    code = "not_an_image"
    http_status = 415
    default_message = "the data is not an image of an accepted type"


class FormatNotAllowed(PermanentError):
    code = "format_not_allowed"
    http_status = 415
    default_message = "this image format is not accepted"


class CorruptImage(PermanentError):
    code = "corrupt_image"
    http_status = 422
    default_message = "the image is truncated or corrupt"


class TooManyPixels(PermanentError):
    code = "too_many_pixels"
    http_status = 413
    default_message = "the image has more pixels than allowed"


class TooManyFrames(PermanentError):
    code = "too_many_frames"
    http_status = 413
    default_message = "the animation has more frames than allowed"


class TooLarge(PermanentError):
    code = "too_large"
    http_status = 413
    default_message = "the upload is larger than allowed"


class InvalidRecord(PermanentError):
    """The database refused a request as invalid (an item too large, a key it cannot hold)."""

    code = "invalid_record"
    default_message = "the database refused this record"


class InvalidKey(PermanentError):
    """An object under a key the API cannot address (nested path, bad id, unknown owner): its
    record could be neither downloaded nor deleted by anyone, so it is never made."""

    code = "invalid_key"
    default_message = "the object's key is not {user_id}/{image_id} of a known user"


class ProcessingTimeout(PermanentError):
    """The same original ran out of time twice: it is the image, not the machine."""

    code = "processing_timeout"
    default_message = "the image took too long to process, twice"


class PoisonMessage(PermanentError):
    code = "poison_message"
    default_message = "the message is not a valid S3 event notification"


# Requests (permanent, web-facing) --------------------------------------------------------------


class BadRequest(PermanentError):
    code = "bad_request"
    http_status = 400


class InvalidJson(BadRequest):
    code = "invalid_json"
    default_message = "the request body is not valid JSON"


class InvalidField(BadRequest):
    code = "invalid_field"


class MissingField(BadRequest):
    code = "missing_field"


class EmptyUpload(BadRequest):
    code = "empty_upload"
    default_message = "the upload has no data"


class UploadTimeout(PermanentError):
    code = "upload_timeout"
    http_status = 408
    default_message = "the upload stalled: no data arrived for too long"


class UnsupportedMediaType(PermanentError):
    code = "unsupported_media_type"
    http_status = 415


class UnknownUser(PermanentError):
    code = "unknown_user"
    http_status = 403
    default_message = "this user is not known"


# Accounts ------------------------------------------------------------------------------------


class Unauthenticated(PermanentError):
    """401: the caller must present a valid API key (the response says how: WWW-Authenticate)."""

    code = "unauthenticated"
    http_status = 401


class MissingCredentials(Unauthenticated):
    code = "missing_credentials"
    default_message = "send an API key: Authorization: Bearer <key>"


class InvalidCredentials(Unauthenticated):
    code = "invalid_credentials"
    default_message = "the API key is not valid (unknown, malformed or revoked)"


class TooManyFailedAttempts(PermanentError):
    code = "too_many_failed_attempts"
    http_status = 429
    default_message = "too many failed authentication attempts from this address; wait and retry"


class TooManyWaits(PermanentError):
    code = "too_many_waits"
    http_status = 429
    default_message = "this user has too many long polls waiting; wait for one to end"


class Forbidden(PermanentError):
    code = "forbidden"
    http_status = 403
    default_message = "this key may not act for that user"


class QuotaExceeded(PermanentError):
    code = "quota_exceeded"
    http_status = 403


class ImageQuotaExceeded(QuotaExceeded):
    code = "quota_images_exceeded"
    default_message = "the image count quota of this user is reached; delete images to upload more"


class ByteQuotaExceeded(QuotaExceeded):
    code = "quota_bytes_exceeded"
    http_status = 413
    default_message = "this upload would exceed the storage quota of this user"


class InvalidLink(PermanentError):
    code = "invalid_link"
    http_status = 403
    default_message = "the link is not valid (tampered or malformed)"


class LinkExpired(InvalidLink):
    code = "link_expired"
    default_message = "the link has expired; ask for a new one"


class NotFound(PermanentError):
    code = "not_found"
    http_status = 404
    default_message = "not found"


class WebhookNotSet(NotFound):
    code = "webhook_not_set"
    default_message = "no webhook is set for this user"


class WatermarkNotSet(NotFound):
    code = "watermark_not_set"
    default_message = "no watermark is set: PUT /watermark an image first"


class InvalidWebhookUrl(PermanentError):
    code = "invalid_webhook_url"
    http_status = 422


class KeyNotFound(NotFound):
    code = "key_not_found"
    default_message = "no such API key"


class KeyRevoked(PermanentError):
    code = "key_revoked"
    http_status = 409
    default_message = "the key is revoked"


class ImageExists(PermanentError):
    code = "image_exists"
    http_status = 409
    default_message = "an image with this id exists; upload-url makes new images only (PUT replaces)"


class UploadPending(PermanentError):
    """The image is reserved for a presigned upload whose URL still works."""

    code = "upload_pending"
    http_status = 409
    default_message = "an upload URL for this image is outstanding; use it, or wait until it expires"


class UploadModeDisabled(PermanentError):
    code = "upload_mode_disabled"
    http_status = 403


class UploadMismatch(PermanentError):
    """What arrived at a presigned upload's key is not what its URL was made for."""

    code = "upload_mismatch"
    http_status = 422


class UploadNotReserved(PermanentError):
    """Bytes arrived with a reservation that no longer exists (released, or the image deleted)."""

    code = "upload_not_reserved"
    http_status = 410
    default_message = "the upload's reservation was released before its bytes arrived; they were removed"


class ImageNotFound(NotFound):
    code = "image_not_found"
    default_message = "no such image"


class ImageChanged(ImageNotFound):
    """What a link or a ranged read was made for is gone: the image was replaced or deleted since."""

    code = "image_changed"
    default_message = "the image was replaced or deleted since this was asked for; ask again"


class SourceMissing(NotFound):
    """The original was deleted before the consumer got to it: acknowledged, not retried."""

    code = "source_missing"
    default_message = "the original image no longer exists"


class RangeNotSatisfiable(PermanentError):
    code = "range_not_satisfiable"
    http_status = 416
    default_message = "the requested range is not satisfiable"


# Dependencies (transient) -----------------------------------------------------------------------


class StorageUnavailable(TransientError):
    code = "storage_unavailable"
    default_message = "object storage is unavailable"


class UploadCompleting(TransientError):
    """Another request is joining this resumable upload's parts right now."""

    code = "upload_completing"
    default_message = "the upload's parts are being joined; ask again in a moment"


class InsufficientStorage(TransientError):
    """The local data directory's disk is (nearly) full: retried later, and deletes still work."""

    code = "insufficient_storage"
    http_status = 507
    default_message = "the server's storage is full; retry later (deleting images still works)"


class DatabaseUnavailable(TransientError):
    code = "database_unavailable"
    default_message = "the database is unavailable; try again shortly"


class QueueUnavailable(TransientError):
    code = "queue_unavailable"
    default_message = "the queue is unavailable"


class LeaseLost(TransientError):
    """Our receipt handle is no longer valid: another consumer owns the message now."""

    code = "lease_lost"
    default_message = "the message's receipt handle is no longer valid"


class WorkerCrashed(TransientError):
    code = "worker_crashed"
    default_message = "the image worker process died"


class JobTimeout(TransientError):
    code = "job_timeout"
    default_message = "processing took longer than allowed"


# The refusals and failures of particular parts: the consumer, variants, webhooks, records,
# public images, idempotency keys, uploads and the HTTP server.


class UnexpectedError(TransientError):
    """A bug, not a known failure: retried like a transient error, so it can never lose a message."""

    code = "unexpected_error"


class TooManyVariants(PermanentError):
    code = "too_many_variants"
    http_status = 422


class VariantTooCostly(PermanentError):
    """The variant would take a worker longer than `IMGSVC_VARIANT_MAX_COST` allows."""

    code = "variant_too_costly"
    http_status = 422


class WebhookAddressRefused(PermanentError):
    """The webhook's host name resolves only to private addresses (`PrivateAddress`)."""

    code = "private_address"
    http_status = 422


class RecordConflict(TransientError):
    """The record kept changing under a writer: retried later like any transient failure."""

    code = "record_conflict"
    default_message = "the image record kept changing; try again"


class ImageNotPublic(PermanentError):
    code = "image_not_public"
    http_status = 409
    default_message = 'the image is private: make it public first (PATCH {"public": true})'


class PublicImagesDisabled(PermanentError):
    code = "public_images_disabled"
    http_status = 403
    default_message = "this deployment serves no public images (IMGSVC_PUBLIC_IMAGES=off)"


class IdempotencyKeyInUse(PermanentError):
    code = "idempotency_key_in_use"
    http_status = 409
    default_message = "a request with this Idempotency-Key is still in progress; retry when it has ended"


class IdempotencyKeyReused(PermanentError):
    code = "idempotency_key_reused"
    http_status = 422
    default_message = "this Idempotency-Key was used for a different request (another route or other bytes)"


class InvalidIdempotencyKey(BadRequest):
    code = "invalid_idempotency_key"
    default_message = "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces"


class RenditionNotFound(NotFound):
    code = "rendition_not_found"


class TooManyUploads(PermanentError):
    code = "too_many_uploads"
    http_status = 429
    default_message = "this user has too many uploads in progress; wait for one to finish"


class UploadsBusy(TransientError):
    code = "uploads_busy"
    default_message = "the server has no room for another upload right now; retry shortly"


class VariantTooLarge(PermanentError):
    code = "variant_too_large"
    http_status = 422


class TooManyFailedVariants(PermanentError):
    code = "too_many_failed_variants"
    http_status = 429


class TooManyPendingVariants(PermanentError):
    code = "too_many_pending_variants"
    http_status = 429


class TooManyNewVariants(PermanentError):
    code = "too_many_new_variants"
    http_status = 429
    default_message = "too many new variants asked for in the last minute; retry later"


class VariantTimeout(TransientError):
    code = "variant_timeout"
    http_status = 503


class VariantsBusy(TransientError):
    code = "variants_busy"
    http_status = 503
    default_message = "too many variants are being made right now; retry shortly"


class HostNotAllowed(BadRequest):
    code = "host_not_allowed"


class TooManyClientRequests(PermanentError):
    """A client behind a trusted proxy has its share of requests in progress already."""

    code = "too_many_connections"
    http_status = 429
    default_message = "this client has too many requests in progress; finish some first"


class RequestTimeout(UploadTimeout):
    """The client was too slow sending a request body; raised from the handler's next read."""

    code = "request_timeout"
    default_message = "the request body arrived too slowly"


class NoSuchPublicImage(NotFound):
    code = "not_found"
    default_message = "no public image here: it is private, was replaced or deleted, or never was"


class FileNotInInput(NotFound):
    code = "file_not_found"
    default_message = "no such file in the input folder"


class VariantCrashed(VariantsBusy):
    """The worker making the variant died (the image may be what killed it)."""

    code = "variant_crashed"
