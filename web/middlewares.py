"""Turn every error into a JSON body with a stable code; never a stack trace to the client."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from pipeline.core import metrics
from pipeline.core.errors import ServiceError, TransientError
from pipeline.core.logs import REQUEST_ID, accept_request_id

log = logging.getLogger(__name__)
#: The status (nginx's) under which a request whose client went away is counted; never sent.
CLIENT_CLOSED = 499

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "unprocessable",
    429: "too_many_requests",
}


def error_document(code: str, message: str, /, **extra: Any) -> dict[str, Any]:
    """The one shape of every error the API returns; `extra` adds fields such as `status`."""
    return {"error": code, "message": message, **extra}


def error_response(http_status: int, code: str, message: str, /, **extra: Any) -> web.Response:
    """An error answer (the one writer of them; `GuardedHandler` writes the same document to a
    socket no request reached)."""
    return web.json_response(error_document(code, message, **extra), status=http_status)


def refusal(exc: ServiceError, request: web.Request) -> web.Response:
    """The answer to a refused request: the error's status, code, message and headers; a
    dependency's 503 also says when to try again (`IMGSVC_RETRY_AFTER`)."""
    response = error_response(exc.http_status, exc.code, exc.message)
    if isinstance(exc, TransientError):
        response.headers["Retry-After"] = str(retry_after_of(request))
    response.headers.update(exc.headers)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServiceError as exc:
        if isinstance(exc, TransientError):
            log.warning("dependency error path=%s code=%s error=%s", request.path, exc.code, exc.message)
        return refusal(exc, request)
    except HttpProcessingError as exc:  # a malformed request noticed while reading the body
        return error_response(400, "bad_request", f"malformed request: {exc.message}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 304s pass through untouched
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason or code.replace("_", " "))
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except ConnectionError:
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client went away mid-request: its business, not a server error. The answer below
            # is never written (aiohttp notices the closed transport and drops it quietly).
            log.info("client disconnected method=%s path=%s", request.method, request.path)
            return web.Response(status=CLIENT_CLOSED)
        log.exception("unhandled error method=%s path=%s", request.method, request.path)
        return error_response(500, "internal_error", "an internal error occurred; it has been logged")
    except Exception:
        log.exception("unhandled error method=%s path=%s", request.method, request.path)
        return error_response(500, "internal_error", "an internal error occurred; it has been logged")


def retry_after_of(request: web.Request) -> int:
    """`IMGSVC_RETRY_AFTER`: what a dependency's 503 tells the client to wait."""
    from web.keys import SETTINGS  # (web.keys imports what imports this module)

    settings = request.app.get(SETTINGS)
    return settings.web.retry_after if settings is not None else 1


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route pattern (never by raw path: ids would explode labels)."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # 304s and redirects pass the error middleware as exceptions
        status = exc.status
        raise
    finally:
        counted, timed = _series(request.method, route, status)
        counted.inc()
        timed.observe(time.perf_counter() - started)


#: Methods counted by name; any other (a client may send any token) is counted as OTHER, so that
#: no client can grow the metrics' series without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@functools.lru_cache(maxsize=1024)
def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter's and timer's series for one answer (looked up once, not per request)."""
    method = method if method in _METHODS else "OTHER"
    label = "client_closed" if status == CLIENT_CLOSED else str(status)
    return metrics.HTTP_REQUESTS.labels(method, route, label), metrics.HTTP_SECONDS.labels(method, route)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (the caller's `X-Request-ID` if sane) for every log line it causes."""
    REQUEST_ID.set(accept_request_id(request.headers.get("X-Request-ID")))
    return await handler(request)


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every response, streamed ones too, names its request id."""
    response.headers["X-Request-ID"] = REQUEST_ID.get()
