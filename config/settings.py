"""Typed, frozen settings built from environment variables.

Every limit of the service lives here with a sensible default. `Settings.from_env` takes the
environment as a parameter (tests pass a dict) and fails at start-up naming the bad variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

PREFIX = "IMGSVC_"
Mode = Literal["embedded", "aws", "local"]
N = TypeVar("N", int, float)

#: Formats the pipeline accepts, named as `pipeline.core.formats.detect_format` names them.
KNOWN_FORMATS = frozenset({"jpeg", "png", "webp", "gif", "tiff", "heif", "avif"})
#: How clients may send an image's bytes (`IMGSVC_UPLOAD_MODES`).
UPLOAD_MODES = frozenset({"api", "presigned"})
OUTPUT_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp", "avif": "avif"}
#: How an on-demand variant fits its box, and how `cover` chooses what to keep.
VARIANT_FITS = ("contain", "cover", "fill", "pad")
VARIANT_CROPS = ("centre", "attention", "entropy", "focal", "faces")
#: Variant operations a preset may name as `key=value` (`pipeline.imaging.operations`).
VARIANT_OPERATIONS = (
    "dpr", "trim", "rotate", "flip", "flop", "blur", "sharpen", "bg",
    "watermark", "gravity", "opacity", "scale",
)  # fmt: skip
_PRESET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_PRESET_BOX = re.compile(r"(?P<w>[1-9][0-9]{0,4})?(?:x(?P<h>[1-9][0-9]{0,4}))?")
#: The five user ids of the original system, kept as demo users.
SEED_USER_IDS = (
    "eb2128f2-5c0a-4dd1-90a5-2f0e39db7aa3",
    "ebe7b1c9-951b-4f92-aa42-9d65c19a8fc5",
    "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e",
    "b92a45f3-147d-4829-a362-d798282a041e",
    "6edc5e55-2c2a-4e3e-8d1c-5044f6c68d09",
)
_RENDITION_RE = re.compile(r"^(?P<side>[1-9][0-9]{0,4})(?::(?P<fmt>[a-z]+))?(?::(?P<q>[1-9][0-9]?|100))?$")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (taskset, a container's cpuset), not the
    machine's count, which `os.cpu_count()` gives. Sized by the machine's, a pool pinned to one
    CPU of two ran two decoder threads on it, 14% slower than one (BENCHMARKS.md)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class ConfigError(ValueError):
    """A setting has an invalid value; the message starts with the variable's name."""


@dataclass(frozen=True)
class RenditionSpec:
    """One output of the pipeline: longest side in pixels, format and quality."""

    max_side: int
    format: str = "jpeg"
    quality: int = 85

    @property
    def name(self) -> str:
        """Stable name used in URLs (`?size=256`) and keys (`256.jpg`)."""
        return str(self.max_side) if self.format == "jpeg" else f"{self.max_side}-{self.format}"

    @property
    def filename(self) -> str:
        return f"{self.max_side}.{OUTPUT_FORMATS[self.format]}"

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"


#: How much longer than a mezzanine an original's longest side must be for one to be made: a
#: little smaller saves less decoding than it costs.
MEZZANINE_MARGIN = 1.5
#: What a mezzanine is encoded with: JPEG (the fastest decode, shrinks on load) at a quality whose
#: loss is below what a variant made of it keeps (BENCHMARKS.md measures the SSIM).
MEZZANINE_QUALITY = 90


@dataclass(frozen=True)
class Mezzanine(RenditionSpec):
    """The mezzanine (`ImagingSettings.mezzanine`): made and stored as a rendition is, but never
    served: variants read it in the original's place."""

    format: str = "jpeg"
    quality: int = MEZZANINE_QUALITY

    @property
    def name(self) -> str:
        return MEZZANINE

    @property
    def filename(self) -> str:
        return f"{MEZZANINE}.jpg"


#: The mezzanine's name among an image's renditions (its key is `{original}/mezzanine.jpg`).
MEZZANINE = "mezzanine"


