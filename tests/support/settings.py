"""Settings and environments for the tests' stacks: unique resource names on moto, a data
directory of their own on the local backend, and a consumer fast enough for tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from config.settings import SEED_USER_IDS, Settings

ROOT = Path(__file__).resolve().parent.parent.parent
USER = SEED_USER_IDS[2]
OTHER_USER = SEED_USER_IDS[0]
#: Fast consumer settings for tests; every test can override any of them.
FAST = {
    "IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "1",
    "IMGSVC_CONSUMER_VISIBILITY_TIMEOUT": "20",
    "IMGSVC_CONSUMER_MAX_ATTEMPTS": "3",
    "IMGSVC_CONSUMER_BACKOFF_BASE": "1",
    "IMGSVC_CONSUMER_BACKOFF_MAX": "2",
    "IMGSVC_CONSUMER_WORKERS": "1",
    "IMGSVC_CONSUMER_DRAIN_TIMEOUT": "5",
    "IMGSVC_RUN_CONSUMER": "false",
    # One user's messages are never deferred for its share, unless a test asks: most tests upload
    # as one user and count what the consumer received (`tests/test_consumer_shares.py`).
    "IMGSVC_CONSUMER_USER_MAX_IN_FLIGHT": "1000",
}


def env_for(endpoint: str, **overrides: str) -> dict[str, str]:
    """An environment with unique bucket and queue names, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:10]
    env = {
        "IMGSVC_MODE": "embedded",
        "AWS_ENDPOINT_URL": endpoint,
        "IMGSVC_SOURCE_BUCKET": f"src-{tag}",
        "IMGSVC_DEST_BUCKET": f"dst-{tag}",
        "IMGSVC_QUEUE_NAME": f"events-{tag}",
        "IMGSVC_DLQ_NAME": f"dlq-{tag}",
        "IMGSVC_OUTBOX_NAME": f"hooks-{tag}",
        "IMGSVC_OUTBOX_DLQ_NAME": f"hooks-dlq-{tag}",
        "IMGSVC_TABLE_PREFIX": f"t-{tag}",
        "IMGSVC_INPUT_DIR": str(ROOT / "input"),
        # The session's moto is reached by the tests alone: it may take presigned uploads.
        "IMGSVC_EMBEDDED_TRUSTED": "true",
        **FAST,
    }
    env.update(overrides)
    return env


def local_settings(data_dir: Path, **overrides: str) -> Settings:
    """Settings for the local backend on `data_dir` (no moto), with the tests' fast consumer."""
    return Settings.from_env(
        {"IMGSVC_DATA_DIR": str(data_dir), "IMGSVC_INPUT_DIR": str(ROOT / "input"), **FAST, **overrides}
    )


def on_local(node: pytest.Item | pytest.Collector) -> bool:
    """Whether a test runs on the local backend: `@pytest.mark.backend("local")` on it, its class
    or its module (what needs AWS's own behaviour is marked `backend("aws")` inside such a module)."""
    marker = node.get_closest_marker("backend")
    return marker is not None and marker.args == ("local",)
