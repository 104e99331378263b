"""Fuzzing every input the API parses, through the real HTTP app on a real port.

Every answer must be a success, a 4xx or a documented 503, and every error the JSON shape
`{"error": <code>, "message": <text>}`: never a 500, never text/plain, never a traceback. The
values mix what breaks parsers (digits that are not ASCII, superscripts, huge and negative
numbers, control characters, empty and very long strings, deep nesting, lone surrogates) with
valid values, so the handlers get past validation into the code behind it (a processed image is
downloaded with random `Range`/`If-*` headers, a real cursor owner reaches DynamoDB).

Requests whose bytes aiohttp's client refuses to send (CR/LF, bytes that are not UTF-8) go over
a raw socket; there a clean close (the HTTP parser dropping the connection) is also acceptable.
One app serves the whole module; `MAX_EXAMPLES` bounds the module's runtime (`FUZZ_EXAMPLES`
overrides it for a longer hunt).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp.multipart
import pytest
from aiohttp import ClientError
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, assume, event, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from config.settings import Settings
from tests.support.clients import bearer, issue_key
from tests.support.consumers import drain
from tests.support.images import jpeg_bytes
from tests.support.servers import GuardedTestServer
from tests.support.settings import OTHER_USER, USER, local_settings
from web.app import create_app
from web.multipart import ignore_parser_warnings
from web.openapi import build

Client = TestClient[Any, Any]
#: Per test; 80 keeps the module near 20 s. `FUZZ_EXAMPLES=2000` digs deeper by hand.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "80"))
FUZZ = hsettings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JPEG = jpeg_bytes(300, 200)
#: Every route of the app, path parameters in braces: the OpenAPI document's operations and the
#: pages around them (`test_the_route_table_is_covered` checks the app has exactly these).
PAGES = tuple(("GET", page) for page in ("/openapi.json", "/docs", "/", "/ui", "/ui/assets/{name}"))
_DOCUMENT = build(Settings.from_env({}).imaging, Settings.from_env({}).variants)
ROUTES = (*((method.upper(), path) for method, path, _ in _DOCUMENT.operations()), *PAGES)
QUERY_PARAMETERS = (
    "user_id",
    "image_id",
    "size",
    "format",
    "rendition",
    "expires_in",
    "limit",
    "cursor",
    "wait",
    "file_name",
    "v",
    "expires",
    "sig",
    "public",
    "s",
)
#: The request headers the API reads.
HEADERS = (
    "Authorization",
    "Range",
    "If-Range",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
    "Accept",
    "X-Request-ID",
    "X-File-Name",
    "Content-Type",
)


# --- Strategies ------------------------------------------------------------------------------------

NASTY = (
    "",
    " ",
    "\t",
    "0",
    "-0",
    "-1",
    "+1",
    "1.5",
    "1e3",
    "1e999",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "1_0",
    " 5",
    "5 ",
    "\u00b2",  # superscript two
    "\u00b9\u00b2\u00b3",
    "\u0663",  # Arabic-Indic three
    "\u0967\u0968",  # Devanagari
    "\uff11\uff12",  # fullwidth
    "\U0001d7d7",  # mathematical bold nine
    "9" * 19,
    "9" * 40,
    "9" * 5000,
    "-" + "9" * 40,
    "\x00",
    "\x1b[31m",
    "\u202e",
    "\ufeff1",
    "[" * 2000,
    "{" * 2000,
    "a" * 12_000,
    "🐈" * 100,
    "%ff",
    "..",
    "../etc/passwd",
)
non_ascii_digits = st.text(st.characters(categories=["Nd"]), min_size=1, max_size=12)
controls = st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), min_size=1, max_size=12)
#: One value for anything a client may send as text: query parameters, header values, JSON strings.
value = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    non_ascii_digits,
    controls,
    st.integers().map(str),
    st.integers(-(10**30), 10**30).map(str),
)
#: Control characters aiohttp's client refuses to put in a header (the raw-socket tests send them).
CLIENT_REFUSES = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
header_value = value.map(lambda s: CLIENT_REFUSES.sub("", s))
#: Within aiohttp's 8,190-byte line limit: past it the server cannot parse the request, so cannot
#: know a HEAD from a GET and answers 400 with a body, which a HEAD client cannot read (the raw
#: tests send over-long lines and read the answer as bytes).
parseable_header_value = header_value.map(lambda s: s[:4000])
rendition_names = st.sampled_from(["256", "256-webp", "original", "128", "256-png", "auto"])
user_ids = st.sampled_from([USER, OTHER_USER, "", USER.upper()]) | value
#: Mostly valid ids, so requests get past validation to the records and objects behind them.
#: Not `pending`: a valid `wait` would long-poll it for seconds.
image_ids = st.sampled_from(["ready", "missing"]) | value


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.text(st.characters(categories=["Cs", "Co", "Cc"]), max_size=4)  # lone surrogates too
    | st.sampled_from(NASTY)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
cursors = st.one_of(
    value,
    json_values.map(lambda doc: b64(json.dumps(doc).encode())),
    st.tuples(st.just(USER), json_scalars, json_scalars).map(lambda t: b64(json.dumps(list(t)).encode())),
    st.tuples(st.just(USER), st.text(), st.text()).map(lambda t: b64(json.dumps(list(t)).encode())),
    st.integers(1, 800).map(lambda n: b64(b"[" * n + b"]" * n)),
    st.binary(max_size=64).map(b64),
)
numbers = st.integers(-5, 10**20).map(str) | non_ascii_digits | st.sampled_from(NASTY)
ranges = st.one_of(
    st.sampled_from(
        [
            "bytes=-0",
            "bytes=0-",
            "bytes=0-0",
            "bytes=-1",
            "bytes=5-1",
            "bytes=0-1,2-3",
            "bytes=99999999999999999999-",
            "bytes=-99999999999999999999",
            "bytes=1000000-",
            "items=0-1",
            "bytes = 1 - 2",
            "bytes=--1",
            "bytes=\u0663-",
            "bytes=-\u00b2",
        ]
    ),
    st.builds(lambda a, b: f"bytes={a}-{b}", numbers | st.just(""), numbers | st.just("")),
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 20_000), st.integers(0, 20_000) | st.just("")),
    st.integers(0, 20_000).map(lambda n: f"bytes=-{n}"),
    header_value,
).map(lambda s: CLIENT_REFUSES.sub("", s))  # `numbers` may hold control characters
HUGE_YEAR = "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"
http_dates = st.one_of(
    st.datetimes().map(lambda d: format_datetime(d) + " GMT"),
    st.sampled_from(
        [
            "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
            "Mon, 01 Jan 10000 00:00:00 GMT",
            "Mon, 32 Jan 2020 00:00:00 GMT",
            "Mon, 01 Jan 2020 99:99:99 GMT",
            "Mon, \u0660\u0661 Jan \u0662\u0660\u0662\u0660 00:00:00 GMT",  # Arabic-Indic
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Mon, 01 Jan 2020 00:00:00 +9999",
        ]
    ),
    header_value,
)


@st.composite
def mutated(draw: Any, valid: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """`valid` with up to two of `fields` replaced or removed: most documents pass all but one check."""
    document = dict(valid)
    for name in draw(st.permutations(sorted(fields)))[: draw(st.integers(0, 2))]:
        if draw(st.booleans()) and name in document:
            del document[name]
        else:
            document[name] = draw(fields[name])
    return document


#: `ETAG` stands for the processed image's real ETag (known once the app runs).
ETAG = "<etag>"
BARE_ETAG = "<bare>"
etags = st.sampled_from([ETAG, f"W/{ETAG}", "*", f"{ETAG}, x", BARE_ETAG, '"x"']) | header_value


def with_etag(field: str, etag: str) -> str:
    return field.replace(ETAG, etag).replace(BARE_ETAG, etag.strip('"'))


# --- The app under test ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    client: Client
    key: str
    #: Path and query of signed links to the processed image's first rendition and original.
    link: str
    original_link: str
    #: The processed image's original's ETag.
    etag: str
    #: `next_cursor` of the first page of one image.
    cursor: str


@pytest.fixture(scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    """One app for the module, on the local backend (nothing fuzzed here is AWS's): `ready` is
    processed, `pending` is not; links to `ready`."""
    settings = local_settings(
        tmp_path_factory.mktemp("fuzz"),
        # Fuzzed keys fail on purpose; the shared failure limit would soon answer 429 alone.
        IMGSVC_AUTH_FAILURES_ALLOWED="100000",
        IMGSVC_RENDITIONS="256,256:webp",
        IMGSVC_VARIANT_MAX_SIDE="512",  # variants are made for real: keep each one cheap
        # A fuzzed Content-Length can promise bytes that never come: a 408 soon, not in 20 s.
        IMGSVC_BODY_TIMEOUT="3",
        IMGSVC_UPLOAD_MODES="api,presigned",
    )
    server = GuardedTestServer(create_app(settings), settings.web, host="127.0.0.1")
    await server.start_server()
    key = await issue_key(server.app, USER)
    client: Client = TestClient(server)
    await client.start_server()
    try:
        auth = bearer(key)
        assert (await client.put("/images/ready", data=JPEG, headers=auth)).status == 202
        await drain(settings)
        assert (await client.put("/images/pending", data=JPEG, headers=auth)).status == 202
        links = []
        for rendition in ("256", "original"):
            response = await client.get("/images/ready/url", params={"rendition": rendition}, headers=auth)
            assert response.status == 200, await response.text()
            parts = urlsplit((await response.json())["url"])
            links.append(f"{parts.path}?{parts.query}")
        etag = (await client.get("/download/image?image_id=ready", headers=auth)).headers["ETag"]
        page = await (await client.get("/images?limit=1", headers=auth)).json()
        yield Target(client, key, links[0], links[1], etag, page["next_cursor"])
    finally:
        await client.close()


# --- Checking answers ------------------------------------------------------------------------------


def check(status: int, content_type: str, body: bytes, sent: object) -> None:
    """A success, a 4xx or a 503, and every error as the one JSON shape."""
    assert status < 500 or status == 503, (status, body[:300], sent)
    assert b"Traceback" not in body, (status, body[:300], sent)
    if status >= 400:
        assert content_type == "application/json", (status, content_type, body[:300], sent)
        error = json.loads(body)
        assert isinstance(error, dict), (status, body[:300], sent)
        assert isinstance(error.get("error"), str) and error["error"], (status, error, sent)
        assert isinstance(error.get("message"), str) and error["message"], (status, error, sent)
        assert error["error"] != "internal_error", (status, error, sent)


async def call(
    target: Target,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    key: bool = True,
) -> int:
    """Send one request with aiohttp's client (the caller's key unless `headers` replaces it)."""
    sent = {**(bearer(target.key) if key else {}), **(headers or {})}
    try:
        response = await target.client.request(method, path, params=params, headers=sent, data=data)
    except ClientError as exc:
        raise AssertionError(f"no answer: {exc!r}", method, path, params, headers) from None
    body = await response.read()
    if method == "HEAD":  # no body to judge
        assert response.status < 500 or response.status == 503, (response.status, path, headers)
    else:
        check(response.status, response.content_type, body, (method, path, params, headers))
    event(f"status {response.status}")  # `--hypothesis-show-statistics`: how deep the inputs got
    return response.status


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_exchange(target: Target, request: bytes) -> RawAnswer | None:
    """Send bytes as they are and read one answer; None when the server closed without one."""
    reader, writer = await asyncio.open_connection(target.client.host, target.client.port)
    try:
        writer.write(request)
        async with asyncio.timeout(20):
            try:
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b"", exc.partial  # a clean close, not half an answer
                event("closed")
                return None
            except ConnectionError:
                event("closed")
                return None
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, field = line.partition(":")
                    headers[name.strip().lower()] = field.strip()
            status = int(status_line.split(" ")[1])
            body = b""
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    body += await reader.readexactly(size)
                    await reader.readexactly(2)
            elif status not in (204, 304):
                body = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    content_type = headers.get("content-type", "").split(";")[0].strip()
    check(status, content_type, body, request[:300])
    event(f"status {status}")
    return RawAnswer(status, headers, body)


def raw_request(method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    """A request as bytes; `Host`, `Content-Length` and `Connection: close` unless `headers` has them."""
    given = {name.lower() for name, _ in headers}
    defaults = [
        (b"Host", b"127.0.0.1"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
    ]
    fields = headers + [(name, field) for name, field in defaults if name.lower() not in given]
    lines = [
        method.encode() + b" " + target + b" HTTP/1.1",
        *(name + b": " + field for name, field in fields),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- Every route ----------------------------------------------------------------------------------


def test_the_route_table_is_covered() -> None:
    """A new route is fuzzed too: `ROUTES` must list every route of the app."""
    app = create_app(Settings.from_env({}))
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert routed == set(ROUTES)


def fill(path: str, values: dict[str, str]) -> str:
    for name, filler in values.items():
        path = path.replace("{" + name + "}", quote(filler, safe=""))
    return path


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    path_values=st.fixed_dictionaries(
        {
            "image_id": image_ids,
            "user_id": user_ids,
            "rendition": rendition_names | value,
            "name": st.sampled_from(["app.js", "app.css", "index.html", "original.jpg", "256.jpg"]) | value,
            "token": value,
            "version": value,
        }
    ),
    params=st.dictionaries(st.sampled_from(QUERY_PARAMETERS), value, max_size=5),
    headers=st.dictionaries(st.sampled_from(HEADERS), header_value, max_size=3),
    data=st.none() | st.binary(max_size=64) | st.sampled_from([b"{}", b"[" * 60_000, b"\xff\xfe"]),
)
@example(
    route=("GET", "/images"),
    path_values={"image_id": "", "user_id": "", "rendition": "", "name": ""},
    params={"limit": "\u0661\u0660"},
    headers={},
    data=None,
)
async def test_every_route_answers_4xx_or_success(
    target: Target,
    route: tuple[str, str],
    path_values: dict[str, str],
    params: dict[str, str],
    headers: dict[str, str],
    data: bytes | None,
) -> None:
    method, template = route
    if method in ("PUT", "DELETE") and path_values["image_id"] == "ready":
        path_values = {**path_values, "image_id": "sweep"}  # the other tests need `ready`
    await call(target, method, fill(template, path_values), params=params, headers=headers, data=data)


# --- Query parameters, one route at a time, deep enough to reach the code behind them -------------

#: A valid request per route, and the parameters fuzzed on it (one or two at a time, the others
#: valid, so most requests get past validation). `image_id` is a path parameter where it is in braces.
IMAGE_ROUTES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "/download/image": ({"image_id": "ready"}, ("user_id", "image_id")),
    "/download/thumbnail": (
        {"image_id": "ready", "size": "256", "format": "auto"},
        ("user_id", "image_id", "size", "format"),
    ),
    "/images/{image_id}/url": (
        {"image_id": "ready", "rendition": "256", "expires_in": "60"},
        ("user_id", "image_id", "rendition", "expires_in"),
    ),
    "/images/{image_id}": ({"image_id": "ready", "wait": "0"}, ("user_id", "image_id", "wait")),
    "/images/{image_id}/variant": (
        {"image_id": "ready", "w": "64"},
        ("image_id", "w", "h", "fit", "crop", "format", "q", "upscale"),
    ),
}
FUZZED: dict[str, st.SearchStrategy[str]] = {
    "user_id": user_ids,
    "image_id": st.sampled_from(["pending", "missing"]) | image_ids,
    "size": rendition_names | value,
    "format": st.sampled_from(["auto", "jpeg", "webp", "png", "avif", "jpg", "gif"]) | value,
    "rendition": rendition_names | value,
    "expires_in": st.sampled_from(["1", "604800", "604801"]) | numbers,
    "wait": st.sampled_from(["0.01", "1e-9", "0.0", ".5", "5."]) | numbers,
    "w": st.sampled_from(["1", "64", "512", "513", "0", "-1", "1e2"]) | numbers,
    "h": st.sampled_from(["1", "48", "512", "513", "0"]) | numbers,
    "fit": st.sampled_from(["contain", "cover", "fill", "COVER", "squash"]) | value,
    "crop": st.sampled_from(["centre", "center", "attention", "entropy", "focal"]) | value,
    "q": st.sampled_from(["1", "100", "101", "0"]) | numbers,
    "upscale": st.sampled_from(["true", "1", "false", "yes"]) | value,
}


@st.composite
def image_requests(draw: Any) -> tuple[str, dict[str, str]]:
    route = draw(st.sampled_from(sorted(IMAGE_ROUTES)))
    valid, fuzzable = IMAGE_ROUTES[route]
    params = dict(valid)
    for name in draw(st.permutations(fuzzable))[: draw(st.integers(1, 2))]:
        params[name] = draw(FUZZED[name])
    if "wait" in params and params["image_id"] != "ready":
        params["wait"] = "0"  # only a pending image is long-polled: not for seconds per example
    return route, params


@FUZZ
@given(request=image_requests(), accept=st.none() | header_value)
@example(request=("/images/{image_id}/url", {"image_id": "ready", "expires_in": "\u0663"}), accept=None)
@example(request=("/images/{image_id}", {"image_id": "ready", "wait": "\u0663"}), accept=None)
async def test_image_queries(target: Target, request: tuple[str, dict[str, str]], accept: str | None) -> None:
    route, params = request
    if "{image_id}" in route:
        route = fill(route, {"image_id": params.pop("image_id")})
    headers = {"Accept": accept} if accept is not None else {}
    await call(target, "GET", route, params=params, headers=headers)


@FUZZ
@given(
    params=mutated(
        {"limit": "1", "user_id": "", "cursor": "<cursor>", "sort": "created", "q": "a"},
        {
            "limit": st.sampled_from(["1", "2", "100"]) | numbers,
            "cursor": cursors,
            "user_id": user_ids,
            "sort": st.sampled_from(["created", "id"]) | value,
            "order": st.sampled_from(["asc", "desc"]) | value,
            "status": st.sampled_from(["ready", "pending", "failed", "awaiting_upload"]) | value,
            "q": value,
        },
    )
)
@example(params={"limit": "\u0661\u0660"})
@example(params={"limit": "10", "cursor": b64(json.dumps([USER, "\ud800", "x"]).encode())})
@example(params={"limit": "10", "cursor": b64(json.dumps([USER, "", ""]).encode())})
async def test_listing_queries(target: Target, params: dict[str, str]) -> None:
    """`<cursor>` is the app's own `next_cursor` of the first page."""
    if params.get("cursor") == "<cursor>":
        params["cursor"] = target.cursor
    await call(target, "GET", "/images", params=params)