@dataclass(frozen=True)
class Var:
    """How one setting is read from the environment (in a field's `Annotated` type).

    The variable is `IMGSVC_` + the section's `ENV_PREFIX` + the field's name in capitals,
    unless `name` says otherwise; numbers need their bounds; `read` names an `_Env` method for
    values with a shape of their own; `choices` limits a text to a few words. Fields without a
    `Var` are not read from the environment (they are worked out from other settings).
    """

    lo: float | None = None
    hi: float | None = None
    name: str | None = None
    read: str | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class AwsSettings:
    """Where the service's resources are (AWS, the embedded endpoint, or a local data directory)
    and what they are called (the local backend uses the same names)."""

    ENV_PREFIX: ClassVar[str] = ""

    #: Which backend: AWS (or any endpoint speaking its APIs), the embedded one, or a data
    #: directory (`LocalSettings`); the resources' names below are the same for all three.
    mode: Mode = "embedded"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    #: Hand clients URLs to the embedded endpoint (presigned uploads), which checks no signatures:
    #: only where nobody untrusted can reach it (tests, a single-user machine).
    embedded_trusted: Annotated[bool, Var()] = False
    #: An S3-compatible store for the objects alone (MinIO, R2, SeaweedFS, Garage): its endpoint and
    #: the key it knows the service by. Queues and tables stay where `endpoint_url` (or AWS) is,
    #: or in the data directory (mode "local"); empty, S3 is there too, with the same credentials
    #: (with a data directory: the objects are there too).
    s3_endpoint_url: Annotated[str, Var()] = ""
    s3_access_key_id: Annotated[str, Var()] = ""
    s3_secret_access_key: Annotated[str, Var()] = field(default="", repr=False)
    #: Whether the object store sends ObjectCreated events to the queue (S3 and MinIO can; R2
    #: and SeaweedFS cannot): false, the service announces the originals it writes itself, and
    #: presigned uploads (which it never sees) are refused at start. With a data directory the
    #: service always announces them (no store reaches its queue), so this is not read there.
    s3_notifications: Annotated[bool, Var()] = True
    embedded_host: Annotated[str, Var()] = "127.0.0.1"
    embedded_port: Annotated[int, Var(0, 65535)] = 4566
    source_bucket: Annotated[str, Var(read="bucket")] = "image-service-source"
    dest_bucket: Annotated[str, Var(read="bucket")] = "image-service-thumbnails"
    queue_name: Annotated[str, Var(read="queue")] = "image-service-events"
    dlq_name: Annotated[str, Var(read="queue")] = "image-service-dlq"
    #: The webhook outbox (events owed to users' webhooks) and where events go that exhausted
    #: their delivery attempts.
    outbox_name: Annotated[str, Var(read="queue")] = "image-service-webhooks"
    outbox_dlq_name: Annotated[str, Var(read="queue")] = "image-service-webhooks-dlq"
    #: DynamoDB tables are `{prefix}-users`, `-keys`, `-images`, `-throttle`, `-config` and `-requests`.
    table_prefix: Annotated[str, Var(read="table_prefix")] = "image-service"
    max_pool_connections: Annotated[int, Var(1, 1000)] = 32
    connect_timeout: Annotated[float, Var(0.1, 300, name="AWS_CONNECT_TIMEOUT")] = 5.0
    read_timeout: Annotated[float, Var(0.1, 900, name="AWS_READ_TIMEOUT")] = 30.0

    def table(self, name: str) -> str:
        return f"{self.table_prefix}-{name}"

    @property
    def effective_endpoint(self) -> str | None:
        """The endpoint clients use: the configured one, else the embedded server's, else AWS's."""
        if self.endpoint_url:
            return self.endpoint_url
        if self.mode == "embedded":
            return f"http://{self.embedded_host}:{self.embedded_port}"
        return None


@dataclass(frozen=True)
class LocalSettings:
    """The local backend: a data directory of files and SQLite (mode "local")."""

    ENV_PREFIX: ClassVar[str] = ""

    #: The directory (`IMGSVC_DATA_DIR`, `--data-dir`): set means mode "local".
    data_dir: Path | None = None
    #: Free bytes the data directory's disk keeps: under it, uploads are refused (507) and
    #: readiness says `disk_low`, so deletes still have room (0: only a full disk refuses).
    min_free_bytes: Annotated[int, Var(0, 2**50)] = 256 * 1024 * 1024


@dataclass(frozen=True)
class ImagingSettings:
    """What the pipeline accepts and what it makes."""

    ENV_PREFIX: ClassVar[str] = ""

    renditions: Annotated[tuple[RenditionSpec, ...], Var(read="renditions")] = (RenditionSpec(256),)
    max_bytes: Annotated[int, Var(1, 5 * 1024**3)] = 50 * 1024 * 1024
    max_pixels: Annotated[int, Var(1, 2**31)] = 100_000_000
    max_frames: Annotated[int, Var(1, 100_000)] = 1000
    #: JPEG renditions up to this many pixels on the longest side are made by Pillow with draft
    #: (measured faster there); larger ones by pyvips. See BENCHMARKS.md.
    pillow_max_side: Annotated[int, Var(0, 100_000)] = 256
    allowed_formats: Annotated[frozenset[str], Var(read="formats")] = KNOWN_FORMATS
    #: Serve originals without their private metadata (EXIF, GPS, XMP, IPTC): a stripped copy,
    #: made on first request; the owner may still ask for the bytes as uploaded.
    strip_originals: Annotated[bool, Var()] = True
    #: Jobs an imaging worker process runs before it is replaced by a fresh one (0: no limit):
    #: whatever a decoder leaks or fragments is given back with the process.
    worker_max_jobs: Annotated[int, Var(0, 10_000_000)] = 1000
    #: Resident bytes past which an idle worker is replaced (0: never): one huge image must not
    #: leave a worker holding its peak for good. Workers hand freed memory back after each job.
    worker_max_rss: Annotated[int, Var(0, 1024**4)] = 512 * 1024 * 1024

    #: The longest side of a mezzanine (0: none): a copy of each large single-frame opaque
    #: original, made with its renditions, that variants fitting inside it decode instead of the
    #: original (`pipeline.imaging.variants.from_mezzanine`). It costs one larger decode and
    #: one JPEG encode per upload, and its bytes in storage (BENCHMARKS.md, "Mezzanine").
    mezzanine: Annotated[int, Var(0, 16_384)] = 0

    def rendition(self, name: str) -> RenditionSpec | None:
        return next((r for r in self.renditions if r.name == name), None)

    @property
    def mezzanine_spec(self) -> Mezzanine | None:
        return Mezzanine(self.mezzanine) if self.mezzanine else None

    @property
    def stored_renditions(self) -> tuple[RenditionSpec, ...]:
        """Every rendition an original may have stored: the configured ones and the mezzanine."""
        spec = self.mezzanine_spec
        return self.renditions if spec is None else (*self.renditions, spec)

    def made_for(self, longest_side: int, single_opaque: bool) -> tuple[RenditionSpec, ...]:
        """The renditions made of an original whose longest side (as displayed) is `longest_side`:
        the configured ones, and the mezzanine where it is worth one (the original at least
        `MEZZANINE_MARGIN` times its side, one frame, no alpha: a JPEG holds neither)."""
        spec = self.mezzanine_spec
        if spec is None or not single_opaque or longest_side < spec.max_side * MEZZANINE_MARGIN:
            return self.renditions
        return (*self.renditions, spec)


