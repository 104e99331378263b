"""The capacity model: measured costs match what the code does, and the arithmetic on them holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import process_env
from tests.support.settings import ROOT

pytestmark = pytest.mark.e2e


def script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def plan(costs: Path, *args: str) -> dict[str, Any]:
    result = script("scripts/capacity.py", "--costs", str(costs), "--json", *args)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


@pytest.mark.timeout(240)
def test_measured_costs_are_the_requests_the_code_makes(tmp_path: Path) -> None:
    """A small real workload through the API and a consumer process, counted by proxies."""
    out = tmp_path / "costs.json"
    result = script(
        "scripts/measure_costs.py", "--images", "6", "--workloads", "jpeg-2mp", "--out", str(out), timeout=200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cost = json.loads(out.read_text())["workloads"]["jpeg-2mp"]
    # The job: GET the original, PUT the rendition, then the record: read, HEAD (still the current
    # original?), conditional put, once more when the API's own record write got in between.
    # Every API call reads the key (measured without the key cache; the failed-attempts counter
    # only when it fails); an upload also reads the previous record (quota; reused as the base of
    # the record write) and the user (quotas, webhook), then writes the record and the usage in
    # one transaction (no HEAD: the record was read before the PUT, which orders the write).
    assert cost["upload"]["requests"] == {
        "s3:PutObject": 1.0,
        "dynamodb:GetItem": 3.0,
        "dynamodb:TransactWriteItems": 1.0,
    }
    assert 0 <= cost["upload"]["bytes_to_aws"] - cost["source_bytes"] < 4000  # + the DynamoDB requests
    process = cost["process"]["requests"]
    assert process["s3:GetObject"] == process["s3:PutObject"] == 1.0
    # The job reads the record, and when it names the original with the SHA-256 the API computed
    # (the upload's record write came first), the owner's note of those bytes (a duplicate?).
    # Then it writes the record's result and the note: a transaction with the usage counters
    # instead when the job creates the record (its upload's write came later), confirmed with a
    # HEAD after it; a second round of the record's read and write when the upload's write got
    # in between.
    # A second round needs no HEAD when the record the job re-reads already names its original
    # (the upload's write came between): each extra write then comes with its extra read.
    heads = process.get("s3:HeadObject", 0.0)
    writes = process["dynamodb:PutItem"] + process.get("dynamodb:TransactWriteItems", 0)
    reads = process["dynamodb:GetItem"]
    assert 0.0 <= heads <= 0.5 and 2.0 <= writes <= 2.5
    assert 2.0 - heads - 0.01 <= reads <= 2.5 + heads
    # Except a transaction tried again after a `TransactionConflict` (the owner's counters, which
    # the API's uploads write at the same time; pipeline/aws/tables.py): a write alone.
    transactions = process.get("dynamodb:TransactWriteItems", 0.0)
    assert writes - 2.0 <= (reads - 2.0) + heads + transactions + 0.01
    assert "dynamodb:BatchGetItem" not in process
    assert 0 < process["sqs:ReceiveMessage"] <= 1.5 and 0 < process["sqs:DeleteMessageBatch"] <= 1.0
    assert cost["process"]["bytes_from_aws"] >= cost["source_bytes"]
    assert cost["thumbnail_download"]["requests"] == {"s3:GetObject": 1.0, "dynamodb:GetItem": 2.0}
    assert cost["cpu_ms"]["worker"] > 0 and cost["cpu_ms"]["consumer_loop"] > 0
    assert 0 < cost["hold_ms"]["p50"] <= cost["hold_ms"]["p95"]
    assert cost["worker_peak_rss_mb"] > 20

    answer = plan(out, "--uploads-per-s", "10", "--mix", "jpeg-2mp=1", "--views-per-image", "4")
    assert answer["s3"]["writes_per_s"] == 10 * 2  # the upload, the rendition
    # the job's GET (and HEADs, if any), then 4 views of one GET each (the upload reads nothing)
    assert answer["s3"]["reads_per_s"] == pytest.approx(10 * (1 + heads + 4 * 1), abs=0.1)
    # the upload's 3 reads, the job's reads, then 4 views of 2 reads each
    reads = process["dynamodb:GetItem"]
    assert answer["dynamodb"]["reads_per_s"] == pytest.approx(10 * (3 + reads + 4 * 2), abs=0.1)
    assert answer["dynamodb"]["writes_per_s"] == pytest.approx(10 * (1 + writes), abs=0.1)
    assert answer["sqs"]["requests_per_s"] == pytest.approx(
        10 * (1 + sum(v for k, v in process.items() if k.startswith("sqs:"))), abs=0.1
    )


def simulated_costs() -> dict[str, Any]:
    """Two workloads with round numbers, shaped like measure_costs.py's output."""

    def workload(worker: float, hold_p95: float, rss: float) -> dict[str, Any]:
        return {
            "cpu_ms": {"worker": worker, "consumer_loop": 10, "api_upload": 5, "api_thumbnail_download": 1},
            "hold_ms": {"p50": hold_p95 / 2, "p95": hold_p95},
            "worker_peak_rss_mb": rss,
            "upload": {"requests": {"s3:PutObject": 1}, "bytes_to_aws": 1_000_000, "bytes_from_aws": 0},
            "process": {
                "requests": {
                    "s3:GetObject": 1,
                    "s3:PutObject": 2,
                    "s3:HeadObject": 1,
                    "sqs:ReceiveMessage": 0.5,
                    "sqs:DeleteMessageBatch": 0.5,
                },
                "bytes_to_aws": 20_000,
                "bytes_from_aws": 1_000_000,
            },
            "thumbnail_download": {
                "requests": {"s3:GetObject": 2, "s3:HeadObject": 1},
                "bytes_to_aws": 0,
                "bytes_from_aws": 20_000,
            },
        }

    return {"workloads": {"small": workload(90, 1000, 100), "large": workload(190, 2000, 400)}}