@FUZZ
@given(
    which=st.sampled_from(["link", "original_link"]),
    replace=st.dictionaries(st.sampled_from(["v", "expires", "sig"]), numbers | value, max_size=3),
    path=st.fixed_dictionaries({}, optional={"user_id": user_ids, "image_id": image_ids, "rendition": value}),
)
async def test_signed_link_queries_and_paths(
    target: Target, which: str, replace: dict[str, str], path: dict[str, str]
) -> None:
    link = urlsplit(getattr(target, which))
    query = dict(part.split("=", 1) for part in link.query.split("&"))
    query.update(replace)
    _, _, user_id, image_id, rendition = link.path.split("/")
    segments = {"user_id": user_id, "image_id": image_id, "rendition": rendition, **path}
    route = fill("/links/{user_id}/{image_id}/{rendition}", segments)
    await call(target, "GET", route, params=query, key=False)


@FUZZ
@given(
    where=st.sampled_from(
        [("/images", "limit"), ("/images/pending", "wait"), ("/images/ready/url", "expires_in")]
    ),
    digits=non_ascii_digits,
)
@example(where=("/images", "limit"), digits="\u0661\u0660")  # int() read it as 10
@example(where=("/images/pending", "wait"), digits="\u0663")  # float() read it as 3
async def test_numbers_in_other_scripts_are_refused(
    target: Target, where: tuple[str, str], digits: str
) -> None:
    """Every number the API reads is ASCII digits: `str.isdigit()` and `int()` take many more."""
    assume(not digits.isascii())
    path, name = where
    assert await call(target, "GET", path, params={name: digits}) == 400


