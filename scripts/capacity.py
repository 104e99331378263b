"""Capacity model: turn measured per-image costs into fleet sizes, AWS request rates and prices.

Reads what `measure_costs.py` measured (`docs/capacity-costs.json` by default) and a workload
(uploads per second, a mix of formats and sizes, thumbnail views per image) and prints:

- CPU per image and the consumer fleet (vCPUs, machines) and API vCPUs it needs;
- S3 and SQS requests per image and per second, and the busiest one user can be before S3's
  per-prefix request limits (keys are `{user_id}/{image_id}`: one prefix per user) push back;
- SQS in-flight messages (Little's law on the measured hold time) against the queue's limit, and
  a visibility timeout;
- Lambda memory, duration, concurrency and timeout for the Lambda variant;
- what a million images cost in requests, compute, egress and storage.

Prices are AWS list prices for us-east-1 (standard tiers, free tiers ignored); pass your own.

    .venv/bin/python scripts/capacity.py --uploads-per-s 50 --mix jpeg-12mp=0.7,png-4mp=0.2,avif-12mp=0.1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COSTS = ROOT / "docs" / "capacity-costs.json"

#: S3 request classes: billed (tier 1 / tier 2 / free) and rate-limited (write / read) per prefix.
S3_TIER1 = {
    "PutObject",
    "CopyObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "ListObjects",
}
S3_FREE = {"DeleteObject", "DeleteObjects", "AbortMultipartUpload"}
S3_WRITES = S3_TIER1 - {"ListObjects"} | S3_FREE
#: DynamoDB reads (every item here is under 4 KB: one read request unit; writes under 1 KB: one).
DYNAMODB_READS = {"GetItem", "Query", "Scan", "BatchGetItem"}
#: Write request units per write request where not one: our transactions write two items, and
#: a transactional write costs two units per item.
DYNAMODB_WRITE_UNITS = {"TransactWriteItems": 4}
S3_PREFIX_WRITES_PER_S = 3500
S3_PREFIX_READS_PER_S = 5500
SQS_IN_FLIGHT_LIMIT = 120_000
LAMBDA_MB_PER_VCPU = 1769
LAMBDA_DEFAULT_CONCURRENCY = 1000


@dataclass(frozen=True)
class Prices:
    """USD, us-east-1 list prices (check the current ones for your region)."""

    s3_tier1_per_1000: float = 0.005  # PUT, COPY, POST, LIST
    s3_tier2_per_1000: float = 0.0004  # GET, HEAD and the rest
    s3_gb_month: float = 0.023
    sqs_per_million: float = 0.40
    dynamodb_read_per_million: float = 0.125  # on-demand read request units
    dynamodb_write_per_million: float = 0.625  # on-demand write request units
    lambda_gb_s: float = 0.0000166667
    lambda_per_million: float = 0.20
    vcpu_hour: float = 0.0446  # c7i.large on demand, per vCPU
    egress_gb: float = 0.09


@dataclass(frozen=True)
class Workload:
    uploads_per_s: float
    mix: dict[str, float]  # workload label -> share, summing to 1
    views_per_image: float = 10.0
    utilization: float = 0.7  # of each vCPU, leaving headroom for bursts
    cores_per_machine: int = 2
    s3_latency_ms: float = 20.0  # per sequential S3 call inside a job, in-region
    lambda_batch: int = 10
    lambda_memory_mb: int = 0  # 0: sized from the measured worker memory


def parse_mix(text: str) -> dict[str, float]:
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    shares = {label: float(share) for label, share in pairs}
    total = sum(shares.values())
    if total <= 0:
        raise ValueError("the mix needs a positive share")
    return {label: share / total for label, share in shares.items()}


def requests_per_image(cost: dict[str, Any], views: float) -> dict[str, float]:
    """Every request one image causes: upload, the S3 event, processing, `views` downloads."""
    total: dict[str, float] = {"sqs:SendMessage": 1.0}  # S3's event notification into the queue
    for phase, times in (("upload", 1.0), ("process", 1.0), ("thumbnail_download", views)):
        for operation, count in cost[phase]["requests"].items():
            total[operation] = total.get(operation, 0.0) + count * times
    return total


def weighted(costs: dict[str, Any], mix: dict[str, float], value: Any) -> float:
    return sum(share * value(costs[label]) for label, share in mix.items())


def plan(costs: dict[str, Any], work: Workload, prices: Prices) -> dict[str, Any]:
    measured = costs["workloads"]
    if missing := set(work.mix) - set(measured):
        raise ValueError(f"no measured costs for {sorted(missing)}; measured: {sorted(measured)}")
    rate, views, util = work.uploads_per_s, work.views_per_image, work.utilization

    def cpu(part: str) -> float:
        return weighted(measured, work.mix, lambda c: c["cpu_ms"][part])

    consumer_ms = cpu("worker") + cpu("consumer_loop")
    api_ms = cpu("api_upload") + views * cpu("api_thumbnail_download")
    operations: dict[str, float] = {}
    for label, share in work.mix.items():
        for operation, count in requests_per_image(measured[label], views).items():
            operations[operation] = operations.get(operation, 0.0) + share * count
    s3 = {op.removeprefix("s3:"): n for op, n in operations.items() if op.startswith("s3:")}
    dynamo = {op.removeprefix("dynamodb:"): n for op, n in operations.items() if op.startswith("dynamodb:")}
    dynamo_reads = sum(n for op, n in dynamo.items() if op in DYNAMODB_READS)
    dynamo_writes = sum(n for op, n in dynamo.items() if op not in DYNAMODB_READS)
    write_units = sum(
        n * DYNAMODB_WRITE_UNITS.get(op, 1) for op, n in dynamo.items() if op not in DYNAMODB_READS
    )
    sqs = sum(n for op, n in operations.items() if op.startswith("sqs:"))
    s3_writes = sum(n for op, n in s3.items() if op in S3_WRITES)
    s3_reads = sum(n for op, n in s3.items() if op not in S3_WRITES)
    tier1 = sum(n for op, n in s3.items() if op in S3_TIER1)
    tier2 = sum(n for op, n in s3.items() if op not in S3_TIER1 | S3_FREE)
    process_s3_calls = weighted(  # sequential calls inside a job: S3 and DynamoDB
        measured,
        work.mix,
        lambda c: sum(n for op, n in c["process"]["requests"].items() if not op.startswith("sqs:")),
    )
    hold_p95_s = max(measured[label]["hold_ms"]["p95"] for label in work.mix) / 1000
    peak_rss = max(measured[label]["worker_peak_rss_mb"] for label in work.mix)
    upload_bytes = weighted(measured, work.mix, lambda c: c["upload"]["bytes_to_aws"])
    stored_bytes = upload_bytes + weighted(measured, work.mix, lambda c: c["process"]["bytes_to_aws"])
    egress_bytes = views * weighted(measured, work.mix, lambda c: c["thumbnail_download"]["bytes_from_aws"])

    memory = work.lambda_memory_mb or max(512, 64 * math.ceil((peak_rss * 1.5 + 128) / 64))
    lambda_ms = consumer_ms / min(1.0, memory / LAMBDA_MB_PER_VCPU) + work.s3_latency_ms * process_s3_calls
    lambda_timeout = max(30, math.ceil(10 * lambda_ms * work.lambda_batch / 1000))
    gb_s = memory / 1024 * lambda_ms / 1000
    consumer_vcpus = rate * consumer_ms / 1000 / util
    api_vcpus = rate * api_ms / 1000 / util
    million = 1_000_000
    s3_usd = million * (tier1 * prices.s3_tier1_per_1000 + tier2 * prices.s3_tier2_per_1000) / 1000
    sqs_usd = million * sqs * prices.sqs_per_million / million
    dynamo_usd = (
        dynamo_reads * prices.dynamodb_read_per_million + write_units * prices.dynamodb_write_per_million
    )
    fleet_usd = million * consumer_ms / 1000 / 3600 / util * prices.vcpu_hour
    api_usd = million * api_ms / 1000 / 3600 / util * prices.vcpu_hour
    lambda_usd = million * (
        gb_s * prices.lambda_gb_s + prices.lambda_per_million / million / work.lambda_batch
    )
    egress_usd = million * egress_bytes / 1e9 * prices.egress_gb
    return {
        "workload": {
            "uploads_per_s": rate,
            "mix": {label: round(share, 4) for label, share in work.mix.items()},
            "views_per_image": views,
            "utilization": util,
        },
        "per_image": {
            "cpu_ms": {"consumer": round(consumer_ms, 1), "api": round(api_ms, 1)},
            "s3_requests": {op: round(n, 3) for op, n in sorted(s3.items())},
            "sqs_requests": round(sqs, 3),
            "dynamodb_requests": {op: round(n, 3) for op, n in sorted(dynamo.items())},
            "bytes": {
                "upload": round(upload_bytes),
                "stored": round(stored_bytes),
                "egress": round(egress_bytes),
            },
        },
        "fleet": {
            "consumer_vcpus": round(consumer_vcpus, 2),
            "consumer_machines": math.ceil(consumer_vcpus / work.cores_per_machine),
            "api_vcpus": round(api_vcpus, 2),
        },
        "s3": {
            "writes_per_s": round(rate * s3_writes, 1),
            "reads_per_s": round(rate * s3_reads, 1),
            # Conservative: as if all of one image's requests hit one prefix of one bucket.
            "max_uploads_per_s_one_user": round(
                min(S3_PREFIX_WRITES_PER_S / s3_writes, S3_PREFIX_READS_PER_S / s3_reads), 1
            ),
        },
        "dynamodb": {
            "reads_per_s": round(rate * dynamo_reads, 1),
            "writes_per_s": round(rate * dynamo_writes, 1),
        },
        "sqs": {
            "requests_per_s": round(rate * sqs, 1),
            "in_flight": math.ceil(rate * hold_p95_s),
            "in_flight_limit": SQS_IN_FLIGHT_LIMIT,
            "visibility_timeout_s": max(30, math.ceil(3 * hold_p95_s)),
        },
        "lambda": {
            "memory_mb": memory,
            "duration_ms_per_image": round(lambda_ms, 1),
            "concurrency": math.ceil(rate * lambda_ms / 1000),
            "default_concurrency_limit": LAMBDA_DEFAULT_CONCURRENCY,
            "timeout_s": lambda_timeout,
            "queue_visibility_timeout_s": 6 * lambda_timeout,  # AWS's advice for SQS event sources
        },
        "usd_per_million_images": {
            "s3_requests": round(s3_usd, 2),
            "sqs_requests": round(sqs_usd, 2),
            "dynamodb_requests": round(dynamo_usd, 2),
            "consumer_fleet": round(fleet_usd, 2),
            "consumer_lambda": round(lambda_usd, 2),
            "api_fleet": round(api_usd, 2),
            "egress": round(egress_usd, 2),
            "storage_per_month": round(million * stored_bytes / 1e9 * prices.s3_gb_month, 2),
            "total_with_fleet": round(s3_usd + sqs_usd + dynamo_usd + fleet_usd + api_usd + egress_usd, 2),
            "total_with_lambda": round(s3_usd + sqs_usd + dynamo_usd + lambda_usd + api_usd + egress_usd, 2),
        },
    }


def render(result: dict[str, Any]) -> str:
    lines = []
    for section, values in result.items():
        lines.append(section)
        for key, value in values.items():
            lines.append(f"  {key:<34} {json.dumps(value)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--costs", type=Path, default=COSTS, help="what measure_costs.py wrote")
    parser.add_argument("--uploads-per-s", type=float, required=True)
    parser.add_argument("--mix", type=parse_mix, required=True, help="label=share,... (labels in the costs)")
    parser.add_argument("--views-per-image", type=float, default=Workload.views_per_image)
    parser.add_argument("--utilization", type=float, default=Workload.utilization)
    parser.add_argument("--cores-per-machine", type=int, default=Workload.cores_per_machine)
    parser.add_argument("--s3-latency-ms", type=float, default=Workload.s3_latency_ms)
    parser.add_argument("--lambda-batch", type=int, default=Workload.lambda_batch)
    parser.add_argument("--lambda-memory-mb", type=int, default=0)
    parser.add_argument("--vcpu-hour", type=float, default=Prices.vcpu_hour, help="USD per vCPU-hour")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = Workload(
        args.uploads_per_s,
        args.mix,
        args.views_per_image,
        args.utilization,
        args.cores_per_machine,
        args.s3_latency_ms,
        args.lambda_batch,
        args.lambda_memory_mb,
    )
    try:
        result = plan(json.loads(args.costs.read_text()), work, Prices(vcpu_hour=args.vcpu_hour))
    except (OSError, ValueError) as exc:
        print(f"capacity: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
