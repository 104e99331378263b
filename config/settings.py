"""Typed, frozen settings built from environment variables.

Every limit of the service lives here with a sensible default. `Settings.from_env` takes the
environment as a parameter (tests pass a dict) and fails at start-up naming the bad variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

PREFIX = "IMGSVC_"
Mode = Literal["embedded", "aws", "local"]
N = TypeVar("N", int, float)

#: Formats the pipeline accepts, named as `pipeline.formats.detect_format` names them.
KNOWN_FORMATS = frozenset({"jpeg", "png", "webp", "gif", "tiff", "heif", "avif"})
OUTPUT_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp", "avif": "avif"}
#: The five user ids of the original system, kept as demo users.
SEED_USER_IDS = (
    "eb2128f2-5c0a-4dd1-90a5-2f0e39db7aa3",
    "ebe7b1c9-951b-4f92-aa42-9d65c19a8fc5",
    "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e",
    "b92a45f3-147d-4829-a362-d798282a041e",
    "6edc5e55-2c2a-4e3e-8d1c-5044f6c68d09",
)
_RENDITION_RE = re.compile(r"^(?P<side>[1-9][0-9]{0,4})(?::(?P<fmt>[a-z]+))?(?::(?P<q>[1-9][0-9]?|100))?$")


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


@dataclass(frozen=True)
class AwsSettings:
    """Where the service's resources are (AWS, the embedded endpoint, or a local data directory)
    and what they are called (the local backend uses the same names)."""

    mode: Mode = "embedded"
    endpoint_url: str | None = None
    #: The local backend's directory (`IMGSVC_DATA_DIR`, `--data-dir`): set means mode "local".
    data_dir: Path | None = None
    region: str = "us-east-1"
    embedded_host: str = "127.0.0.1"
    embedded_port: int = 4566
    source_bucket: str = "image-service-source"
    dest_bucket: str = "image-service-thumbnails"
    queue_name: str = "image-service-events"
    dlq_name: str = "image-service-dlq"
    #: DynamoDB tables are `{prefix}-users`, `-keys`, `-images` and `-throttle`.
    table_prefix: str = "image-service"
    max_pool_connections: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

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
class ImagingSettings:
    """What the pipeline accepts and what it makes."""

    renditions: tuple[RenditionSpec, ...] = (RenditionSpec(256),)
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_frames: int = 1000
    #: JPEG renditions up to this many pixels on the longest side are made by Pillow with draft
    #: (measured faster there); larger ones by pyvips. See BENCHMARKS.md.
    pillow_max_side: int = 256
    allowed_formats: frozenset[str] = KNOWN_FORMATS

    def rendition(self, name: str) -> RenditionSpec | None:
        return next((r for r in self.renditions if r.name == name), None)


#: Default in-flight messages per imaging worker (`IMGSVC_CONSUMER_MAX_IN_FLIGHT=0`).
IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True)
class ConsumerSettings:
    """Concurrency, retries and timeouts of the SQS consumer pool."""

    receivers: int = 2
    batch_size: int = 10
    #: 0: `IN_FLIGHT_PER_WORKER` x workers. More only hoards messages that other consumer
    #: processes could be working on (measured: see BENCHMARKS.md, scaling across processes).
    max_in_flight: int = 0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: Decoder threads per worker (libvips, AVIF); 0: the cores shared out among the workers.
    #: Several consumer processes on one machine each set it so they do not oversubscribe.
    worker_threads: int = 0
    wait_time_seconds: int = 20
    visibility_timeout: int = 60
    max_attempts: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    job_timeout: float = 120.0
    drain_timeout: float = 30.0
    delete_flush_seconds: float = 0.05
    #: `python -m pipeline consumer` serves Prometheus metrics here (0: not at all).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464

    @property
    def in_flight_limit(self) -> int:
        """Messages one consumer process holds at once: enough to overlap S3 transfers with
        resizing on every worker, few enough not to starve other consumer processes."""
        return self.max_in_flight or IN_FLIGHT_PER_WORKER * self.workers

    @property
    def redrive_max_receive_count(self) -> int:
        """Safety net above our own attempts, for consumers that die mid-message."""
        return self.max_attempts + 2


@dataclass(frozen=True)
class WebSettings:
    """The HTTP API."""

    host: str = "127.0.0.1"
    port: int = 8080
    part_size: int = 8 * 1024 * 1024
    #: Connections this process holds at once. Past it, an idle or half-sent connection is
    #: closed to make room, else the new one is refused with 503: file descriptors stay free
    #: for the AWS clients, the embedded endpoint and health checks.
    max_connections: int = 1000
    #: Seconds a client has to send a request's headers (from its first byte, or from accept).
    header_timeout: float = 20.0
    #: Seconds an idle keep-alive connection stays open (longer than a load balancer's idle
    #: timeout, so the balancer closes first; idle connections are also the first evicted).
    keepalive_timeout: float = 75.0
    #: Seconds a body may take to start, and the longest pause between its bytes.
    body_timeout: float = 20.0
    #: Bytes per second a body must average once started (mod_reqtimeout's MinRate): every
    #: `body_min_rate` bytes received buy one more second of waiting.
    body_min_rate: int = 500
    #: Seconds a response may wait for the client to read what was already sent.
    send_timeout: float = 60.0
    #: Bytes of upload buffers (S3 parts in the making) this process holds at once.
    upload_buffer_bytes: int = 256 * 1024 * 1024
    #: Seconds an upload waits for buffer space before it is answered 503 with Retry-After.
    upload_buffer_wait: float = 10.0
    #: Uploads one user may have in progress at once in this process (0: no limit).
    user_max_uploads: int = 8
    cache_control: str = "private, max-age=3600"
    retry_after: int = 2
    input_dir: Path = Path("input")
    run_consumer: bool = True
    #: Scheme and host clients reach the API at (behind a proxy or CDN), for the absolute URLs
    #: the API hands out; empty: taken from each request.
    public_url: str = ""


@dataclass(frozen=True)
class AccountSettings:
    """Who may call, how much they may store, and how long shared links live."""

    #: Failed authentications per client address and window before 429 (shared through DynamoDB).
    auth_failures_allowed: int = 20
    auth_failure_window: int = 60
    #: Per-user quotas; 0 means unlimited.
    quota_bytes: int = 0
    quota_images: int = 0
    #: HMAC secret for signed links; empty: one generated once and shared through DynamoDB.
    signing_secret: str = ""
    link_max_seconds: int = 7 * 24 * 3600
    #: `hmac`: links served by the API; `s3`: S3 presigned URLs (downloads offloaded to S3/CDN).
    links: str = "hmac"
    #: Where the embedded stack writes the demo users' API keys (secrets: mode 0600).
    demo_keys_file: Path = Path("demo-keys.json")


@dataclass(frozen=True)
class WebhookSettings:
    """Completion webhooks: how hard to try, and where a webhook may point."""

    #: Delivery attempts per event (the first included), with exponential backoff between them.
    attempts: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    #: Seconds for one POST, from connecting to the answer's status and headers (never its body).
    timeout: float = 5.0
    #: POSTs in progress at once per process; events beyond `max_pending` are dropped and counted.
    concurrency: int = 8
    max_pending: int = 10_000
    #: Let webhooks point at loopback, private and link-local addresses (off: SSRF protection).
    allow_private: bool = False
    #: How long a stopping consumer keeps delivering what is still pending.
    drain_timeout: float = 10.0


@dataclass(frozen=True)
class Settings:
    """All settings of one process."""

    aws: AwsSettings = AwsSettings()
    imaging: ImagingSettings = ImagingSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    web: WebSettings = WebSettings()
    accounts: AccountSettings = AccountSettings()
    webhooks: WebhookSettings = WebhookSettings()
    log_level: str = "INFO"
    log_format: str = "auto"
    use_uvloop: bool = True
    loop_debug: bool = False

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
        d_aws, d_img, d_con, d_web = AwsSettings(), ImagingSettings(), ConsumerSettings(), WebSettings()
        d_acc, d_hook = AccountSettings(), WebhookSettings()
        aws = AwsSettings(
            mode=mode,
            endpoint_url=env.raw("AWS_ENDPOINT_URL") or None,
            data_dir=Path(data_dir_raw).expanduser().resolve() if data_dir_raw else None,
            region=env.raw("AWS_REGION") or env.raw("AWS_DEFAULT_REGION") or d_aws.region,
            embedded_host=env.text("EMBEDDED_HOST", d_aws.embedded_host),
            embedded_port=env.integer("EMBEDDED_PORT", d_aws.embedded_port, 0, 65535),
            source_bucket=env.bucket("SOURCE_BUCKET", d_aws.source_bucket),
            dest_bucket=env.bucket("DEST_BUCKET", d_aws.dest_bucket),
            queue_name=env.queue("QUEUE_NAME", d_aws.queue_name),
            dlq_name=env.queue("DLQ_NAME", d_aws.dlq_name),
            table_prefix=env.table_prefix("TABLE_PREFIX", d_aws.table_prefix),
            max_pool_connections=env.integer("MAX_POOL_CONNECTIONS", d_aws.max_pool_connections, 1, 1000),
            connect_timeout=env.number("AWS_CONNECT_TIMEOUT", d_aws.connect_timeout, 0.1, 300),
            read_timeout=env.number("AWS_READ_TIMEOUT", d_aws.read_timeout, 0.1, 900),
        )
        if aws.source_bucket == aws.dest_bucket:
            raise ConfigError(f"{PREFIX}DEST_BUCKET: must differ from the source bucket, or thumbnails loop")
        if aws.queue_name == aws.dlq_name:
            raise ConfigError(f"{PREFIX}DLQ_NAME: must differ from {PREFIX}QUEUE_NAME")
        imaging = ImagingSettings(
            renditions=env.renditions("RENDITIONS", d_img.renditions),
            max_bytes=env.integer("MAX_BYTES", d_img.max_bytes, 1, 5 * 1024**3),
            max_pixels=env.integer("MAX_PIXELS", d_img.max_pixels, 1, 2**31),
            max_frames=env.integer("MAX_FRAMES", d_img.max_frames, 1, 100_000),
            pillow_max_side=env.integer("PILLOW_MAX_SIDE", d_img.pillow_max_side, 0, 100_000),
            allowed_formats=env.formats("ALLOWED_FORMATS", d_img.allowed_formats),
        )
        consumer = ConsumerSettings(
            receivers=env.integer("CONSUMER_RECEIVERS", d_con.receivers, 1, 64),
            batch_size=env.integer("CONSUMER_BATCH_SIZE", d_con.batch_size, 1, 10),
            max_in_flight=env.integer("CONSUMER_MAX_IN_FLIGHT", d_con.max_in_flight, 0, 10_000),
            workers=env.integer("CONSUMER_WORKERS", d_con.workers, 1, 256),
            worker_threads=env.integer("CONSUMER_WORKER_THREADS", d_con.worker_threads, 0, 256),
            wait_time_seconds=env.integer("CONSUMER_WAIT_TIME_SECONDS", d_con.wait_time_seconds, 0, 20),
            visibility_timeout=env.integer(
                "CONSUMER_VISIBILITY_TIMEOUT", d_con.visibility_timeout, 1, 43_200
            ),
            max_attempts=env.integer("CONSUMER_MAX_ATTEMPTS", d_con.max_attempts, 1, 100),
            backoff_base=env.number("CONSUMER_BACKOFF_BASE", d_con.backoff_base, 0, 3600),
            backoff_max=env.number("CONSUMER_BACKOFF_MAX", d_con.backoff_max, 0, 43_200),
            job_timeout=env.number("CONSUMER_JOB_TIMEOUT", d_con.job_timeout, 0.1, 43_200),
            drain_timeout=env.number("CONSUMER_DRAIN_TIMEOUT", d_con.drain_timeout, 0, 3600),
            delete_flush_seconds=env.number(
                "CONSUMER_DELETE_FLUSH_SECONDS", d_con.delete_flush_seconds, 0, 10
            ),
            metrics_host=env.text("METRICS_HOST", d_con.metrics_host),
            metrics_port=env.integer("METRICS_PORT", d_con.metrics_port, 0, 65535),
        )
        web = WebSettings(
            host=env.text("HOST", d_web.host),
            port=env.integer("PORT", d_web.port, 0, 65535),
            part_size=env.integer("UPLOAD_PART_SIZE", d_web.part_size, 5 * 1024 * 1024, 5 * 1024**3),
            max_connections=env.integer("MAX_CONNECTIONS", d_web.max_connections, 8, 1_000_000),
            header_timeout=env.number("HEADER_TIMEOUT", d_web.header_timeout, 0.1, 3600),
            keepalive_timeout=env.number("KEEPALIVE_TIMEOUT", d_web.keepalive_timeout, 0.1, 3600),
            body_timeout=env.number("BODY_TIMEOUT", d_web.body_timeout, 0.1, 3600),
            body_min_rate=env.integer("BODY_MIN_RATE", d_web.body_min_rate, 0, 1024**3),
            send_timeout=env.number("SEND_TIMEOUT", d_web.send_timeout, 0.1, 3600),
            upload_buffer_bytes=env.integer(
                "UPLOAD_BUFFER_BYTES", d_web.upload_buffer_bytes, 5 * 1024 * 1024, 1024**4
            ),
            upload_buffer_wait=env.number("UPLOAD_BUFFER_WAIT", d_web.upload_buffer_wait, 0, 3600),
            user_max_uploads=env.integer("USER_MAX_UPLOADS", d_web.user_max_uploads, 0, 100_000),
            cache_control=env.text("CACHE_CONTROL", d_web.cache_control),
            retry_after=env.integer("RETRY_AFTER", d_web.retry_after, 1, 3600),
            input_dir=Path(env.text("INPUT_DIR", str(d_web.input_dir))),
            run_consumer=env.flag("RUN_CONSUMER", mode in ("embedded", "local")),
            public_url=env.public_url("PUBLIC_URL"),
        )
        if web.part_size > web.upload_buffer_bytes:
            raise ConfigError(
                f"{PREFIX}UPLOAD_BUFFER_BYTES: must hold at least one part of {PREFIX}UPLOAD_PART_SIZE "
                f"({web.part_size} bytes)"
            )
        accounts = AccountSettings(
            auth_failures_allowed=env.integer(
                "AUTH_FAILURES_ALLOWED", d_acc.auth_failures_allowed, 1, 100_000
            ),
            auth_failure_window=env.integer("AUTH_FAILURE_WINDOW", d_acc.auth_failure_window, 1, 86_400),
            quota_bytes=env.integer("QUOTA_BYTES", d_acc.quota_bytes, 0, 2**62),
            quota_images=env.integer("QUOTA_IMAGES", d_acc.quota_images, 0, 2**62),
            signing_secret=env.text("SIGNING_SECRET", d_acc.signing_secret),
            link_max_seconds=env.integer("LINK_MAX_SECONDS", d_acc.link_max_seconds, 1, 7 * 24 * 3600),
            links=env.choice("LINKS", d_acc.links, ("hmac", "s3")),
            # With a data directory the demo keys live beside the data they open.
            demo_keys_file=Path(
                env.text(
                    "DEMO_KEYS_FILE",
                    str(aws.data_dir / d_acc.demo_keys_file if aws.data_dir else d_acc.demo_keys_file),
                )
            ),
        )
        if accounts.links == "s3" and aws.data_dir is not None:
            raise ConfigError(
                f"{PREFIX}LINKS: s3 presigned links need S3; the local backend serves hmac links"
            )
        webhooks = WebhookSettings(
            attempts=env.integer("WEBHOOK_ATTEMPTS", d_hook.attempts, 1, 100),
            backoff_base=env.number("WEBHOOK_BACKOFF_BASE", d_hook.backoff_base, 0, 3600),
            backoff_max=env.number("WEBHOOK_BACKOFF_MAX", d_hook.backoff_max, 0, 86_400),
            timeout=env.number("WEBHOOK_TIMEOUT", d_hook.timeout, 0.1, 300),
            concurrency=env.integer("WEBHOOK_CONCURRENCY", d_hook.concurrency, 1, 1000),
            max_pending=env.integer("WEBHOOK_MAX_PENDING", d_hook.max_pending, 1, 10_000_000),
            allow_private=env.flag("WEBHOOK_ALLOW_PRIVATE", d_hook.allow_private),
            drain_timeout=env.number("WEBHOOK_DRAIN_TIMEOUT", d_hook.drain_timeout, 0, 3600),
        )
        log_level = env.choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
        log_format = env.choice("LOG_FORMAT", "auto", ("auto", "json", "text"))
        return cls(
            aws=aws,
            imaging=imaging,
            consumer=consumer,
            web=web,
            accounts=accounts,
            webhooks=webhooks,
            log_level=log_level,
            log_format=log_format,
            use_uvloop=env.flag("UVLOOP", True),
            loop_debug=env.flag("LOOP_DEBUG", False),
        )


class _Env:
    """Reads prefixed variables and raises `ConfigError` naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, full_name: str) -> str:
        return self._environ.get(full_name, "").strip()

    def _get(self, name: str) -> str | None:
        value = self._environ.get(PREFIX + name)
        return None if value is None or value.strip() == "" else value.strip()

    def _fail(self, name: str, why: str, value: str) -> ConfigError:
        return ConfigError(f"{PREFIX}{name}: {why} (got {value!r})")

    def text(self, name: str, default: str) -> str:
        return self._get(name) or default

    def public_url(self, name: str) -> str:
        value = self._get(name)
        if value is None:
            return ""
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
