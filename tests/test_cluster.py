"""Many processes, one system: a small `scripts/cluster.py` run in CI (2 web, 3 consumers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.processes import process_env
from tests.support.settings import ROOT

pytestmark = pytest.mark.cluster


@pytest.mark.timeout(300)
def test_small_cluster_loses_duplicates_and_disagrees_on_nothing() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "scripts/cluster.py",
            "--uploads",
            "60",
            "--restarts",
            "2",
            "--restart-every",
            "1.5",
        ],
        cwd=ROOT,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["web_processes"], report["consumer_processes"]) == (2, 3)
    refused = report["refused_by_status"]  # what the uploads that were not accepted were answered
    assert report["accepted"] == 60 + report["replaced"] and report["replaced"] == 6, refused
    assert all(report["accepted_by_web"][web] >= 25 for web in ("0", "1")), report["accepted_by_web"]
    assert report["ready"] + report["failed_with_dlq_reason"] == report["images"] == 60
    assert report["missing"] == report["duplicate_renditions"] == report["failed_without_dlq_entry"] == 0
    assert report["renditions_disagreeing_with_original"] == report["outcome_differs_from_expected"] == 0
    assert report["consumer_restarts"] == {"SIGKILL": 1, "SIGTERM": 1}
