"""A small soak run in CI: uploads during consumer kills and restarts, then reconciliation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, process_env


@pytest.mark.timeout(300)
def test_small_soak_loses_and_duplicates_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/soak.py", "--uploads", "60", "--restarts", "2", "--restart-every", "1.5"],
        cwd=ROOT,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["accepted"] == 60
    assert report["ready"] + report["failed_with_dlq_reason"] == 60
    assert report["missing"] == report["duplicate_renditions"] == report["failed_without_dlq_entry"] == 0
    assert report["consumer_restarts"] == {"SIGKILL": 1, "SIGTERM": 1}
