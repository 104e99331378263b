"""S3 event notifications as SQS delivers them."""

from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.errors import PoisonMessage
from pipeline.core.events import parse_message


def s3_event(key: str, name: str = "ObjectCreated:Put", bucket: str = "src") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": name,
                    "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 12, "eTag": "abc"}},
                }
            ]
        }
    )


@given(st.text(min_size=1, max_size=200))
def test_url_encoded_keys_are_decoded(key: str) -> None:
    parsed = parse_message(s3_event(quote_plus(key)))
    assert [r.key for r in parsed.created] == [key]


def test_spaces_plus_and_unicode() -> None:
    # S3 encodes a space as '+' and a literal '+' as %2B.
    parsed = parse_message(s3_event("user/my+cat%2B1%C3%A9.jpg"))
    assert parsed.created[0].key == "user/my cat+1é.jpg"
    assert parsed.created[0].size == 12


def test_test_event_is_recognised() -> None:
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "src"})
    assert parse_message(body).test_event


def test_other_events_are_ignored_not_poison() -> None:
    parsed = parse_message(s3_event("a/b", name="ObjectRemoved:Delete"))
    assert parsed.created == ()
    assert parsed.ignored == ("ObjectRemoved:Delete",)


def test_sns_wrapped_notification() -> None:
    body = json.dumps({"Type": "Notification", "Message": s3_event("a/cat")})
    assert parse_message(body).created[0].key == "a/cat"


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        "{}",
        '{"Records": []}',
        '{"Records": "x"}',
        '{"Records": [1]}',
        '{"Records": [{"eventSource": "aws:sqs", "eventName": "x"}]}',
        '{"Records": [{"eventSource": "aws:s3"}]}',
        '{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}',
        json.dumps(
            {
                "Records": [
                    {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": ""}}}
                ]
            }
        ),
        *(
            json.dumps(
                {
                    "Records": [
                        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": obj}}
                    ]
                }
            )
            for obj in ({"key": ["k"]}, {"key": 5}, {"key": {"a": 1}}, ["key"], "key", {"key": "%"[:0]})
        ),
        "[" * 100_000 + "]" * 100_000,
        '{"Records": [' + '{"a":' * 40 + "1" + "}" * 40 + "]}",
        json.dumps({"Records": ["x" * 1024] * 1100}),  # over the 1 MiB an SQS body can be
    ],
)
def test_poison(body: str) -> None:
    """Also keys that are not text (unquote_plus of a list raised AttributeError: retried as a bug)."""
    with pytest.raises(PoisonMessage):
        parse_message(body)
