"""`python -m pipeline upload PATH...`: bulk upload of files and folders through the HTTP API.

Concurrent streamed `PUT /images/{id}` requests with a progress bar; every finished file is
appended to a state file (JSON lines), so an interrupted run started again skips what is done
(same path, size and modification time) and goes on with the rest. Image ids come from the
file's path relative to the folder given, made safe for the id pattern and suffixed with a short
hash of the path, so two files never share an id and a re-run maps each file to the same one.
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
from typing import Any

import aiohttp
from tqdm import tqdm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"}
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Item:
    path: Path
    image_id: str
    size: int
    mtime_ns: int

    @property
    def fingerprint(self) -> str:
        return f"{self.path.resolve()}|{self.size}|{self.mtime_ns}"


@dataclass
class Summary:
    uploaded: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "skipped_already_uploaded": self.skipped,
            "failed": len(self.failed),
            "bytes": self.bytes,
            "errors": dict(self.errors),
            "failures": self.failed,
        }


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


def load_done(state: Path) -> set[str]:
    if not state.exists():
        return set()
    done = set()
    for line in state.read_text().splitlines():
        try:
            done.add(json.loads(line)["fingerprint"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by an interruption
    return done


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


async def upload(
    api: str, key: str, paths: list[Path], state: Path, concurrency: int = 4, progress: bool = True
) -> Summary:
    items = collect(paths)
    done = load_done(state)
    summary = Summary()
    todo = [i for i in items if i.fingerprint not in done]
    summary.skipped = len(items) - len(todo)
    queue: asyncio.Queue[Item] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    bar = tqdm(total=sum(i.size for i in todo), unit="B", unit_scale=True, disable=not progress)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    with state.open("a") as journal:

        async def worker(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                item = queue.get_nowait()
                headers = {"X-File-Name": item.path.name, "Content-Length": str(item.size)}
                try:
                    async with session.put(
                        f"{api}/images/{item.image_id}", data=_chunks(item.path), headers=headers
                    ) as response:
                        body = await response.json(content_type=None)
                        status = response.status
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    status, body = 0, {"error": "connection", "message": repr(exc)}
                bar.update(item.size)
                if status == 202:
                    summary.uploaded += 1
                    summary.bytes += item.size
                    record = {
                        "fingerprint": item.fingerprint,
                        "image_id": item.image_id,
                        "path": str(item.path),
                    }
                    journal.write(json.dumps(record) + "\n")
                    journal.flush()
                else:
                    summary.failed[str(item.path)] = f"{status} {body.get('error')}: {body.get('message')}"
                    summary.errors[str(body.get("error"))] += 1

        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            await asyncio.gather(*(worker(session) for _ in range(max(1, concurrency))))
    bar.close()
    return summary
