"""The HTTP server under the app: deadlines on every read from a client, and a connection cap.

aiohttp bounds header sizes but not time: a client may trickle its headers, start a body and
stall, or send one byte every few seconds, each holding a connection (a file descriptor, a
parser, buffers) for as long as it likes. Every connection here runs through `GuardedHandler`,
which keeps the deadlines Apache's mod_reqtimeout and nginx keep:

- headers: complete within `header_timeout` of the first byte (of accept, for a new connection);
- body: its first byte within `body_timeout`, no pause longer than that, and on average at
  least `body_min_rate` bytes per second (each `body_min_rate` bytes buy one more second).
  Only time in which this side wants data counts: while a handler is busy and the buffer is
  full, reading is paused and the client is not to blame;
- idle keep-alive: closed after `keepalive_timeout`;
- sending: a client that stops reading a response for `send_timeout` is cut off, and one that
  reads it slower than `send_min_rate` bytes per second, averaged over the last
  `send_rate_window` seconds in which it kept the server waiting (its socket full), is cut off
  too: a slow reader costs a bounded time, not the send timeout per chunk.

A cut-off request is answered 408 with a JSON body where one can still be written (a body
timeout surfaces in the handler's next read as `RequestTimeout`). The cap (`max_connections`)
keeps file descriptors for the AWS clients, the embedded endpoint and health checks: at the cap
a new connection closes the connection that has idled or dawdled over its headers longest, and
is refused with 503 only when every connection is busy with a request.

Each client address has a share of the cap (`max_connections_per_client`): past it, the client's
own idle connection makes room, else its new connection is refused with 429, so one client
cannot take the slots every other client needs. A trusted proxy's connections carry many
clients: they are not capped by address, and the share counts each forwarded client's requests
in progress instead (`deadline_middleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import resource
import socket
import struct
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from config.settings import WebSettings
from pipeline.core import metrics
from pipeline.core.errors import (
    RequestTimeout,
    ServiceError,
    TooLarge,
    TooManyClientRequests,
)
from web.clients import Proxies, client_address, counted_as
from web.middlewares import error_document, error_response, refusal

log = logging.getLogger(__name__)
#: How often a connection sending a body checks its clock (body deadlines are this coarse).
TICK_SECONDS = 0.5
#: Bytes of request body buffered per connection before reading pauses (aiohttp's default is 256 KiB).
READ_BUFFER = 64 * 1024
#: Seconds aiohttp keeps reading (and discarding) a body its handler did not read.
LINGERING_SECONDS = 5.0
#: aiohttp's own idle timer, far beyond ours: it must not act first.
AIOHTTP_KEEPALIVE = 86_400.0
#: Seconds a connection cut off with a 408 keeps discarding what the client still sends, so the
#: client reads the answer instead of a reset (closing a socket with unread input sends RST).
LINGER_SECONDS = 2.0
#: File descriptors kept out of the connection cap: AWS client pools, the embedded endpoint's own
#: sockets, worker pipes, logs.
RESERVED_DESCRIPTORS = 512


class Phase(enum.Enum):
    IDLE = "idle"  # between requests (or writing the last response)
    HEADERS = "headers"  # a request has begun and its headers are not complete
    BODY = "body"  # a handler runs and its body is still arriving
    BUSY = "busy"  # a handler runs on a complete body: our time, not the client's
    LINGER = "linger"  # answered and half-closed: discarding input until the client has read it


@dataclass(frozen=True)
class Limits:
    max_connections: int
    keepalive_timeout: float
    header_timeout: float
    body_timeout: float
    body_min_rate: int
    send_timeout: float
    per_client: int = 0
    proxies: Proxies = field(default_factory=lambda: Proxies(()))
    send_min_rate: int = 0
    send_rate_window: float = 20.0
    retry_after: int = 1

    @classmethod
    def of(cls, web_settings: WebSettings) -> Limits:
        return cls(
            max_connections=descriptor_budget(web_settings.max_connections),
            keepalive_timeout=web_settings.keepalive_timeout,
            header_timeout=web_settings.header_timeout,
            body_timeout=web_settings.body_timeout,
            body_min_rate=web_settings.body_min_rate,
            send_timeout=web_settings.send_timeout,
            per_client=web_settings.max_connections_per_client,
            proxies=Proxies(web_settings.trusted_proxies, web_settings.forwarded_header),
            send_min_rate=web_settings.send_min_rate,
            send_rate_window=web_settings.send_rate_window,
            retry_after=web_settings.retry_after,
        )


def descriptor_budget(wanted: int) -> int:
    """Raise the soft file-descriptor limit to the hard one and fit the cap under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(8, soft - RESERVED_DESCRIPTORS)
    if wanted > room:
        log.warning(
            "IMGSVC_MAX_CONNECTIONS=%d does not fit in %d file descriptors; capped at %d", wanted, soft, room
        )
        return room
    return wanted


