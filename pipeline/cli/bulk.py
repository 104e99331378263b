"""`python -m pipeline upload PATH...`: bulk upload of files and folders through the HTTP API.

Concurrent streamed uploads with a progress bar: straight to S3 where the API offers presigned
uploads (`POST /images/upload-url`, then a PUT to the URL it answers; files of 16 MiB and more
as resumable uploads, a part at a time, retried and resumed: `pipeline.cli.resumable`), else,
and for a file that replaces an image, `PUT /images/{id}` through the API. Every finished file is
appended to a state file (JSON lines), so an interrupted run started again skips what is done
(same path, size and modification time) and goes on with the rest. Image ids come from the
file's path relative to the folder given, made safe for the id pattern and suffixed with a short
hash of the path, so two files never share an id and a re-run maps each file to the same one.

What is done is done *somewhere*: each journal line names the API and the user (a hash of the
key, never the key), and a file counts as done only if the API still lists its image, so a
restarted in-memory stack, another API or another user gets the files again. Failures are kept
short (the API's JSON `error: message`, or one transport reason); when the API cannot be reached
or refuses the key, the run stops before the first upload instead of failing every file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from tqdm import tqdm

from pipeline.cli.answers import Refused, refusal, short
from pipeline.cli.resumable import (
    MULTIPART_FROM,
    Upload,
    append,
    journal_line,
    journal_records,
    load_started,
)
from pipeline.core.formats import detect_format

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"}
CHUNK = 256 * 1024
PAGE = 100  # the API's largest page of `GET /images`
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def default_api(host: str, port: int) -> str:
    """The API a local `python -m web` with the same IMGSVC_HOST/IMGSVC_PORT serves."""
    if host in WILDCARD_HOSTS:  # listening everywhere: loopback is one of the addresses
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class Item:
    path: Path
    image_id: str
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> str:
        return f"{self.path.resolve()}|{self.size}|{self.mtime_ns}"


@dataclass(frozen=True)
class Target:
    """Where uploads go: an API and the user a key stands for (its hash; the key is a secret)."""

    api: str
    account: str

    @classmethod
    def of(cls, api: str, key: str) -> Target:
        return cls(api.rstrip("/"), hashlib.sha256(key.encode()).hexdigest()[:16])


@dataclass
class Summary:
    uploaded: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: Why the run stopped before trying every file (nothing listening, key refused), if it did.
    stopped: str | None = None
    not_tried: int = 0

    def fail(self, item: Item, code: str, reason: str) -> None:
        self.failed[str(item.path)] = reason
        self.errors[code] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "skipped_already_uploaded": self.skipped,
            "failed": len(self.failed),
            "bytes": self.bytes,
            "errors": dict(self.errors),
            "failures": self.failed,
            "stopped": self.stopped,
        }

    def report(self) -> list[str]:
        """One line per distinct failure reason, for people (the JSON keeps every file's)."""
        tried = Counter(r for r in self.failed.values() if not r.startswith("not tried: "))
        stop = f"stopped early, {self.not_tried} file(s) not tried"
        lines = [
            f"{n} file(s) failed: {reason}" + (f" ({stop})" if reason == self.stopped else "")
            for reason, n in tried.most_common()
        ]
        if self.stopped and self.stopped not in tried:
            lines.append(f"{stop}: {self.stopped}")
        return lines


def image_id_for(relative: Path) -> str:
    """A valid, stable id: the path's readable part plus 8 hex of its hash."""
    digest = hashlib.sha256(relative.as_posix().encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", relative.with_suffix("").as_posix()).strip("-_")[:48]
    return f"{readable}-{digest}" if readable else f"img-{digest}"


def collect(paths: Iterable[Path]) -> list[Item]:
    """Image files under the given files and folders (by suffix; the API checks the bytes)."""
    items: list[Item] = []
    for given in paths:
        files = sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given]
        base = given if given.is_dir() else given.parent
        for path in files:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                stat = path.stat()
                items.append(Item(path, image_id_for(path.relative_to(base)), stat.st_size, stat.st_mtime_ns))
    return items


def load_done(state: Path, target: Target) -> set[tuple[str, str]]:
    """(fingerprint, image id) of the files the journal says went to `target`.

    Lines of other targets, of the older format without one, and lines cut short by an
    interruption do not count: at worst a file is uploaded again, replacing the same image.
    """
    done = set()
    for record in journal_records(state):
        if (
            not record.get("in_progress")  # a resumable upload begun (`resumable`), not done
            and record.get("api") == target.api
            and record.get("account") == target.account
            and isinstance(record.get("fingerprint"), str)
            and isinstance(record.get("image_id"), str)
        ):
            done.add((record["fingerprint"], record["image_id"]))
    return done


def _transport_refusal(exc: BaseException, api: str) -> Refused:
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        detail = "connection refused" if isinstance(os_error, ConnectionRefusedError) else os_error.strerror
        return Refused("cannot_connect", f"cannot connect to {api} ({short(detail or os_error)})", fatal=True)
    if isinstance(exc, TimeoutError):
        return Refused("timeout", f"no answer from {api} in time")
    return Refused("connection_error", f"connection to {api} failed ({short(exc) or type(exc).__name__})")


async def _listed(session: aiohttp.ClientSession, api: str, wanted: set[str]) -> set[str]:
    """Which of `wanted` the API lists for the key's user; also the run's first contact with it."""
    found: set[str] = set()
    cursor: str | None = None
    while True:
        query = {"limit": str(PAGE if wanted else 1)} | ({"cursor": cursor} if cursor else {})
        try:
            async with session.get(f"{api}/images", params=query) as response:
                if response.status != 200:
                    raise await refusal(response)
                page = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_refusal(exc, api) from None
        except ValueError:
            raise Refused("bad_answer", f"{api}/images did not answer JSON", fatal=True) from None
        if not isinstance(page, dict) or not isinstance(page.get("images"), list):
            raise Refused("bad_answer", f"{api}/images answered an unexpected document", fatal=True)
        found |= {str(i.get("image_id")) for i in page["images"] if isinstance(i, dict)} & wanted
        cursor = page.get("next_cursor")
        if found == wanted or not isinstance(cursor, str) or not cursor:
            return found


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


@dataclass
class _Route:
    """How this run sends bytes: straight to storage while the API offers presigned uploads
    (`POST /images/upload-url`), through the API otherwise. `storage` carries no API key: a
    presigned URL is its own authority (and S3 refuses a request with two)."""

    storage: aiohttp.ClientSession
    presigned: bool = True
    #: Resumable uploads the journal says were begun: fingerprint -> (image id, upload id).
    started: dict[str, tuple[str, str]] = field(default_factory=dict)
    target: Target | None = None
    journal: IO[str] | None = None


async def _send_one(session: aiohttp.ClientSession, route: _Route, api: str, item: Item) -> None:
    if route.presigned and await _put_presigned(session, route, api, item):
        return
    await _put(session, api, item)


async def _put_presigned(session: aiohttp.ClientSession, route: _Route, api: str, item: Item) -> bool:
    """Send `item` to a presigned URL; False when the API should take it instead (presigned
    uploads are not offered, the file is no image format we know, or it replaces an image)."""
    with item.path.open("rb") as handle:
        fmt = detect_format(handle.read(64))
    if fmt is None:
        return False  # the API says why it refuses it
    body = {
        "image_id": item.image_id,
        "content_length": item.size,
        "content_type": f"image/{fmt}",
        "file_name": item.path.name,
    }
    if item.size >= MULTIPART_FROM:
        return await _put_in_parts(session, route, api, item, body)
    try:
        async with session.post(f"{api}/images/upload-url", json=body) as response:
            if response.status != 201:
                refused = await refusal(response)
                if refused.code in _NOT_OFFERED:
                    route.presigned = False
                    return False
                if refused.code == "image_exists":
                    return False
                raise refused
            answer = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _transport_refusal(exc, api) from None
    except ValueError:
        raise Refused("bad_answer", f"{api}/images/upload-url did not answer JSON") from None
    url, headers = str(answer.get("url", "")), answer.get("headers") or {}
    where = url.split("?", 1)[0]
    try:
        async with route.storage.put(
            url, data=_chunks(item.path), headers={**headers, "Content-Length": str(item.size)}
        ) as response:
            if response.status >= 300:
                raise await refusal(response)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _transport_refusal(exc, where) from None
    return True


async def _put_in_parts(
    session: aiohttp.ClientSession, route: _Route, api: str, item: Item, body: dict[str, Any]
) -> bool:
    """A large file as a resumable upload (`pipeline.cli.resumable`): resumed if the journal
    says one was begun and the API still holds it, else begun (and journaled). False when the
    API should take it instead (the id names an image already: a replacement)."""
    upload = Upload(session, route.storage, api, item.path)
    try:
        answer = None
        begun = route.started.get(item.fingerprint)
        if begun is not None and begun[0] == item.image_id:
            answer = await upload.state(item.image_id)
        if answer is None:
            answer = await upload.begin(body)
            if answer is None:
                return False
            if route.journal is not None and route.target is not None:
                base = {
                    "fingerprint": item.fingerprint,
                    "api": route.target.api,
                    "account": route.target.account,
                }
                append(route.journal, journal_line(base, item.image_id, str(answer["upload_id"])))
        await upload.finish(answer, lambda _: None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _transport_refusal(exc, api) from None
    return True


#: What an API that does not offer presigned uploads answers (an older one: no such route).
_NOT_OFFERED = {"upload_mode_disabled", "method_not_allowed", "http_404", "http_405"}


async def _put(session: aiohttp.ClientSession, api: str, item: Item) -> None:
    headers = {"X-File-Name": item.path.name, "Content-Length": str(item.size)}
    try:
        async with session.put(
            f"{api}/images/{item.image_id}", data=_chunks(item.path), headers=headers
        ) as response:
            if response.status != 202:
                raise await refusal(response)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _transport_refusal(exc, api) from None


async def upload(
    api: str, key: str, paths: list[Path], state: Path, concurrency: int = 4, progress: bool = True
) -> Summary:
    """Upload what is not done yet at `api` as `key`'s user; failures are in the summary."""
    target = Target.of(api, key)
    items = collect(paths)
    summary = Summary()
    journaled = load_done(state, target)
    candidates = {i.image_id for i in items if (i.fingerprint, i.image_id) in journaled}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as session,
        aiohttp.ClientSession(timeout=timeout) as storage,
    ):
        route = _Route(storage, started=load_started(state, target.api, target.account), target=target)
        try:
            present = await _listed(session, target.api, candidates)
        except Refused as refused:
            summary.stopped, present = refused.reason, set()
        todo = [i for i in items if i.image_id not in present or (i.fingerprint, i.image_id) not in journaled]
        summary.skipped = len(items) - len(todo)
        if summary.stopped is None:
            todo = await _send(session, route, target, todo, state, summary, concurrency, progress)
    for item in todo:
        summary.not_tried += 1
        summary.fail(item, "not_tried", f"not tried: {summary.stopped}")
    return summary


async def _send(
    session: aiohttp.ClientSession,
    route: _Route,
    target: Target,
    todo: list[Item],
    state: Path,
    summary: Summary,
    concurrency: int,
    progress: bool,
) -> list[Item]:
    """Upload `todo` with `concurrency` workers, journaling each success; returns what was not
    tried because the run stopped early."""
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    # The bar counts uploaded bytes only: a run where files fail never shows 100%.
    bar = tqdm(total=sum(i.size for i in todo), unit="B", unit_scale=True, disable=not progress)
    with state.open("a") as journal:
        route.journal = journal

        async def worker() -> None:
            while summary.stopped is None and not queue.empty():
                item = queue.get_nowait()
                try:
                    await _send_one(session, route, target.api, item)
                except Refused as refused:
                    summary.fail(item, refused.code, refused.reason)
                    if refused.fatal:
                        summary.stopped = refused.reason
                    bar.set_postfix(failed=len(summary.failed))
                    continue
                summary.uploaded += 1
                summary.bytes += item.size
                bar.update(item.size)
                record = {
                    "fingerprint": item.fingerprint,
                    "image_id": item.image_id,
                    "api": target.api,
                    "account": target.account,
                    "path": str(item.path),
                }
                journal.write(json.dumps(record) + "\n")
                journal.flush()

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        finally:
            bar.close()
    return [queue.get_nowait() for _ in range(queue.qsize())]
