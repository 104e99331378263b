"""Unit tests of the pure parts: backoff, byte ranges, record states, list cursors, verdicts."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.aws.queue import Message
from pipeline.consumer.jobs import JobResult
from pipeline.consumer.loop import backoff_seconds
from pipeline.consumer.verdicts import judge
from pipeline.core.changes import Changes
from pipeline.core.cursors import decode_cursor, encode_cursor
from pipeline.core.errors import CorruptImage, InvalidField, RangeNotSatisfiable, StorageUnavailable
from pipeline.core.events import ObjectCreated, object_created
from pipeline.core.image_record import ImageRecord
from pipeline.core.timing import exponential
from pipeline.local.storage import SmallBlobs
from web.ranges import parse_range

OWNER = "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e"


@given(attempt=st.integers(1, 60), base=st.floats(0, 100), cap=st.floats(0, 50_000), seed=st.integers())
def test_backoff_is_exponential_capped_and_half_jittered(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = exponential(attempt, base, cap)
    assert delay == min(cap, base * 2 ** (attempt - 1))
    seconds = backoff_seconds(attempt, base, cap, random.Random(seed))
    assert seconds <= 43_200  # SQS's longest visibility timeout
    assert delay / 2 - 1 <= seconds <= min(43_200, delay + 1)


def _range(header: str, size: int, etag: str = '"e"', if_range: str | None = None) -> tuple[int, int] | None:
    headers = {"Range": header} | ({"If-Range": if_range} if if_range is not None else {})
    return parse_range(headers, size, etag)


@given(size=st.integers(1, 10_000), first=st.integers(0, 20_000), length=st.integers(0, 20_000))
def test_a_range_selects_what_rfc_9110_says(size: int, first: int, length: int) -> None:
    last = first + length
    if first >= size:
        with pytest.raises(RangeNotSatisfiable):
            _range(f"bytes={first}-{last}", size)
    else:
        assert _range(f"bytes={first}-{last}", size) == (first, min(last, size - 1))
        assert _range(f"bytes={first}-", size) == (first, size - 1)
    if length:
        assert _range(f"bytes=-{length}", size) == (max(0, size - length), size - 1)


@pytest.mark.parametrize(
    "header", ["bytes=5-1", "bytes=a-b", "items=0-1", "bytes=0-1,4-5", "bytes=" + "1" * 300, "bytes=٣-٤"]
)
def test_malformed_or_multiple_ranges_mean_the_whole_object(header: str) -> None:
    assert _range(header, 100) is None


def test_suffix_of_nothing_is_416_and_a_stale_if_range_gets_everything() -> None:
    with pytest.raises(RangeNotSatisfiable):
        _range("bytes=-0", 100)
    assert _range("bytes=0-9", 100, etag='"new"', if_range='"old"') is None
    assert _range("bytes=0-9", 100, etag='"new"', if_range='"new"') == (0, 9)


@pytest.mark.parametrize(
    ("item", "state"),
    [
        ({}, "pending"),
        ({"source_etag": "a"}, "pending"),
        ({"source_etag": "b", "result_etag": "a", "result_state": "ready"}, "pending"),  # replaced
        ({"source_etag": "a", "result_etag": "a", "result_state": "ready"}, "ready"),
        ({"source_etag": "a", "result_etag": "a", "result_state": "failed"}, "failed"),
    ],
)
def test_a_record_is_ready_or_failed_only_for_its_current_original(item: dict[str, Any], state: str) -> None:
    record = ImageRecord(OWNER, "img", item | {"renditions": {"256": {}}, "error": {"code": "x"}})
    assert record.state == state
    assert bool(record.renditions) == (state == "ready") and bool(record.error) == (state == "failed")


@given(image_id=st.text(min_size=1, max_size=64), created=st.text(max_size=40))
def test_cursors_round_trip_and_belong_to_their_owner(image_id: str, created: str) -> None:
    last = {"user_id": OWNER, "image_id": image_id, "created_key": created}
    cursor = encode_cursor(last)
    assert decode_cursor(cursor, OWNER) == last
    with pytest.raises(InvalidField):
        decode_cursor(cursor, "0" * 8 + OWNER[8:])  # another user's cursor


@pytest.mark.parametrize("cursor", ["", "!!!", "e30", "W10", "WzEsMiwzXQ", "x" * 5000])
def test_foreign_cursors_are_refused_as_invalid_fields(cursor: str) -> None:
    with pytest.raises(InvalidField):
        decode_cursor(cursor, OWNER)


class _Jobs:
    """Stands in for the job runner: what a job returns or raises is the input of `judge`."""

    def __init__(self, answer: JobResult | Exception) -> None:
        self.answer = answer

    async def process(self, record: ObjectCreated) -> JobResult:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _message(body: str, receive_count: int = 1) -> Message:
    return Message("m1", "r1", body, receive_count)


EVENT = object_created("src", f"{OWNER}/img", 10, '"e"')


@pytest.mark.parametrize(
    ("body", "answer", "count", "expected"),
    [
        (EVENT, JobResult("ready", "k"), 1, ("ack", ("ready",), None)),
        (EVENT, JobResult("source_missing", "k"), 1, ("ack", ("source_missing",), None)),
        (
            EVENT,
            JobResult("failed", "k", error=CorruptImage()),
            1,
            ("dead_letter", ("failed",), "corrupt_image"),
        ),
        (EVENT, StorageUnavailable(), 1, ("retry", ("retry",), "storage_unavailable")),
        (EVENT, StorageUnavailable(), 3, ("dead_letter", ("failed",), "storage_unavailable")),
        (EVENT, KeyError("bug"), 1, ("retry", ("retry",), "unexpected_error")),
        ("not json", JobResult("ready", "k"), 1, ("dead_letter", ("failed",), "poison_message")),
        (json.dumps({"Event": "s3:TestEvent"}), JobResult("ready", "k"), 1, ("ack", ("test_event",), None)),
        (
            json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete"}]}),
            JobResult("ready", "k"),
            1,
            ("ack", ("ignored",), None),
        ),
    ],
)
async def test_verdicts(
    body: str, answer: JobResult | Exception, count: int, expected: tuple[Any, ...]
) -> None:
    verdict = await judge(_message(body, count), _Jobs(answer), 3, [], [])  # type: ignore[arg-type]
    assert (verdict.action, verdict.outcomes, verdict.error and verdict.error.code) == expected


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcdefgh"), st.integers(0, 40))))
def test_the_memory_of_small_blobs_stays_within_its_budget(steps: list[tuple[bool, str, int]]) -> None:
    """Blobs are kept least recently used first out, never beyond the budget, one copy a name
    (a name's bytes never change), and a blob just put or read is kept."""
    blobs = SmallBlobs(64)
    for read, name, size in steps:
        if read:
            found = blobs.get(name)
            assert found is None or blobs._blobs[name] is found
        else:
            kept = blobs.get(name)
            blobs.put(name, bytes(size))
            assert blobs.get(name) == (kept if kept is not None else bytes(size))
        assert blobs._held == sum(len(data) for data in blobs._blobs.values()) <= 64


async def test_a_change_anywhere_wakes_a_wait_even_between_its_read_and_its_wait() -> None:
    """With a probe (the local backend's `data_version`), a write by another process wakes a wait:
    one made after the waiter's read and before its wait too; a failing probe only falls back to
    the wait's own timeout."""
    value = [0]
    changes = Changes(probe=lambda: value[0])
    since = changes.version()
    value[0] = 1  # written elsewhere after the read
    assert await asyncio.wait_for(changes.wait("k", 5, since), 1) is True
    since = changes.version()
    waiting = asyncio.ensure_future(changes.wait("k", 5, since))
    await asyncio.sleep(0.15)
    value[0] = 2  # written elsewhere during the wait
    assert await asyncio.wait_for(waiting, 1) is True
    assert len(changes) == 0
    broken = Changes(probe=lambda: 1 // 0)
    started = time.monotonic()
    assert await broken.wait("k", 0.3, broken.version()) is False
    assert 0.25 < time.monotonic() - started < 1