class Tracker:
    """The connections of one server, and which of them may be closed to admit a new one."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.live: set[GuardedHandler] = set()
        #: Idle or half-sent connections, longest waiting first.
        self._evictable: OrderedDict[GuardedHandler, None] = OrderedDict()
        #: The connections of each capped client address (a trusted proxy's are not capped).
        self._clients: dict[str, set[GuardedHandler]] = {}
        #: Requests in progress of each client behind a trusted proxy.
        self._forwarded: Counter[str] = Counter()

    def admit(self, handler: GuardedHandler, client: str | None) -> Admission:
        """Count a new connection in, from `client` (None: not capped by address)."""
        mine = self._clients.get(client) if client is not None else None
        if mine is not None and len(mine) >= self.limits.per_client > 0:
            # The client's own connection idle longest makes room, never another client's.
            for victim in sorted(mine, key=lambda h: h.waiting_since):
                if victim.evict(for_its_client=True):
                    self.forget(victim)
                    break
            else:
                return Admission.CLIENT_FULL
        while len(self.live) >= self.limits.max_connections:
            if not self._evict_one():
                return Admission.FULL
        self.live.add(handler)
        if client is not None and self.limits.per_client:
            self._clients.setdefault(client, set()).add(handler)
        metrics.HTTP_CONNECTIONS.set(len(self.live))
        return Admission.ADMITTED

    def start_forwarded(self, client: str) -> None:
        """A request of `client` arrived through a trusted proxy; `TooManyClientRequests` when
        the client has its share in progress already."""
        if self._forwarded[client] >= self.limits.per_client > 0:
            metrics.HTTP_CONNECTIONS_CLOSED.labels("client_refused").inc()
            raise TooManyClientRequests(headers={"Retry-After": str(self.limits.retry_after)})
        self._forwarded[client] += 1

    def end_forwarded(self, client: str) -> None:
        self._forwarded[client] -= 1
        if self._forwarded[client] <= 0:
            del self._forwarded[client]

    def _evict_one(self) -> bool:
        for victim in list(itertools.islice(self._evictable, 64)):  # a bounded look
            if victim.evict():
                self.forget(victim)
                return True
        return False

    def evictable(self, handler: GuardedHandler, yes: bool) -> None:
        if yes:
            self._evictable[handler] = None
            self._evictable.move_to_end(handler)
        else:
            self._evictable.pop(handler, None)

    def forget(self, handler: GuardedHandler) -> None:
        self.live.discard(handler)
        self._evictable.pop(handler, None)
        client = handler.client
        if client is not None and (mine := self._clients.get(client)) is not None:
            mine.discard(handler)
            if not mine:
                del self._clients[client]
        metrics.HTTP_CONNECTIONS.set(len(self.live))


class Admission(enum.Enum):
    ADMITTED = "admitted"
    FULL = "full"  # every slot of the process is busy
    CLIENT_FULL = "client_full"  # every slot of the client's share is busy


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler, with the deadlines and the cap of this module."""

    __slots__ = (
        "_body_limit",
        "_cut",
        "_gap",
        "_last_tick",
        "_line_start",
        "_lingered",
        "_payload",
        "_phase",
        "_rate_timer",
        "_received",
        "_send_last",
        "_send_samples",
        "_send_timer",
        "_send_waited",
        "_timer",
        "_tracker",
        "_waited",
        "_writer",
        "client",
        "waiting_since",
    )

    def __init__(self, manager: GuardedServer, *, tracker: Tracker, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._tracker = tracker
        self._phase = Phase.IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._payload: StreamReader | None = None
        self._waited = self._gap = self._last_tick = 0.0
        self._received = 0
        self._cut = False
        self._lingered: asyncio.Future[None] | None = None
        self._body_limit: int | None = None
        #: The first bytes of the request being received (its method), until its headers parse.
        self._line_start = b""
        #: The peer address this connection counts under (None: a trusted proxy, or no address).
        self.client: str | None = None
        #: When it last began to idle or to await headers (the longest waiting is evicted first).
        self.waiting_since = 0.0
        #: The current response's writer, and the time its client kept us waiting to send.
        self._writer: Any = None
        self._rate_timer: asyncio.TimerHandle | None = None
        self._send_waited = self._send_last = 0.0
        #: (time behind, bytes read) as the client fell behind, over the last `send_rate_window`.
        self._send_samples: deque[tuple[float, int]] = deque()

    @property
    def limits(self) -> Limits:
        return self._tracker.limits

    @property
    def tracker(self) -> Tracker:
        return self._tracker

    @property
    def cut_off(self) -> bool:
        """The current request's body was cut off (its handler saw `RequestTimeout` or, past
        `limit_body`, `TooLarge`)."""
        return self._cut

    def limit_body(self, max_bytes: int) -> None:
        """Cut the current request's body off once more than `max_bytes` of it have arrived,
        however the handler reads it (a multipart reader skipping a preamble reads it all)."""
        self._body_limit = max_bytes

    # Transport events ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        limits = self._tracker.limits
        self.waiting_since = self._loop.time()
        if address is not None and not limits.proxies.trusted(address):
            self.client = counted_as(address)
        admitted = self._tracker.admit(self, self.client)
        if admitted is Admission.FULL:
            metrics.HTTP_CONNECTIONS_CLOSED.labels("refused").inc()
            self._answer_and_close(
                503, "too_many_connections", "the server is at its connection limit; retry shortly", 1
            )
            return
        if admitted is Admission.CLIENT_FULL:
            metrics.HTTP_CONNECTIONS_CLOSED.labels("client_refused").inc()
            self.client = None  # never counted under it
            self._answer_and_close(
                429,
                "too_many_connections",
                f"this client holds its {limits.per_client} connections already; reuse or close one",
                limits.retry_after,
            )
            return
        # A new connection's headers are due within the header timeout of accept.
        self._enter(Phase.HEADERS)

    def data_received(self, data: bytes) -> None:
        if self._phase is Phase.LINGER:
            return  # answered already: read only so that closing sends FIN, not RST
        if self._phase is Phase.IDLE and data:
            self._enter(Phase.HEADERS)
        elif self._phase is Phase.BODY:
            self._received += len(data)
            self._gap = 0.0
        if self._phase is Phase.HEADERS and not self._line_start:
            self._line_start = bytes(data[:5])
        super().data_received(data)
        payload, limit = self._payload, self._body_limit
        if limit is not None and payload is not None and payload.total_bytes > limit and not self._cut:
            self._cut_off(TooLarge(f"the request body is larger than the {limit} bytes allowed"), "too_large")

    def eof_received(self) -> None:
        self._end_linger()
        super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end_linger()
        self._cancel_timers()
        self._tracker.forget(self)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        limits = self._tracker.limits
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(limits.send_timeout, self._send_expired)
        if limits.send_min_rate and self._rate_timer is None and self._writer is not None:
            # The client is behind: from now until it catches up, time counts against its rate.
            self._send_last = self._loop.time()
            self._send_sample()
            self._rate_timer = self._loop.call_later(TICK_SECONDS, self._send_tick)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None
            self._send_waited += self._loop.time() - self._send_last

    # Request events (from `deadline_middleware`) --------------------------------------------------

    def request_started(self, payload: StreamReader, writer: Any = None) -> None:
        self._line_start = b""
        self._payload = payload
        self._writer = writer
        self._send_waited = 0.0
        self._send_samples.clear()
        self._cut = False
        self._body_limit = None
        if payload.is_eof():
            self._enter(Phase.BUSY)
            return
        self._waited = self._gap = 0.0
        self._received = 0
        self._last_tick = self._loop.time()
        self._enter(Phase.BODY)

    async def linger(self) -> None:
        """After answering a cut-off request: half-close, and discard input until the client
        closes too or `LINGER_SECONDS` pass (Apache's and nginx's lingering close)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            await self._begin_linger()

    def _begin_linger(self) -> asyncio.Future[None]:
        self._enter(Phase.LINGER)
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
        self._lingered = self._loop.create_future()
        self._timer = self._loop.call_later(LINGER_SECONDS, self._end_linger)
        return self._lingered

    def _end_linger(self) -> None:
        if self._lingered is not None and not self._lingered.done():
            self._lingered.set_result(None)

    def request_finished(self) -> None:
        payload, self._payload = self._payload, None
        if self._cut and payload is not None and not payload.is_eof():
            # aiohttp reads what its handler left unread for a while ("lingering"); a plain
            # TimeoutError ends that at once, quietly, and the connection closes after the answer.
            payload.set_exception(TimeoutError())
        self._enter(Phase.IDLE)

    # Deadlines --------------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if phase in (Phase.IDLE, Phase.HEADERS) and self._phase not in (Phase.IDLE, Phase.HEADERS):
            self.waiting_since = self._loop.time()
        self._phase = phase
        self._tracker.evictable(self, phase in (Phase.IDLE, Phase.HEADERS))
        limits = self._tracker.limits
        if phase is Phase.IDLE:
            self._timer = self._loop.call_later(limits.keepalive_timeout, self._idle_expired)
        elif phase is Phase.HEADERS:
            self._timer = self._loop.call_later(limits.header_timeout, self._headers_expired)
        elif phase is Phase.BODY:
            self._timer = self._loop.call_later(TICK_SECONDS, self._body_tick)

    def _awaiting_request(self) -> bool:
        """aiohttp is waiting for the next request (not still answering the last one)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _idle_expired(self) -> None:
        self._timer = None
        if not self._awaiting_request():  # still writing the last answer: the send timeout bounds that
            self._timer = self._loop.call_later(self._tracker.limits.keepalive_timeout, self._idle_expired)
            return
        self.force_close()

    def _headers_expired(self) -> None:
        self._timer = None
        if not self._awaiting_request():  # still answering a previous request: that has its own bound
            self._timer = self._loop.call_later(self._tracker.limits.header_timeout, self._headers_expired)
            return
        metrics.HTTP_CONNECTIONS_CLOSED.labels("header_timeout").inc()
        timeout = self._tracker.limits.header_timeout
        self._answer(408, "request_timeout", f"the request headers did not arrive within {timeout:g}s")
        self.close()  # aiohttp stops waiting for this request; the transport lingers, then closes
        self._begin_linger().add_done_callback(lambda _: self.force_close())

    def _body_tick(self) -> None:
        self._timer = None
        payload = self._payload
        if payload is None or payload.is_eof() or payload.exception() is not None:
            self._enter(Phase.BUSY)
            return
        now = self._loop.time()
        elapsed, self._last_tick = now - self._last_tick, now
        transport = self.transport
        # Time counts against the client only while we want its bytes (reading is not paused).
        if transport is not None and transport.is_reading():
            self._waited += elapsed
            self._gap += elapsed
        limits = self._tracker.limits
        allowed = limits.body_timeout + (
            self._received / limits.body_min_rate if limits.body_min_rate else 1e18
        )
        if self._gap > limits.body_timeout:
            why = f"no request body data arrived for {limits.body_timeout:g}s"
        elif self._waited > allowed:
            why = f"the request body arrived slower than {limits.body_min_rate} bytes/s"
        else:
            self._timer = self._loop.call_later(TICK_SECONDS, self._body_tick)
            return
        self._cut_off(RequestTimeout(why), "body_timeout")

    def _cut_off(self, error: ServiceError, reason: str) -> None:
        """End the current request's body with `error`: the handler's next read raises it."""
        metrics.HTTP_CONNECTIONS_CLOSED.labels(reason).inc()
        self._cut = True
        self._enter(Phase.BUSY)
        if self._payload is not None:
            self._payload.set_exception(error)

    def _send_expired(self) -> None:
        self._send_timer = None
        metrics.HTTP_CONNECTIONS_CLOSED.labels("send_timeout").inc()
        if self.transport is not None:
            reset(self.transport)  # the buffered response is never going to be read

    def _send_sample(self) -> tuple[float, int]:
        """Note how long the client has kept us waiting and how much it has read, keeping one
        sample at least `send_rate_window` old (the start of the window) and those after it."""
        transport, writer = self.transport, self._writer
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        delivered = max(0, int(getattr(writer, "output_size", 0)) - buffered)
        samples, window = self._send_samples, self._tracker.limits.send_rate_window
        samples.append((self._send_waited, delivered))
        while len(samples) > 2 and samples[1][0] <= self._send_waited - window:
            samples.popleft()
        return samples[0]

    def _send_tick(self) -> None:
        """While the client is behind: cut it off once, over the last `send_rate_window` seconds
        it kept us waiting, it read less than `send_min_rate` bytes a second. A window, not the
        whole answer's average: what the kernel's buffers took at the start buys no lasting credit."""
        self._rate_timer = None
        transport = self.transport
        if transport is None or self._writer is None or transport.is_closing():
            return
        now = self._loop.time()
        self._send_waited += now - self._send_last
        self._send_last = now
        limits = self._tracker.limits
        since, read_then = self._send_sample()
        behind, read_now = self._send_waited - since, self._send_samples[-1][1]
        if behind < limits.send_rate_window or read_now - read_then >= limits.send_min_rate * behind:
            self._rate_timer = self._loop.call_later(TICK_SECONDS, self._send_tick)
            return
        metrics.HTTP_CONNECTIONS_CLOSED.labels("send_too_slow").inc()
        log.info(
            "slow reader cut off client=%s read=%d in %.1fs behind min_rate=%d",
            self.client or "proxied",
            read_now - read_then,
            behind,
            limits.send_min_rate,
        )
        reset(transport)

    def evict(self, *, for_its_client: bool = False) -> bool:
        """Close this connection to admit a newer one, if it is idle or has not sent its headers;
        `for_its_client`: the newer one is its own client's, at its share."""
        if not self._awaiting_request():
            return False
        metrics.HTTP_CONNECTIONS_CLOSED.labels("evicted").inc()
        if self._phase is Phase.HEADERS and for_its_client:
            message = "this client opened a newer connection past its share; this one made room"
            self._answer_and_close(429, "too_many_connections", message, self._tracker.limits.retry_after)
        elif self._phase is Phase.HEADERS:
            message = "the server is at its connection limit"
            self._answer_and_close(503, "too_many_connections", message, self._tracker.limits.retry_after)
        else:
            self.force_close()
        return True

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._send_timer, self._rate_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._send_timer = self._rate_timer = None

    def _answer_and_close(self, status: int, code: str, message: str, retry_after: int = 0) -> None:
        """Answer and close at once (flushing the answer first): the descriptor is needed now."""
        self._answer(status, code, message, retry_after)
        self.force_close()

    def _answer(self, status: int, code: str, message: str, retry_after: int = 0) -> None:
        """Write a whole JSON error answer straight to the socket, outside aiohttp (no request
        reached a handler); the connection leaves the tracker's count."""
        self._cancel_timers()
        self._tracker.forget(self)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            body = json.dumps(error_document(code, message)).encode()
            reason = {408: "Request Timeout", 429: "Too Many Requests", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                + (f"Retry-After: {retry_after}\r\n" if retry_after else "")
                + "\r\n"
            )
            transport.write(head.encode() + body)

    # Errors aiohttp answers itself (unparseable requests) ------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp answers requests it cannot parse in text/plain and logs them as errors with a
        traceback; here they are a JSON 4xx and one log line (a malformed request is the client's)."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = " ".join(str(message or exc or "unparseable").split())[:200]
        log.info("unparseable request status=%d error=%s", status, reason)
        if self._line_start.startswith(b"HEAD "):  # (the request is aiohttp's stand-in: a GET)
            # A HEAD answer has no body (the client reads none: one written here would be taken
            # for the start of the next answer); the status says enough.
            response = web.Response(status=status, content_type="application/json")
        else:
            response = error_response(status, "bad_request", f"malformed request: {reason}")
        response.force_close()
        return response


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with a reset, dropping what the kernel still holds for the client (nginx's
    `reset_timedout_connection`): a plain close would keep sending it, at the client's pace."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class GuardedServer(web.Server):
    """aiohttp's low-level server, making `GuardedHandler`s."""

    def __init__(self, handler: Any, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.tracker = Tracker(limits)

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, tracker=self.tracker, loop=self._loop, **self._kwargs)


def server_options(web_settings: WebSettings) -> dict[str, Any]:
    """aiohttp handler options that go with the deadlines."""
    return {
        # The idle deadline is kept by `GuardedHandler` (aiohttp's own would also cut a request
        # whose headers are under way, silently); aiohttp needs a positive value to keep alive.
        "keepalive_timeout": AIOHTTP_KEEPALIVE,
        "read_bufsize": READ_BUFFER,
        "lingering_time": LINGERING_SECONDS,
        # Bodies are images and small JSON: a Content-Encoding would only let a small body
        # expand without bound before the byte caps see it.
        "auto_decompress": False,
        "access_log": None,
    }


class GuardedRunner(web.AppRunner):
    """An `AppRunner` whose connections are `GuardedHandler`s."""

    def __init__(self, app: web.Application, web_settings: WebSettings, **kwargs: Any) -> None:
        self._options = server_options(web_settings) | kwargs
        self._limits = Limits.of(web_settings)
        super().__init__(app, **self._options)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            limits=self._limits,
            loop=asyncio.get_running_loop(),
            **self._options,
        )


def guard_of(request: web.Request) -> GuardedHandler | None:
    protocol = request.protocol
    return protocol if isinstance(protocol, GuardedHandler) else None


@web.middleware
async def deadline_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell the connection when its handler runs, so body deadlines apply to exactly that time."""
    guard = guard_of(request)
    if guard is None:
        return await handler(request)
    guard.request_started(request.content, request.writer)
    forwarded = None
    if guard.client is None and (limits := guard.limits).per_client and limits.proxies:
        forwarded = client_address(request, limits.proxies)
        try:
            guard.tracker.start_forwarded(forwarded)
        except TooManyClientRequests as refused:
            guard.request_finished()
            return refusal(refused, request)
    try:
        response = await handler(request)
        if guard.cut_off and not response.prepared:
            # Answer the 408 now and linger, so a client still sending reads it rather than a reset.
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            await guard.linger()
        return response
    finally:
        if forwarded is not None:
            guard.tracker.end_forwarded(forwarded)
        guard.request_finished()