# --- Conditional GET and ranges on real objects --------------------------------------------------


@FUZZ
@given(
    route=st.sampled_from(["original", "thumbnail", "link", "original_link", "ui", "asset"]),
    method=st.sampled_from(["GET", "GET", "HEAD"]),
    headers=mutated(
        {"Range": "bytes=0-99"},
        {
            "Range": ranges,
            "If-Range": etags | http_dates,
            "If-None-Match": etags,
            "If-Modified-Since": http_dates,
            "If-Unmodified-Since": http_dates,
            "Accept": parseable_header_value,
        },
    ),
)
# A year of 20 digits: aiohttp's date parsing raised OverflowError, a 500 from the downloads and a
# dropped connection from the UI's files (aiohttp's FileResponse, which also answered a Range it
# could not read with an empty, non-JSON 416).
@example(route="original", method="GET", headers={"If-Modified-Since": HUGE_YEAR})
@example(route="link", method="GET", headers={"If-Modified-Since": HUGE_YEAR})
@example(route="ui", method="GET", headers={"If-Modified-Since": HUGE_YEAR})
@example(route="asset", method="GET", headers={"If-Unmodified-Since": HUGE_YEAR})
@example(route="asset", method="GET", headers={"If-Range": HUGE_YEAR, "Range": "bytes=0-1"})
@example(route="ui", method="GET", headers={"Range": "bytes=\u0663-"})
async def test_range_and_conditional_headers(
    target: Target, route: str, method: str, headers: dict[str, str]
) -> None:
    headers = {name: with_etag(field, target.etag) for name, field in headers.items()}
    path, key = {
        "original": ("/download/image?image_id=ready", True),
        "thumbnail": ("/download/thumbnail?image_id=ready&format=auto", True),
        "link": (target.link, False),
        "original_link": (target.original_link, False),
        "ui": ("/ui", False),
        "asset": ("/ui/assets/app.js", False),
    }[route]
    await call(target, method, path, headers=headers, key=key)