def test_plan_for_a_simulated_workload(tmp_path: Path) -> None:
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(simulated_costs()))
    answer = plan(costs, "--uploads-per-s", "14", "--mix", "small=1,large=1", "--views-per-image", "10")
    # CPU: (100 + 200) / 2 = 150 ms an image; 14/s at 70% → 3 vCPUs → 2 two-core machines.
    assert answer["per_image"]["cpu_ms"] == {"consumer": 150.0, "api": 15.0}
    assert answer["fleet"] == {"consumer_vcpus": 3.0, "consumer_machines": 2, "api_vcpus": 0.3}
    # Requests: upload 1 PUT; job GET + 2 PUT + HEAD; 10 downloads of 2 GET + HEAD.
    assert answer["per_image"]["s3_requests"] == {"GetObject": 21, "HeadObject": 11, "PutObject": 3}
    assert answer["per_image"]["sqs_requests"] == 2.0  # S3's event + receive + delete shares
    assert answer["s3"] == {"writes_per_s": 42.0, "reads_per_s": 448.0, "max_uploads_per_s_one_user": 171.9}
    # In flight: 14/s held up to 2 s (the slower workload's p95).
    assert answer["sqs"]["in_flight"] == 28 and answer["sqs"]["visibility_timeout_s"] == 30
    # Lambda memory from the larger worker peak: 1.5 x 400 + 128 = 728 → 768 MB (64 MB steps).
    assert answer["lambda"]["memory_mb"] == 768
    vcpu = 768 / 1769
    duration = 150 / vcpu + 20 * 4
    assert answer["lambda"]["duration_ms_per_image"] == pytest.approx(duration, abs=0.1)
    assert answer["lambda"]["concurrency"] == -(-14 * duration // 1000)
    usd = answer["usd_per_million_images"]
    assert usd["s3_requests"] == pytest.approx(3 * 5 + 32 * 0.4)  # tier 1 at $5, tier 2 at $0.40 a million
    assert usd["sqs_requests"] == pytest.approx(0.8)
    assert usd["egress"] == pytest.approx(10 * 20_000 / 1e9 * 0.09 * 1e6)
    assert usd["storage_per_month"] == pytest.approx(1_020_000 / 1e9 * 0.023 * 1e6)


def test_plan_refuses_a_mix_it_has_no_costs_for(tmp_path: Path) -> None:
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(simulated_costs()))
    result = script("scripts/capacity.py", "--costs", str(costs), "--uploads-per-s", "1", "--mix", "gif=1")
    assert result.returncode == 2
    assert "no measured costs for ['gif']" in result.stderr


def test_the_recorded_costs_cover_every_workload() -> None:
    """docs/capacity-costs.json is what the README's capacity section quotes; keep it whole."""
    recorded = json.loads((ROOT / "docs" / "capacity-costs.json").read_text())["workloads"]
    answer = plan(
        ROOT / "docs" / "capacity-costs.json",
        "--uploads-per-s",
        "1",
        "--mix",
        ",".join(f"{w}=1" for w in recorded),
    )
    assert len(recorded) >= 6 and answer["fleet"]["consumer_vcpus"] > 0