#: Default in-flight messages per imaging worker (`IMGSVC_CONSUMER_MAX_IN_FLIGHT=0`).
IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True)
class ConsumerSettings:
    """Concurrency, retries and timeouts of the SQS consumer pool."""

    ENV_PREFIX: ClassVar[str] = "CONSUMER_"

    receivers: Annotated[int, Var(1, 64)] = 2
    batch_size: Annotated[int, Var(1, 10)] = 10
    #: 0: `IN_FLIGHT_PER_WORKER` x workers. More only hoards messages that other consumer
    #: processes could be working on (measured: see BENCHMARKS.md, scaling across processes).
    max_in_flight: Annotated[int, Var(0, 10_000)] = 0
    workers: Annotated[int, Var(1, 256)] = field(default_factory=usable_cpus)
    #: Decoder threads per worker (libvips, AVIF); 0: the cores shared out among the workers.
    #: Several consumer processes on one machine each set it so they do not oversubscribe.
    worker_threads: Annotated[int, Var(0, 256)] = 0
    #: One owner's messages in flight at once per consumer process; past it, its messages are
    #: deferred (sent again with a short, growing delay). 0: half of the in-flight limit.
    user_max_in_flight: Annotated[int, Var(0, 10_000)] = 0
    wait_time_seconds: Annotated[int, Var(0, 20)] = 20
    visibility_timeout: Annotated[int, Var(1, 43_200)] = 60
    max_attempts: Annotated[int, Var(1, 100)] = 5
    backoff_base: Annotated[float, Var(0, 3600)] = 2.0
    backoff_max: Annotated[float, Var(0, 43_200)] = 300.0
    job_timeout: Annotated[float, Var(0.1, 43_200)] = 120.0
    drain_timeout: Annotated[float, Var(0, 3600)] = 30.0
    delete_flush_seconds: Annotated[float, Var(0, 10)] = 0.05
    #: `python -m pipeline consumer` serves Prometheus metrics here (0: not at all).
    metrics_host: Annotated[str, Var(name="METRICS_HOST")] = "127.0.0.1"
    metrics_port: Annotated[int, Var(0, 65535, name="METRICS_PORT")] = 9464

    @property
    def in_flight_limit(self) -> int:
        """Messages one consumer process holds at once: enough to overlap S3 transfers with
        resizing on every worker, few enough not to starve other consumer processes."""
        return self.max_in_flight or IN_FLIGHT_PER_WORKER * self.workers

    @property
    def user_in_flight_limit(self) -> int:
        """One owner's share of the in-flight messages: half, so the rest keep receiving and
        another owner's message is found while one owner's backlog runs."""
        return self.user_max_in_flight or max(1, self.in_flight_limit // 2)

    @property
    def redrive_max_receive_count(self) -> int:
        """Safety net above our own attempts, for consumers that die mid-message."""
        return self.max_attempts + 2


@dataclass(frozen=True)
class WebSettings:
    """The HTTP API."""

    ENV_PREFIX: ClassVar[str] = ""

    host: Annotated[str, Var()] = "127.0.0.1"
    port: Annotated[int, Var(0, 65535)] = 8080
    #: Serving processes on the port (`--workers`; `auto`: the CPUs this process may use; 1: this
    #: process alone, consumer included, as before). More than one runs under a supervisor.
    workers: Annotated[int, Var(read="workers")] = 0
    #: Where health, readiness and metrics are answered apart from the API (`--admin-port`):
    #: no client's connections, deadlines or caps reach it. Loopback by default; 0 picks a port.
    admin_host: Annotated[str, Var()] = "127.0.0.1"
    admin_port: Annotated[int, Var(0, 65535)] = 8081
    #: How often the API works out its readiness for the admin listener (each time: a HEAD of each
    #: bucket, the queue's attributes, a read of the images table).
    readiness_seconds: Annotated[float, Var(0.1, 3600)] = 2.0
    part_size: Annotated[int, Var(5 * 1024 * 1024, 5 * 1024**3, name="UPLOAD_PART_SIZE")] = 8 * 1024 * 1024
    #: Connections this process holds at once. Past it, an idle or half-sent connection is
    #: closed to make room, else the new one is refused with 503: file descriptors stay free
    #: for the AWS clients, the embedded endpoint and health checks.
    max_connections: Annotated[int, Var(8, 1_000_000)] = 1000
    #: Connections one client address may hold at once (0: no cap). Past it, that client's own
    #: idle connection is closed to make room, else the new one is refused with 429. Behind a
    #: trusted proxy the cap counts the requests in progress of each forwarded client instead.
    max_connections_per_client: Annotated[int, Var(0, 1_000_000)] = 64
    #: Proxies (addresses or CIDR networks, comma-separated) whose `X-Forwarded-For` / `Forwarded`
    #: name the client: a request from one of them is the client's, for every per-client share.
    trusted_proxies: Annotated[tuple[str, ...], Var(read="networks")] = ()
    #: The one header those proxies write the client into (the other is never read).
    forwarded_header: Annotated[str, Var(choices=("x-forwarded-for", "forwarded"))] = "x-forwarded-for"
    #: Seconds a client has to send a request's headers (from its first byte, or from accept).
    header_timeout: Annotated[float, Var(0.1, 3600)] = 20.0
    #: Seconds an idle keep-alive connection stays open (longer than a load balancer's idle
    #: timeout, so the balancer closes first; idle connections are also the first evicted).
    keepalive_timeout: Annotated[float, Var(0.1, 3600)] = 75.0
    #: Seconds a body may take to start, and the longest pause between its bytes.
    body_timeout: Annotated[float, Var(0.1, 3600)] = 20.0
    #: Bytes per second a body must average once started (mod_reqtimeout's MinRate): every
    #: `body_min_rate` bytes received buy one more second of waiting.
    body_min_rate: Annotated[int, Var(0, 1024**3)] = 500
    #: Seconds a response may wait for the client to read what was already sent.
    send_timeout: Annotated[float, Var(0.1, 3600)] = 60.0
    #: Bytes per second a client must read a response at, averaged over the time it is behind
    #: (0: no floor): a slower reader is cut off, so it holds a connection for a bounded time.
    send_min_rate: Annotated[int, Var(0, 1024**3)] = 8192
    #: Seconds of waiting on a client over which its reading rate is averaged.
    send_rate_window: Annotated[float, Var(0.5, 3600)] = 20.0
    #: Bytes of upload buffers (S3 parts in the making) this process holds at once.
    upload_buffer_bytes: Annotated[int, Var(5 * 1024 * 1024, 1024**4)] = 256 * 1024 * 1024
    #: Seconds an upload waits for buffer space before it is answered 503 with Retry-After.
    upload_buffer_wait: Annotated[float, Var(0, 3600)] = 10.0
    #: Uploads one user may have in progress at once in this process (0: no limit).
    user_max_uploads: Annotated[int, Var(0, 100_000)] = 8
    #: What one user's uploads may cost the consumer to decode, in megapixels (x frames, at least
    #: one per upload, from the header) a second on average in this process, and in a burst (0: no limit).
    user_upload_megapixels_per_second: Annotated[float, Var(0, 1_000_000)] = 50.0
    user_upload_megapixels_burst: Annotated[float, Var(1, 100_000_000)] = 2000.0
    #: Long polls (`GET /images/{id}?wait=`) one user may have waiting at once in this process
    #: (0: no limit); past it, 429 with `Retry-After`.
    user_max_waits: Annotated[int, Var(0, 100_000)] = 4
    cache_control: Annotated[str, Var()] = "private, max-age=3600"
    #: Seconds a client is told to wait (`Retry-After`) when the service is busy.
    retry_after: Annotated[int, Var(1, 3600)] = 2
    #: Where the original API's `file_name` uploads are read from.
    input_dir: Annotated[Path, Var()] = Path("input")
    #: Default: on in the embedded and local modes (one command runs everything), off on AWS.
    run_consumer: Annotated[bool, Var()] = True
    #: How clients may send an image's bytes: `api` (PUT/POST /images, through this API) and
    #: `presigned` (`POST /images/upload-url` authorises one PUT straight to S3, or on the local
    #: backend to this API's `/uploads/...`; the consumer completes the record from S3's event).
    upload_modes: Annotated[frozenset[str], Var(read="upload_modes")] = frozenset({"api"})
    #: Seconds a presigned upload URL works (its reservation is released after that, and a margin).
    upload_url_seconds: Annotated[int, Var(60, 7 * 86_400)] = 900
    #: Seconds a resumable (multipart) upload may take, resumed as often as need be: its
    #: reservation holds that long (each part's URL works `upload_url_seconds`, and fresh ones
    #: are given on asking); a day matches the buckets' rule aborting incomplete uploads.
    #: At most a day: the buckets' lifecycle rule and gc's default abort older uploads.
    multipart_upload_seconds: Annotated[int, Var(60, 86_400)] = 86_400
    #: Seconds between an API process's sweeps of every unused reservation that fell due (each
    #: process also releases the ones it made as they fall due); 0: only those.
    reservation_sweep_seconds: Annotated[int, Var(0, 7 * 86_400)] = 3600
    #: Scheme and host clients reach the API at (behind a proxy or CDN), for the absolute URLs
    #: the API hands out; empty: taken from each request.
    public_url: Annotated[str, Var(read="public_url")] = ""
    #: Whether images may be made public (`off`: no upload or PATCH makes one, and no public URL
    #: answers), and where public URLs point (a CDN's host; empty: `public_url`, else the API's).
    public_images: Annotated[bool, Var()] = True
    delivery_url: Annotated[str, Var(read="public_url")] = ""

    @property
    def serving_processes(self) -> int:
        """`workers`, with `auto` (0) as the CPUs this process may use."""
        return self.workers or usable_cpus()

    #: Without `public_url`: the `Host` names links may be made for (comma-separated; `.example.com`
    #: allows its subdomains, `*` any host); empty: loopback only. Others are refused (400).
    allowed_hosts: Annotated[tuple[str, ...], Var(read="hosts")] = ()


@dataclass(frozen=True)
class AccountSettings:
    """Who may call, how much they may store, and how long shared links live."""

    ENV_PREFIX: ClassVar[str] = ""

    #: Failed authentications per client address and window before 429 (shared through DynamoDB).
    auth_failures_allowed: Annotated[int, Var(1, 100_000)] = 20
    auth_failure_window: Annotated[int, Var(1, 86_400)] = 60
    #: Seconds a web process trusts a key it verified without reading it again: a key revoked
    #: elsewhere stops working within this long in every process; 0 reads it on every request.
    key_cache_seconds: Annotated[float, Var(0, 300)] = 10
    #: Days an image is kept unless its upload says otherwise (`expires_in_days`); 0: for ever.
    #: Expired images are removed by `python -m pipeline gc`.
    retention_days: Annotated[int, Var(0, 36_500)] = 0
    #: Per-user quotas; 0 means unlimited.
    quota_bytes: Annotated[int, Var(0, 2**62)] = 0
    quota_images: Annotated[int, Var(0, 2**62)] = 0
    #: HMAC secret for signed links; empty: one generated once and shared through DynamoDB.
    signing_secret: Annotated[str, Var()] = ""
    link_max_seconds: Annotated[int, Var(1, 7 * 24 * 3600)] = 7 * 24 * 3600
    #: `hmac`: links served by the API; `s3`: S3 presigned URLs (downloads offloaded to S3/CDN).
    links: Annotated[str, Var(choices=("hmac", "s3"))] = "hmac"
    #: Where the embedded stack writes the demo users' API keys (secrets: mode 0600); with a
    #: data directory, inside it by default.
    demo_keys_file: Annotated[Path, Var()] = Path("demo-keys.json")


@dataclass(frozen=True)
class WebhookSettings:
    """Completion webhooks: how hard to try, and where a webhook may point."""

    ENV_PREFIX: ClassVar[str] = "WEBHOOK_"

    #: Delivery attempts per event (the first included), with exponential backoff between them.
    attempts: Annotated[int, Var(1, 100)] = 6
    backoff_base: Annotated[float, Var(0, 3600)] = 1.0
    backoff_max: Annotated[float, Var(0, 86_400)] = 60.0
    #: Seconds for one POST, from connecting to the answer's status and headers (never its body).
    timeout: Annotated[float, Var(0.1, 300)] = 5.0
    #: POSTs in progress at once per process, and at most `per_user` of them to one user's webhook
    #: (a slow or dead receiver holds up its owner's events, not everyone's).
    concurrency: Annotated[int, Var(1, 1000)] = 8
    per_user: Annotated[int, Var(1, 1000)] = 2
    #: Let webhooks point at loopback, private and link-local addresses (off: SSRF protection).
    allow_private: Annotated[bool, Var()] = False
    #: How long a stopping consumer lets the POSTs under way finish (what it does not finish stays
    #: in the outbox for the next consumer).
    drain_timeout: Annotated[float, Var(0, 3600)] = 10.0


@dataclass(frozen=True)
class VariantSettings:
    """On-demand variants (`GET /images/{id}/variant`): what may be asked, and how much work."""

    ENV_PREFIX: ClassVar[str] = "VARIANT_"

    #: Longest side a variant may ask for, and most pixels of its box.
    max_side: Annotated[int, Var(16, 16_384)] = 4096
    max_pixels: Annotated[int, Var(256, 268_435_456)] = 16_777_216
    #: Distinct variants stored per image (of its current original); more are refused (422).
    per_image: Annotated[int, Var(1, 10_000)] = 50
    #: New variants one user may have made per minute in one process; past it, 429.
    per_user_per_minute: Annotated[int, Var(1, 1_000_000)] = 120
    #: Worker processes of the API process that make variants (never the event loop).
    workers: Annotated[int, Var(1, 64)] = 1
    #: Variants waiting for a worker per process beyond which new ones are refused (503): a
    #: gallery page (20) at first sight fits, and a waiting variant holds no original yet.
    max_waiting: Annotated[int, Var(0, 100_000)] = 64
    #: Seconds one variant may take once its worker started it.
    timeout: Annotated[float, Var(0.1, 3600)] = 30.0
    #: Quality when a request names none, and the highest one stored (a request for more gets this).
    quality: Annotated[int, Var(1, 100)] = 80
    max_quality: Annotated[int, Var(1, 100)] = 90
    #: Estimated worker milliseconds one variant may cost (decode plus every frame's encode, by
    #: format; `pipeline.imaging.variants.VariantSpec.cost`); more is refused (422 `variant_too_costly`).
    max_cost: Annotated[int, Var(1, 3_600_000)] = 8000
    #: A stored variant's bytes at most this many times its original's (and never above
    #: `IMGSVC_MAX_BYTES`); a larger one is refused (422 `variant_too_large`), not stored.
    max_growth: Annotated[float, Var(0.1, 1000)] = 4.0
    #: Variants one user may have made or waiting at once in this process (429 beyond).
    user_max_pending: Annotated[int, Var(1, 10_000)] = 4
    #: Failed or timed-out variants one user may cause per hour in this process before its new
    #: ones are refused (429) until the hour is over.
    user_failures_per_hour: Annotated[int, Var(1, 1_000_000)] = 20
    #: Named variants (`?preset=card`), each as the query it stands for: `card=400x300:cover:webp`.
    presets: Annotated[tuple[tuple[str, tuple[tuple[str, str], ...]], ...], Var(read="presets")] = ()
    #: Serve presets only (the safe choice when links are public): any other variant is a 400.
    presets_only: Annotated[bool, Var()] = False
    #: The deployment's watermark (`watermark=site`, for presets above all): a PNG, WebP or JPEG
    #: file read at start, at most `watermark_max_bytes`.
    watermark_file: Annotated[str, Var()] = ""
    #: Largest watermark image a user may upload (`PUT /watermark`) or the deployment name, and
    #: its longest side: it is kept with the user's record and sent to the worker of each variant.
    watermark_max_bytes: Annotated[int, Var(1024, 4 * 1024 * 1024)] = 128 * 1024
    watermark_max_side: Annotated[int, Var(16, 8192)] = 2048

    def preset(self, name: str) -> dict[str, str] | None:
        return next((dict(query) for named, query in self.presets if named == name), None)


@dataclass(frozen=True)
class Settings:
    """All settings of one process."""

    ENV_PREFIX: ClassVar[str] = ""

    aws: AwsSettings = AwsSettings()
    local: LocalSettings = LocalSettings()
    imaging: ImagingSettings = ImagingSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    web: WebSettings = WebSettings()
    accounts: AccountSettings = AccountSettings()
    webhooks: WebhookSettings = WebhookSettings()
    variants: VariantSettings = VariantSettings()
    log_level: Annotated[str, Var(choices=("DEBUG", "INFO", "WARNING", "ERROR"))] = "INFO"
    log_format: Annotated[str, Var(choices=("auto", "json", "text"))] = "auto"
    use_uvloop: Annotated[bool, Var(name="UVLOOP")] = True
    loop_debug: Annotated[bool, Var()] = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: `os.environ`), validating every value."""
        env = _Env(os.environ if environ is None else environ)
        aws_configured = any(env.raw(n) for n in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"))
        mode_raw = env.choice("MODE", "auto", ("auto", "embedded", "aws", "local"))
        data_dir_raw = env.raw(f"{PREFIX}DATA_DIR")
        mode: Mode = "embedded" if mode_raw == "embedded" else "local" if mode_raw == "local" else "aws"
        if mode_raw == "auto":
            mode = "local" if data_dir_raw else "aws" if aws_configured else "embedded"
        if (mode == "local") != bool(data_dir_raw):
            raise ConfigError(
                f"{PREFIX}DATA_DIR: the local mode needs a data directory, and only the local mode uses one"
            )
        data_dir = Path(data_dir_raw).expanduser().resolve() if data_dir_raw else None
        aws = env.section(
            AwsSettings,
            mode=mode,
            endpoint_url=env.raw("AWS_ENDPOINT_URL") or None,
            region=env.raw("AWS_REGION") or env.raw("AWS_DEFAULT_REGION") or AwsSettings.region,
        )
        if bool(aws.s3_access_key_id) != bool(aws.s3_secret_access_key):
            raise ConfigError(f"{PREFIX}S3_ACCESS_KEY_ID and {PREFIX}S3_SECRET_ACCESS_KEY go together")
        if aws.source_bucket == aws.dest_bucket:
            raise ConfigError(f"{PREFIX}DEST_BUCKET: must differ from the source bucket, or thumbnails loop")
        queues = [aws.queue_name, aws.dlq_name, aws.outbox_name, aws.outbox_dlq_name]
        if len(set(queues)) < len(queues):
            raise ConfigError(
                f"{PREFIX}QUEUE_NAME, {PREFIX}DLQ_NAME, {PREFIX}OUTBOX_NAME and {PREFIX}OUTBOX_DLQ_NAME"
                " must name four different queues"
            )
        web = env.section(WebSettings, defaults={"run_consumer": mode in ("embedded", "local")})
        # The local backend's presigned uploads come through its own routes, whatever the store.
        if "presigned" in web.upload_modes and not aws.s3_notifications and mode != "local":
            raise ConfigError(
                f"{PREFIX}UPLOAD_MODES: presigned uploads go to the store without the service, which "
                f"learns of them from the store's notifications; {PREFIX}S3_NOTIFICATIONS=false says "
                "there are none"
            )
        if mode == "embedded" and "presigned" in web.upload_modes and not aws.embedded_trusted:
            raise ConfigError(
                f"{PREFIX}UPLOAD_MODES: presigned uploads would hand clients URLs to the embedded AWS "
                "endpoint, which checks no signatures (anyone reaching it could read every secret "
                f"and overwrite any image); use --data-dir or AWS, or set {PREFIX}EMBEDDED_TRUSTED=true "
                "if only trusted clients can reach it"
            )
        if web.part_size > web.upload_buffer_bytes:
            raise ConfigError(
                f"{PREFIX}UPLOAD_BUFFER_BYTES: must hold at least one part of {PREFIX}UPLOAD_PART_SIZE "
                f"({web.part_size} bytes)"
            )
        # With a data directory the demo keys live beside the data they open.
        keys_default = {"demo_keys_file": data_dir / "demo-keys.json"} if data_dir else {}
        accounts = env.section(AccountSettings, defaults=keys_default)
        if accounts.links == "s3" and data_dir is not None:
            raise ConfigError(
                f"{PREFIX}LINKS: s3 presigned links need S3; the local backend serves hmac links"
            )
        variants = env.section(VariantSettings)
        if variants.presets_only and not variants.presets:
            raise ConfigError(f"{PREFIX}VARIANT_PRESETS_ONLY: needs presets in {PREFIX}VARIANT_PRESETS")
        for name, query in variants.presets:
            sides = [int(v) for k, v in query if k in ("w", "h")]
            if max(sides) > variants.max_side or (
                len(sides) == 2 and sides[0] * sides[1] > variants.max_pixels
            ):
                raise ConfigError(
                    f"{PREFIX}VARIANT_PRESETS: {name} is larger than {PREFIX}VARIANT_MAX_SIDE "
                    f"({variants.max_side}) or {PREFIX}VARIANT_MAX_PIXELS ({variants.max_pixels}) allow"
                )
        return env.section(
            cls,
            aws=aws,
            local=env.section(LocalSettings, data_dir=data_dir),
            imaging=env.section(ImagingSettings),
            consumer=env.section(ConsumerSettings),
            web=web,
            accounts=accounts,
            webhooks=env.section(WebhookSettings),
            variants=variants,
        )

    @classmethod
    def variables(cls) -> list[str]:
        """Every `IMGSVC_` variable the settings read (for the documentation and its test)."""
        sections = (
            AwsSettings,
            LocalSettings,
            ImagingSettings,
            ConsumerSettings,
            WebSettings,
            AccountSettings,
        )
        read = [
            name
            for section in (*sections, WebhookSettings, VariantSettings, cls)
            for name, *_ in _vars(section)
        ]
        return [f"{PREFIX}MODE", f"{PREFIX}DATA_DIR", *read]


T = TypeVar("T")


def _vars(section: type) -> list[tuple[str, dataclasses.Field[Any], Var, type]]:
    """(variable, field, how it is read, its type) for each field of `section` the environment sets."""
    hints = typing.get_type_hints(section, include_extras=True)
    found = []
    for f in dataclasses.fields(section):
        hint = hints[f.name]
        spec = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Var)), None)
        if spec is not None:
            name = PREFIX + (spec.name or section.ENV_PREFIX + f.name.upper())  # type: ignore[attr-defined]
            found.append((name, f, spec, typing.get_args(hint)[0]))
    return found


class _Env:
    """Reads prefixed variables and raises `ConfigError` naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, full_name: str) -> str:
        return self._environ.get(full_name, "").strip()

    def section(self, cls: type[T], defaults: Mapping[str, Any] = {}, **given: Any) -> T:
        """An instance of the settings dataclass `cls`: `given` values as they are, every field
        with a `Var` read from its variable (its default from `defaults`, else the field's)."""
        values = dict(given)
        for variable, f, spec, kind in _vars(cls):
            if f.name in values:
                continue
            if f.name in defaults:
                default = defaults[f.name]
            elif f.default is not dataclasses.MISSING:
                default = f.default
            else:
                default = f.default_factory()  # type: ignore[operator]
            values[f.name] = self._read(variable.removeprefix(PREFIX), spec, kind, default)
        return cls(**values)

    def _read(self, name: str, spec: Var, kind: type, default: Any) -> Any:
        if spec.read is not None:
            return getattr(self, spec.read)(name, default)
        if spec.choices:
            return self.choice(name, default, spec.choices)
        if kind is int:
            assert spec.lo is not None and spec.hi is not None, name
            return self.integer(name, default, int(spec.lo), int(spec.hi))
        if kind is float:
            assert spec.lo is not None and spec.hi is not None, name
            return self.number(name, default, spec.lo, spec.hi)
        if kind is bool:
            return self.flag(name, default)
        if kind is Path:
            return Path(self.text(name, str(default)))
        return self.text(name, default)

    def _get(self, name: str) -> str | None:
        value = self._environ.get(PREFIX + name)
        return None if value is None or value.strip() == "" else value.strip()

    def _fail(self, name: str, why: str, value: str) -> ConfigError:
        return ConfigError(f"{PREFIX}{name}: {why} (got {value!r})")

    def text(self, name: str, default: str) -> str:
        return self._get(name) or default

    def hosts(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return default
        hosts = tuple(h.strip().lower().strip("[]") for h in value.split(",") if h.strip())
        if not hosts or not all(re.fullmatch(r"\*|\.?[a-z0-9_.:-]+", h) for h in hosts):
            raise self._fail(name, "must be a comma list of host names (.example.com, or *)", value)
        return hosts

    def workers(self, name: str, default: int) -> int:
        value = self._get(name)
        if value is None or value.lower() == "auto":
            return default
        return self.integer(name, default, 1, 256)

    def networks(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return default
        found = []
        for item in value.split(","):
            try:
                found.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise self._fail(name, "must be a comma list of IP addresses or networks", value) from None
        return tuple(found)

    def public_url(self, name: str, default: str) -> str:
        value = self._get(name)
        if value is None:
            return default
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?", value):
            raise self._fail(name, "must be an http(s) URL such as https://images.example.com", value)
        return value.rstrip("/")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(name) or default
        if value not in choices:
            raise self._fail(name, f"must be one of {', '.join(choices)}", value)
        return value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        return self._bounded(name, default, lo, hi, lambda v: int(v.replace("_", "")), "an integer")

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        return self._bounded(name, default, lo, hi, float, "a number")

    def _bounded(self, name: str, default: N, lo: N, hi: N, parse: Callable[[str], N], kind: str) -> N:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = parse(value)
        except ValueError:
            raise self._fail(name, f"must be {kind}", value) from None
        if not lo <= number <= hi:
            raise self._fail(name, f"must be between {lo} and {hi}", value)
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise self._fail(name, "must be true or false", value)

    def bucket(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
            raise self._fail(name, "is not a valid S3 bucket name", value)
        return value

    def queue(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,80}", value):
            raise self._fail(name, "is not a valid SQS queue name", value)
        return value

    def table_prefix(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{3,200}", value):
            raise self._fail(name, "is not a valid DynamoDB table name prefix", value)
        return value

    def formats(self, name: str, default: frozenset[str]) -> frozenset[str]:
        value = self._get(name)
        if value is None:
            return default
        chosen = frozenset(f.strip().lower() for f in value.split(",") if f.strip())
        unknown = chosen - KNOWN_FORMATS
        if not chosen or unknown:
            raise self._fail(name, f"must be a comma list of {', '.join(sorted(KNOWN_FORMATS))}", value)
        return chosen

    def upload_modes(self, name: str, default: frozenset[str]) -> frozenset[str]:
        value = self._get(name)
        if value is None:
            return default
        chosen = frozenset(m.strip().lower() for m in value.split(",") if m.strip())
        if not chosen or chosen - UPLOAD_MODES:
            raise self._fail(name, f"must be a comma list of {', '.join(sorted(UPLOAD_MODES))}", value)
        return chosen

    def presets(
        self, name: str, default: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    ) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        """Parse `card=400x300:cover:webp,hero=1600:contain:auto`: a name, a box (`WxH`, `W` or
        `xH`), then in any order a fit, a crop, a format (or `auto`), a quality and operations as
        `key=value` (`blur=2`, `bg=000000`; their values are checked as the API starts)."""
        value = self._get(name)
        if value is None:
            return default
        shape = "name=WxH[:fit][:crop][:format][:quality][:operation=value], e.g. card=400x300:cover:webp"
        presets: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        for item in value.split(","):
            preset, _, spec = item.strip().partition("=")
            box, *options = spec.split(":")
            size = _PRESET_BOX.fullmatch(box)
            if not _PRESET_NAME.fullmatch(preset) or size is None or not (size["w"] or size["h"]):
                raise self._fail(name, f"each preset must look like {shape}", value)
            query = {k: size[k] for k in ("w", "h") if size[k]}
            for option in options:
                operation, _, argument = option.partition("=")
                key = (
                    operation
                    if operation in VARIANT_OPERATIONS and argument
                    else "fit"
                    if option in VARIANT_FITS
                    else "crop"
                    if option in VARIANT_CROPS
                    else "format"
                    if option in (*OUTPUT_FORMATS, "auto")
                    else "q"
                    if option.isdigit() and 1 <= int(option) <= 100
                    else None
                )
                if key is None or key in query:
                    raise self._fail(
                        name,
                        f"{preset}: {option!r} is not a fit, crop, format, quality or operation ({shape})",
                        value,
                    )
                query[key] = argument if key in VARIANT_OPERATIONS else option
            if "crop" in query and query.get("fit") != "cover":
                raise self._fail(name, f"{preset}: a crop goes with the cover fit", value)
            presets.append((preset, tuple(sorted(query.items()))))
        names = [p for p, _ in presets]
        if len(set(names)) != len(names):
            raise self._fail(name, "names a preset twice", value)
        return tuple(presets)

    def renditions(self, name: str, default: tuple[RenditionSpec, ...]) -> tuple[RenditionSpec, ...]:
        """Parse `256,1024:webp:80`: longest side, optional output format and quality."""
        value = self._get(name)
        if value is None:
            return default
        specs: list[RenditionSpec] = []
        for item in value.split(","):
            match = _RENDITION_RE.fullmatch(item.strip())
            fmt = (match.group("fmt") or "jpeg") if match else ""
            if match is None or fmt not in OUTPUT_FORMATS:
                shape = f"side[:{'|'.join(OUTPUT_FORMATS)}[:quality]]"
                raise self._fail(name, f"must look like 256,1024:webp:80 ({shape})", value)
            specs.append(RenditionSpec(int(match.group("side")), fmt, int(match.group("q") or 85)))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise self._fail(name, "names a rendition twice", value)
        return tuple(specs)