# --- Credentials and request ids -------------------------------------------------------------------


authorizations = st.one_of(
    header_value,
    header_value.map(lambda s: "Bearer " + s),
    st.sampled_from(["Bearer", "Bearer ", "bearer  x", "Basic dXNlcjpwYXNz", "Bearer isk_", "Bearer\tx"]),
)


@FUZZ
@given(
    authorization=st.none() | authorizations,
    request_id=st.none() | header_value,
    route=st.sampled_from(["/images", "/webhook", "/download/image?image_id=ready", "/images/ready"]),
)
async def test_credentials_and_request_ids(
    target: Target, authorization: str | None, request_id: str | None, route: str
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    await call(target, "GET", route, headers=headers, key=authorization is None)


@FUZZ
@given(position=st.integers(0, 60), replacement=st.characters(categories=["Nd", "No", "Lu", "Ll", "Pd"]))
async def test_keys_with_one_character_changed(target: Target, position: int, replacement: str) -> None:
    """Near-valid keys reach the key table: non-ASCII digits and letters in every position."""
    key = target.key
    position = min(position, len(key) - 1)
    changed = key[:position] + replacement + key[position + 1 :]
    status = await call(target, "GET", "/images", headers={"Authorization": f"Bearer {changed}"})
    assert status == 200 if changed == key else status in (401, 429)


# --- Bodies ---------------------------------------------------------------------------------------


content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "APPLICATION/JSON",
            "application/json;;",
            'application/json; x="',
            "text/plain",
            "",
        ]
    ),
    header_value,
)
raw_json_bodies = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b'"x"',
            b"[" * 60_000,
            b"[" * 100_000,
            b'{"a":' * 10_000,
            b"9" * 5000,
            b"1e99999",
            b'"\\ud800"',
            b'{"file_name": "\\ud800"}',
            b'{"url": "http://example.com/\\udc80"}',
            b"\xff\xfe{\x00}\x00",
            b"\xef\xbb\xbf{}",
            b"NaN",
        ]
    ),
)
file_names = st.sampled_from(["cat.jpg", "dog.jpg", "cat", "../cat.jpg", "cat.jpg\x00", "README.md"]) | value


