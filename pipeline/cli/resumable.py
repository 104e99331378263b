"""`python -m pipeline upload` for large files: resumable uploads (`POST /images/upload-url` with
`"multipart": true`), each part read from the file and sent on its own, again after a failure
with a growing wait, and the whole upload picked up where it stopped by the next run.

The journal (the upload's state file) gets a line when an upload is begun, naming its image and
upload ids; a run that finds such a line for the same file (path, size, modification time),
API and user asks which parts arrived (`GET /images/{id}/upload-parts`, with fresh URLs) and
sends the rest. A part refused for its URL's age (403) is sent again with a fresh URL; one lost
to the network, a timeout, a 5xx, 408 or 429 is sent again after 0.5 s, 1 s, 2 s... (at most 30 s,
`ATTEMPTS` tries); anything else fails the file with the API's reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp

from pipeline.cli.answers import Refused, refusal, short

#: This run, in the idempotency keys of the reservations it asks for.
RUN = uuid.uuid4().hex
#: Files at least this large go up in parts (smaller ones in one PUT).
MULTIPART_FROM = 16 * 1024 * 1024
ATTEMPTS = 8
FIRST_WAIT = 0.5
LONGEST_WAIT = 30.0
#: Answers worth the same request again: the server or the path to it was busy or broken.
TRANSIENT = {408, 429, 500, 502, 503, 504}


def journal_records(state: Path) -> Iterator[dict[str, Any]]:
    """The journal's records (JSON objects, a line each); a line cut short by an interruption,
    or not an object, is passed over."""
    if not state.exists():
        return
    for line in state.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def load_started(state: Path, api: str, account: str) -> dict[str, tuple[str, str]]:
    """fingerprint -> (image id, upload id) of the resumable uploads the journal says were begun
    at this API for this user (the last line of a file wins)."""
    started: dict[str, tuple[str, str]] = {}
    for record in journal_records(state):
        if (
            record.get("in_progress") is True
            and (record.get("api"), record.get("account")) == (api, account)
            and all(isinstance(record.get(k), str) for k in ("fingerprint", "image_id", "upload_id"))
        ):
            started[record["fingerprint"]] = (record["image_id"], record["upload_id"])
    return started


async def with_retries(attempt: Callable[[], Awaitable[Any]], what: str) -> Any:
    """`attempt()` until it succeeds, retrying transport failures and `TRANSIENT` answers
    (`Retry` raised by it) with a doubling wait; `Refused` ends it at once."""
    wait = FIRST_WAIT
    for tries in range(1, ATTEMPTS + 1):
        try:
            return await attempt()
        except (aiohttp.ClientError, TimeoutError, ConnectionError, Retry) as exc:
            if tries == ATTEMPTS:
                detail = short(exc, 160) or type(exc).__name__
                raise Refused("gave_up", f"{what}: gave up after {ATTEMPTS} tries ({detail})") from None
        await asyncio.sleep(wait)
        wait = min(wait * 2, LONGEST_WAIT)
    raise AssertionError("unreachable")


class Retry(Exception):
    """A transient answer: the same request, later."""


async def _json(response: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    """The answer's JSON object; `Retry` for a transient status, `Refused` for another error."""
    if response.status in TRANSIENT:
        raise Retry(f"{response.status}")
    if response.status >= 300:
        refused = await refusal(response)
        raise Refused(refused.code, f"{what}: {refused.reason}", fatal=refused.fatal)
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientPayloadError):
        body = None
    if not isinstance(body, dict):
        raise Refused("bad_answer", f"{what} did not answer a JSON object")
    return body


def _read(path: Path, start: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read(length)


class Upload:
    """One file's resumable upload, begun here or resumed from the journal."""

    def __init__(
        self, session: aiohttp.ClientSession, storage: aiohttp.ClientSession, api: str, path: Path
    ) -> None:
        self.session, self.storage, self.api, self.path = session, storage, api, path

    async def begin(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """A new reservation; None if the API has the id already (`image_exists`)."""

        # Asked again after a lost answer, the API answers the first reservation, not a 409 (in
        # this run: the next resumes from the journal, or begins anew).
        key = hashlib.sha256(f"{RUN}|{self.path.resolve()}|{sorted(body.items())}".encode()).hexdigest()[:40]

        async def ask() -> dict[str, Any]:
            async with self.session.post(
                f"{self.api}/images/upload-url",
                json={**body, "multipart": True},
                headers={"Idempotency-Key": f"resumable-{key}"},
            ) as r:
                return await _json(r, "upload-url")

        try:
            answer: dict[str, Any] = await with_retries(ask, "upload-url")
        except Refused as failure:
            if failure.code == "image_exists":
                return None
            raise
        return answer

    async def state(self, image_id: str) -> dict[str, Any] | None:
        """The upload's parts and fresh URLs; None if the API no longer holds it."""

        async def ask() -> dict[str, Any]:
            async with self.session.get(f"{self.api}/images/{image_id}/upload-parts") as r:
                return await _json(r, "upload-parts")

        try:
            answer: dict[str, Any] = await with_retries(ask, "upload-parts")
        except Refused as failure:
            if failure.code in (
                "upload_not_reserved",
                "image_not_found",
                "not_found",
                "http_404",
                "http_410",
            ):
                return None
            raise
        return answer

    async def finish(self, answer: dict[str, Any], sent: Callable[[int], None]) -> None:
        """Every part not received yet, then the join."""
        parts = {int(p["number"]): p for p in answer["parts"]}
        for number in sorted(parts):
            if parts[number].get("received"):
                sent(int(parts[number]["length"]))
                continue
            await self._part(answer, parts, number)
            sent(int(parts[number]["length"]))
        image_id = answer["image_id"]

        async def join() -> dict[str, Any]:
            async with self.session.post(f"{self.api}/images/{image_id}/upload-complete", json={}) as r:
                return await _json(r, "upload-complete")

        await with_retries(join, "upload-complete")

    async def _part(self, answer: dict[str, Any], parts: dict[int, dict[str, Any]], number: int) -> None:
        part_size = int(answer["part_size"])
        length = int(parts[number]["length"])
        data = await asyncio.to_thread(_read, self.path, (number - 1) * part_size, length)

        async def put() -> None:
            url = str(parts[number]["url"])
            async with self.storage.put(
                url, data=io.BytesIO(data), headers={"Content-Length": str(length)}
            ) as r:
                if r.status == 403:  # its URL aged out (or the upload is gone): ask afresh
                    fresh = await self.state(str(answer["image_id"]))
                    if fresh is None:
                        raise Refused("upload_not_reserved", "the upload is gone (released or deleted)")
                    parts.update({int(p["number"]): p for p in fresh["parts"]})
                    raise Retry("403: a fresh URL")
                if r.status in TRANSIENT:
                    raise Retry(str(r.status))
                if r.status >= 300:
                    detail = short(await r.text(), 160)
                    raise Refused(f"http_{r.status}", f"part {number}: {r.status} {detail}")

        await with_retries(put, f"part {number}")


def journal_line(base: dict[str, str], image_id: str, upload_id: str) -> str:
    return json.dumps({**base, "image_id": image_id, "upload_id": upload_id, "in_progress": True}) + "\n"


def append(journal: IO[str], line: str) -> None:
    journal.write(line)
    journal.flush()
    os.fsync(journal.fileno())