upload_bodies = mutated(
    {"file_name": "cat.jpg", "user_id": USER},
    {"file_name": file_names | json_values, "user_id": user_ids | json_values, "x": json_values},
)
webhook_urls = st.one_of(
    st.sampled_from(
        [
            "https://example.com/hook",
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://\u0661\u0662\u0667.0.0.1/",
            "http://127.0.0.1./",
            "http://0x7f000001/",
            "http://example.com:99999/",
            "http://example.com:\u0668\u0660/",
            "http://exa mple.com/",
            "https://例え.テスト/",
            "http://xn--/",
            "http://a..b/",
            "http://" + "a" * 300 + ".com/",
            "http://%zz/",
            "http://[::1/",
            "http://user:pass@example.com/",
            "https://example.com/#x",
            "https://example.com/" + "a" * 3000,
            "https://example.com/\ud800",
            "http://\ud800.com/",
        ]
    ),
    value.map(lambda s: "https://" + s),
    value.map(lambda s: "https://example.com/" + s),
    value,
    json_values,
)
upload_url_bodies = mutated(
    {"content_length": 1000, "content_type": "image/jpeg"},
    {
        "content_length": st.integers(-(2**70), 2**70) | json_values,
        "content_type": st.sampled_from(["image/png", "image/JPG", "image/heic", "image/", "image"])
        | json_values,
        "image_id": st.sampled_from(["ready", "pending", "new-one"]) | json_values,
        "file_name": json_values,
        "expires_in_days": st.integers(-5, 10**6) | json_values,
    },
)
webhook_bodies = mutated(
    {"url": "https://example.com/hook"}, {"url": webhook_urls, "rotate_secret": st.booleans() | json_values}
)


def dumps(document: Any) -> bytes:
    return json.dumps(document).encode()


@FUZZ
@given(
    route=st.sampled_from(["/upload", "/webhook", "/images/upload-url"]),
    kind=st.sampled_from(["document", "document", "any", "raw"]),
    data=st.data(),
    content_type=st.integers(0, 3).flatmap(
        lambda n: content_types if n == 0 else st.just("application/json")
    ),
)
async def test_json_bodies(target: Target, route: str, kind: str, data: Any, content_type: str) -> None:
    documents = {
        "/upload": upload_bodies,
        "/webhook": webhook_bodies,
        "/images/upload-url": upload_url_bodies,
    }
    if kind == "document":
        body = dumps(data.draw(documents[route]))
    else:
        body = data.draw(json_values.map(dumps) if kind == "any" else raw_json_bodies)
    method = "PUT" if route == "/webhook" else "POST"
    await call(target, method, route, headers={"Content-Type": content_type}, data=body)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/webhook", b'{"url": "https://example.com/\\udc80"}'),  # was stored and answered 200
        ("PUT", "/webhook", b'{"url": "https://example.com/", "\\ud800": 1}'),
        ("POST", "/upload", b'{"file_name": "cat.jpg", "user_id": "\\udfff"}'),
    ],
)
async def test_json_with_lone_surrogates_is_invalid(
    target: Target, method: str, path: str, body: bytes
) -> None:
    """`"\\ud800"` is JSON syntax but no text: every JSON body refuses it, before any handler."""
    response = await target.client.request(
        method, path, data=body, headers={**bearer(target.key), "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_json"


@FUZZ
@given(
    body=st.sampled_from([JPEG, b"", b"\xff\xd8\xff", JPEG[:500]]) | st.binary(max_size=128),
    content_type=st.none() | st.sampled_from(["image/jpeg", "application/octet-stream"]) | content_types,
    file_name=st.none() | value,
    x_file_name=st.none() | header_value,
)
async def test_raw_uploads(
    target: Target, body: bytes, content_type: str | None, file_name: str | None, x_file_name: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    if x_file_name is not None:
        headers["X-File-Name"] = x_file_name
    params = {"file_name": file_name} if file_name is not None else {}
    await call(target, "PUT", "/images/fuzzput", params=params, headers=headers, data=body)


boundaries = st.one_of(
    st.sampled_from(["b", "x" * 70, "x" * 71, '"quoted"', "", "a b", "--", "é"]),
    st.text(st.characters(codec="ascii", exclude_characters="\r\n"), min_size=1, max_size=20),
    header_value,
)
part_names = st.sampled_from(
    [
        b'form-data; name="file"; filename="cat.jpg"',
        b'form-data; name="file"; filename="\xff\xfe.jpg"',
        b"form-data; name=\"file\"; filename*=UTF-8''%ff%fe.jpg",
        b"form-data; name=\"file\"; filename*=UTF-8''%ED%A0%80.jpg",
        b"form-data; name=\"file\"; filename*=bogus''x.jpg",
        b'form-data; name="file"; filename=""',
        b'form-data; name="file"; filename="a\x00b"',
        b'form-data; name="field"',
        b'form-data; name="_charset_"',
        b'form-data; name="file"; filename="a"; filename="b"',
        b'form-data; name="file"; filename*=x',
        b"form-data; =x",
        b"form-data; filename=",
        b"attachment",
        b"",
    ]
) | st.binary(max_size=60)


part_headers = st.sampled_from(
    [
        b"Content-Type: image/jpeg",
        b"Content-Type: multipart/mixed; boundary=c",
        b"Content-Length: 5",
        b"Content-Length: -1",
        b"Content-Length: \xd9\xa3",
        b"Content-Length: 99999999999999999999",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: x-unknown",
        b"Content-Encoding: gzip",
    ]
) | st.binary(max_size=30)


payloads = st.sampled_from([JPEG, b"", b"junk", b"utf-8" * 10, JPEG[:300]]) | st.binary(max_size=40)
MULTIPART_ASPECTS = ("boundary", "used", "kind", "disposition", "headers", "payload", "parts", "ending")


@st.composite
def multipart_bodies(draw: Any) -> tuple[str, bytes]:
    """A valid upload (one file part) with up to two aspects fuzzed: most get far into the reader."""
    aspects = set(draw(st.permutations(MULTIPART_ASPECTS))[: draw(st.integers(0, 2))])
    declared = draw(boundaries) if "boundary" in aspects else "fuzz-boundary"
    used = (draw(boundaries) if "used" in aspects else declared).encode()
    kinds = ["multipart/form-data; boundary=", "multipart/mixed; boundary=", "multipart/form-data; x="]
    kind = draw(st.sampled_from(kinds)) if "kind" in aspects else kinds[0]
    file_part = (
        draw(part_names) if "disposition" in aspects else b'form-data; name="file"; filename="cat.jpg"',
        draw(st.lists(part_headers, max_size=2)) if "headers" in aspects else [b"Content-Type: image/jpeg"],
        draw(payloads) if "payload" in aspects else JPEG,
    )
    parts = [file_part]
    if "parts" in aspects:
        for _ in range(draw(st.integers(1, 3))):
            extra = (draw(part_names), draw(st.lists(part_headers, max_size=2)), draw(payloads))
            parts.insert(draw(st.integers(0, len(parts))), extra)
    endings = [
        b"--" + used + b"--\r\n",
        b"",
        b"--" + used + b"\r\n",
        b"--" + used,
        b"--" + used + b"--\r\nafter",
    ]
    ending = draw(st.sampled_from(endings)) if "ending" in aspects else endings[0]
    body = b"".join(
        b"--"
        + used
        + b"\r\n"
        + b"\r\n".join([b"Content-Disposition: " + disposition, *headers])
        + b"\r\n\r\n"
        + payload
        + b"\r\n"
        for disposition, headers, payload in parts
    )
    return kind + declared, body + ending


@FUZZ
@given(multipart=multipart_bodies(), query_name=st.none() | value)
@example(  # a file name that is not UTF-8 was a UnicodeEncodeError in `quote`: a 500
    multipart=(
        "multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="\xe9t\xe9.jpg"\r\n\r\n'
        + JPEG
        + b"\r\n--b--\r\n",
    ),
    query_name=None,
)
@example(  # a `_charset_` field over 31 bytes first: aiohttp raised RuntimeError, a 500
    multipart=(
        "multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\n'
        + b"x" * 40
        + b'\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        + JPEG
        + b"\r\n--b--\r\n",
    ),
    query_name=None,
)
@example(  # aiohttp warns of a bad Content-Disposition: an exception where warnings are errors
    multipart=(
        "multipart/form-data; boundary=b",
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename*=bogus''x.jpg\r\n\r\n"
        + JPEG
        + b"\r\n--b--\r\n",
    ),
    query_name=None,
)
async def test_multipart_uploads(
    target: Target, multipart: tuple[str, bytes], query_name: str | None
) -> None:
    content_type, body = multipart
    assume(CLIENT_REFUSES.search(content_type) is None)
    params = {"file_name": query_name} if query_name is not None else {}
    await call(
        target, "PUT", "/images/fuzzpart", params=params, headers={"Content-Type": content_type}, data=body
    )


def test_multipart_parser_warnings_are_ignored_by_the_web_process() -> None:
    """Each distinct malformed Content-Disposition was printed and kept in aiohttp's warning
    registry: a client could grow both without bound. `python -m web` ignores them."""
    with warnings.catch_warnings():
        ignore_parser_warnings()
        before = len(getattr(aiohttp.multipart, "__warningregistry__", {}))
        for i in range(50):
            assert aiohttp.multipart.parse_content_disposition(f"form-data; filename*=bad{i}")[1] == {}
        assert len(getattr(aiohttp.multipart, "__warningregistry__", {})) <= before + 1


# --- Raw bytes: what aiohttp's client will not send -----------------------------------------------


raw_values = st.one_of(
    st.binary(max_size=80),
    st.sampled_from(
        [
            b"\xff",
            b"\xed\xa0\x80",
            b"\xc3",
            "\u00b2".encode(),
            "\u0663".encode(),
            b"\x00",
            b"\x7f",
            b"\x1b[0m",
            b"\r\nX-Injected: 1",
            b"\n",
            b"a" * 9000,
            b"bytes=\xff-",
            b"Bearer \xff\xfe",
            b"multipart/form-data; boundary=\xff",
            b"application/json; charset=\xff",
        ]
    ),
    value.map(lambda s: s.encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(
    name=st.sampled_from([h.encode() for h in (*HEADERS, "Host", "Content-Length", "Transfer-Encoding")]),
    field=raw_values,
    route=st.sampled_from(["download", "link", "put", "list", "upload", "create-link", "ui"]),
)
@example(name=b"X-File-Name", field=b"\xff\xfe.jpg", route="put")
async def test_raw_header_bytes(target: Target, name: bytes, field: bytes, route: str) -> None:
    auth = (b"Authorization", f"Bearer {target.key}".encode())
    method, path, body = {
        "download": ("GET", b"/download/image?image_id=ready", b""),
        "link": ("GET", target.link.encode(), b""),
        "put": ("PUT", b"/images/fuzzraw", JPEG),
        "list": ("GET", b"/images?limit=1", b""),
        "upload": ("POST", b"/upload", b'{"file_name": "cat.jpg"}'),
        "create-link": ("GET", b"/images/ready/url", b""),  # the link is built from Host
        "ui": ("GET", b"/ui", b""),
    }[route]
    if name in (b"Content-Length", b"Transfer-Encoding"):  # framing: no handler waits for a body
        method, path, body = "GET", b"/images?limit=1", b""
    headers = [auth] if name != b"Authorization" else []
    if route == "upload" and name != b"Content-Type":
        headers.append((b"Content-Type", b"application/json"))
    headers.append((name, field))
    await raw_exchange(target, raw_request(method, path, headers, body))


path_bytes = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.sampled_from(
        [b"\xff", b"\xed\xa0\x80", b"%ff", b"%ED%A0%80", b"a\x00", b"..", b"%2e%2e", b"a" * 9000]
    ),
    value.map(lambda s: s.encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(route=st.sampled_from(["rendition", "image", "query", "sig"]), raw=path_bytes)
@example(route="rendition", raw=b"\xff")
async def test_raw_request_targets(target: Target, route: str, raw: bytes) -> None:
    link = target.link.encode()
    path, _, query = link.partition(b"?")
    prefix = path.rsplit(b"/", 1)[0]
    request_target = {
        "rendition": prefix + b"/" + raw + b"?" + query,
        "image": b"/images/" + raw,
        "query": b"/download/image?image_id=" + raw + b"&user_id=" + raw,
        "sig": path + b"?v=0&expires=99999999999&sig=" + raw,
    }[route]
    headers = [(b"Authorization", f"Bearer {target.key}".encode())]
    await raw_exchange(target, raw_request("GET", request_target, headers))
