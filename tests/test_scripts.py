"""Every script under `scripts/` runs, so a change to the code they drive (a module moved, a name
renamed, a port's behaviour changed) breaks a test, not a user's benchmark.

Every script still imports and answers `--help` (one interpreter for all). Each benchmark with a
command line then runs as a user would start it, in a process of its own, at the tiniest size
its options allow, and its report is checked for what its docstring promises. Runs elsewhere:
`capacity.py` and `measure_costs.py` (tests/test_capacity.py), `cluster.py` (tests/test_cluster.py),
`durability.py`'s `run` (tests/test_durable.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import process_env
from tests.support.settings import ROOT

SCRIPTS = sorted(path.name for path in (ROOT / "scripts").glob("*.py"))
#: Modules the scripts share, with no command line of their own.
LIBRARIES = {"awsproxy.py", "proccpu.py", "stack.py"}
#: SSIM needs the bench extra (`make bench-install`), which `make test` does not install.
HAVE_SSIM = importlib.util.find_spec("skimage") is not None

#: One interpreter runs every script's `--help` as `__main__` (seconds, not a process each) and
#: says how each ended: 0 is argparse's exit after printing the usage.
PROBE = """
import contextlib, io, json, runpy, sys
sys.path[:0] = ["scripts", "."]
ended = {}
for name in NAMES:
    sys.argv = [f"scripts/{name}", "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(f"scripts/{name}", run_name="__main__")
        ended[name] = "returned without printing a usage"
    except SystemExit as exc:
        ended[name] = "ok" if exc.code in (0, None) and "usage:" in out.getvalue() else f"exit {exc.code}"
    except Exception as exc:
        ended[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(ended))
"""


def test_every_script_imports_and_answers_help() -> None:
    names = [name for name in SCRIPTS if name not in LIBRARIES]
    probe = f"NAMES = {names!r}\n{PROBE}"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    ended = json.loads(out.stdout.strip().splitlines()[-1])
    assert ended == dict.fromkeys(names, "ok")
    # The shared modules import too.
    libraries = "import sys; sys.path[:0] = ['scripts', '.']; import awsproxy, proccpu, stack"
    subprocess.run([sys.executable, "-c", libraries], cwd=ROOT, capture_output=True, timeout=120, check=True)


# Tiny runs ---------------------------------------------------------------------------------------


def run_script(name: str, *args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    """`python scripts/NAME ARGS` from the repository's root, in a clean environment; it must
    exit 0 within `timeout` (else it is killed with every process it started)."""
    command = [sys.executable, f"scripts/{name}", *args]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its group: the services it started go with it
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except BaseException:  # the timeout, or the test's own (pytest-timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    shown = " ".join([name, *args])
    assert process.returncode == 0, f"{shown} exited {process.returncode}:\n{err[-4000:]}"
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def report_of(name: str, *args: str, timeout: float = 100) -> dict[str, Any]:
    """The JSON document a script prints on its standard output."""
    answer: dict[str, Any] = json.loads(run_script(name, *args, timeout=timeout).stdout)
    return answer


def numbers(tree: Any) -> Iterator[tuple[str, float]]:
    """Every number in a report (booleans aside), with where it is."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from ((f"{key}.{where}" if where else str(key), n) for where, n in numbers(value))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from ((f"{index}.{where}" if where else str(index), n) for where, n in numbers(value))
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield "", float(tree)


def positive(tree: Any) -> None:
    """Every number in `tree` is above zero: the rates, latencies and CPU it reports."""
    assert list(numbers(tree)), tree
    assert not [f"{where}={n}" for where, n in numbers(tree) if not n > 0], tree


@pytest.mark.e2e
def test_bench_backends_at_two_images() -> None:
    run = run_script("bench_backends.py", "--images", "2", "--concurrency", "2", "--rounds", "1")
    metrics = ["upload_ms", "job_loop_ms", "job_workers_ms", "job_backend_ms", "job_total_ms"]
    rounds = dict(line.split(" ", 1) for line in run.stdout.splitlines()[:2])
    assert set(rounds) == {"embedded", "local"}, run.stdout
    for kind, line in rounds.items():
        cpu = json.loads(line)
        assert list(cpu) == metrics
        assert all(value >= 0 for value in cpu.values()), (kind, cpu)
        # The consumer started, made the renditions in its workers, and the sum is the parts'.
        positive({k: cpu[k] for k in ("job_loop_ms", "job_workers_ms")})
        assert cpu["job_total_ms"] >= cpu["job_loop_ms"] + cpu["job_workers_ms"] - 0.02  # rounding
    # moto's own process tree stored the uploads and served the consumer's calls.
    positive({k: json.loads(rounds["embedded"])[k] for k in ("upload_ms", "job_backend_ms")})
    assert "CPU ms per image, median of 1 rounds of 2 images" in run.stdout
    rows = [line.split() for line in run.stdout.splitlines()]
    table = {row[0]: row[1:] for row in rows if row and row[0] in metrics}
    assert list(table) == metrics
    for metric, (embedded, local, _ratio) in table.items():  # the median of one round is that round
        assert float(embedded) == pytest.approx(json.loads(rounds["embedded"])[metric], abs=0.01)
        assert float(local) == pytest.approx(json.loads(rounds["local"])[metric], abs=0.01)


@pytest.mark.e2e
def test_bench_calls_at_a_tenth_of_a_megapixel() -> None:
    report = report_of("bench_calls.py", "--megapixels", "0.1", "--count", "8")
    calls = report["client_cpu_ms_per_call"]
    assert set(calls) == set(report["calls_per_job"])
    assert {"get record", "put rendition", "get original + read", "sha-256 of the original"} <= set(calls)
    # A receive's and a delete's share are a difference of two measurements: noise at 8 calls.
    positive({name: ms for name, ms in calls.items() if "messages" not in name})
    positive(report["upload_client_cpu_ms_per_call"])
    positive(
        {
            key: report[key]
            for key in (
                "original_bytes",
                "worker_cpu_ms_per_image",
                "worker_io_cpu_ms",
                "upload_calls_cpu_ms",
                "floor_api_upload_vs_direct_put",
            )
        }
    )
    assert 0 < report["bound_consumer_vs_raw_pool"] <= 1


@pytest.mark.e2e
def test_bench_consumer_at_two_images() -> None:
    report = report_of("bench_consumer.py", "--images", "2", "--megapixels", "0.1")
    assert report["images"] == 2 and report["originals"] == "as API uploads"
    rates = ["raw_pool_images_per_s", "consumer_images_per_s", "naive_images_per_s"]
    positive({key: report[key] for key in [*rates, "image_bytes", "workers", "consumer_vs_raw_pool"]})
    cpu = report["consumer_phase_cpu_seconds"]
    assert set(cpu) >= {"moto", "consumer_event_loop", "imaging_workers", "wall", "loop_vs_worker"}
    positive({key: cpu[key] for key in ("imaging_workers", "wall", "worker_ms_per_image")})


WRK = shutil.which("wrk")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.mark.e2e
@pytest.mark.skipif(WRK is None, reason="wrk is not installed (make test installs it: apt-get install wrk)")
def test_bench_delivery_for_a_second_a_phase(tmp_path: Path) -> None:
    """One serving process (`--workers 1` starts it once), driven by wrk for a second a phase;
    no thumbor (as in CI: the tests do not install it), whose figures are left out, not faked."""
    args = ["--seconds", "1", "--connections", "2", "--workers", "1", "--thumbor", str(tmp_path / "none")]
    report = report_of("bench_delivery.py", *args)
    assert (report["seconds"], report["connections"]) == (1, 2)
    workers = report["workers"]
    urls = {"public_rendition", "public_preset", "api_download"}
    assert set(workers["one"]) == urls and workers["many"] == workers["one"]
    assert workers["ratio"] == dict.fromkeys(urls, 1.0)
    positive(workers["one"])
    per_core = report["per_core"]
    assert {"ours_public_rendition", "ours_public_preset"} <= set(per_core)
    positive({key: per_core[key] for key in ("ours_public_rendition", "ours_public_preset")})
    if os.path.exists(NGINX):  # `make test` installs it; without it the row is left out
        positive(per_core["nginx_sendfile"])
        assert per_core["ours_cpu_over_nginx"] > 0
    else:
        assert "nginx_sendfile" not in per_core
    assert not [key for key in per_core if "thumbor" in key], per_core


@pytest.mark.e2e
def test_bench_duplicates_once_on_a_2_mp_jpeg() -> None:
    report = report_of("bench_duplicates.py", "--runs", "1", "--images", "jpeg-2mp")
    row = report["jpeg-2mp"]
    positive({k: v for k, v in row.items() if k != "duplicate_worker_cpu_ms"})
    # The copy's job made nothing (the script checks the record names the first as its source).
    assert row["duplicate_worker_cpu_ms"] < row["fresh_worker_cpu_ms"]


@pytest.mark.e2e
def test_bench_imaging_once_on_a_2_mp_jpeg() -> None:
    args = ["--only", "jpeg-2mp", "--runs", "1", "--sides", "256"]
    report = report_of("bench_imaging.py", *args, "--json")
    engines = ("naive", "pillow", "pyvips", "chosen")
    [row] = report["rows"]
    assert (row["image"], row["side"], row["pixels"]) == ("jpeg-2mp", 256, 1728 * 1152)
    assert row["choice"] in engines
    for engine in engines:
        assert set(row[engine]) == {"ms", "peak_rss_mb", *(["ssim"] if HAVE_SSIM else [])}
        positive(row[engine])
    assert "throughput_12mp_jpeg_256_2_workers" not in report  # only for the 12 MP JPEG
    # The Markdown table, the default: one row per image and side.
    table = run_script("bench_imaging.py", *args).stdout.splitlines()
    assert table[0].startswith("| image | side | naive ms |")
    assert re.fullmatch(r"\| jpeg-2mp \| 256 \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \w+ \| .*", table[2])


@pytest.mark.e2e
def test_bench_memory_streams_one_mib() -> None:
    report = report_of("bench_memory.py", "--mib", "1")
    assert report["mib"] == 1
    positive({k: report[k] for k in ("api_rss_before_mib", "upload_mib_per_s", "download_mib_per_s")})
    # Growth over the RSS before (its target: <= 64 MiB for 1 GiB), give or take the allocator.
    for growth in ("upload_peak_growth_mib", "download_peak_growth_mib"):
        assert -1 <= report[growth] <= 64, report


@pytest.mark.e2e
def test_bench_memory_two_concurrent_uploads() -> None:
    report = report_of("bench_memory.py", "--concurrent", "2", "--mib-each", "1", "--settle", "0")
    assert (report["uploads"], report["mib_each"]) == (2, 1)
    assert report["answers"] == {"202": 2} and report["retried_after_503"] == 0
    assert report["api_rss_before_mib"] > 0 and -1 <= report["peak_growth_mib"] <= 512  # its target
    assert "growth_0s_after_mib" in report and report["burst_seconds"] >= 0


@pytest.mark.e2e
def test_bench_peers_without_thumbor_reports_our_side(tmp_path: Path) -> None:
    """thumbor is not installed for the tests: the report is ours alone, nothing of theirs faked."""
    no_thumbor = tmp_path / "no-thumbor"
    tiny = ["--images", "jpeg-2mp", "--runs", "1", "--requests", "2", "--concurrency", "1"]
    run = run_script(
        "bench_peers.py", *tiny, "--variant-runs", "1", "--backend", "local", f"--thumbor={no_thumbor}"
    )
    assert f"no thumbor at {no_thumbor}" in run.stderr
    report = json.loads(run.stdout)
    assert report["thumbor"] is False
    assert not [where for where, _ in numbers(report) if "thumbor" in where], report
    positive(report["rendition_ms"]["jpeg-2mp"])
    ours = report["get_throughput"]["ours_pregenerated"]
    assert ours["failures"] == 0 and ours["per_s"] > 0 and ours["p50_ms"] > 0
    variants = report["variants"]
    transforms = {"fit-512", "cover-300-smart", "webp-800w"}
    assert set(variants["first_request_ms"]) == set(variants["repeated_throughput"]) == transforms
    for transform in transforms:
        first = variants["first_request_ms"][transform]["jpeg-2mp"]
        assert first["failures"] == 0 and first["ours_p50"] > 0
        stored = variants["repeated_throughput"][transform]["ours_stored"]
        assert stored["failures"] == 0 and stored["per_s"] > 0
    assert set(variants["ssim"]) == {"fit-512", "webp-800w"}  # the smart crop has no reference
    for rows in variants["ssim"].values():
        if HAVE_SSIM:
            assert 0 < rows["jpeg-2mp"]["ours"] <= 1 and "thumbor" not in rows["jpeg-2mp"]
        else:
            assert rows == {"skipped": "make bench-install for scikit-image"}


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_bench_scaling_one_and_two_consumers() -> None:
    """The issue's command line, at two tiny images (it crashed on main)."""
    args = ["--repeat", "1", "--processes", "1", "2", "--images", "2", "--megapixels", "0.1"]
    report = report_of("bench_scaling.py", *args, timeout=200)
    assert (report["images"], report["format"]) == (2, "avif")
    assert report["image_bytes"] > 0 and report["in_flight_per_process"] > 0
    assert [r["processes"] for r in report["rounds"]] == [1, 2]
    for row in report["rounds"]:
        # Every image made (at least) once; throughput itself is noise at two images.
        assert row["duplicates"] >= 0
        assert row["seconds_with_queue"] > 0 and row["seconds_empty_queue"] > 0
        assert set(row["cpu_ms_per_image"]) == {"worker", "consumer_loop", "endpoint"}
    assert set(report["median_images_per_s"]) == set(report["speedup_vs_one"]) == {"1", "2"}
    assert report["speedup_vs_one"]["1"] == report["raw_speedup"]["1"] == 1.0
    positive(report["raw_speedup"])


@pytest.mark.e2e
def test_loadtest_one_request_a_phase() -> None:
    args = ["--count", "1", "--concurrency", "1", "--mix", "100k", "--idle-count", "1", "--json"]
    report = report_of("loadtest.py", *args)
    size = report["sizes"]["100k"]
    assert 90_000 <= size["bytes"] <= 110_000
    phases = ["s3_put", "api_upload", "s3_put_notifying", "presigned_upload", "s3_get", "api_download"]
    for phase in phases:
        summary = size[phase]
        assert summary["requests"] == 1 and "errors" not in summary, (phase, summary)
        positive({k: summary[k] for k in ("per_s", "p50_ms", "p95_ms", "p99_ms")})
        # It started the stack: the CPU each process spent (in clock ticks: often 0 at one request).
        assert set(summary["cpu_ms_per_request"]) == {"client", "endpoint", "api"}
    positive({k: v for k, v in size.items() if k.endswith(("_vs_s3_put", "_vs_notifying_put", "_vs_s3_get"))})
    for kind in ("thumbnails_under_load", "idle"):  # uploaded, made by the consumer, downloaded
        made, downloaded = report[kind]["time_to_thumbnail"], report[kind]["thumbnail_download"]
        assert report[kind]["errors"] == {}
        assert made["requests"] == downloaded["requests"] == 1
        assert made["p50_ms"] > 0 and downloaded["p50_ms"] > 0
    assert report["idle"]["processing_ms"] > 0


@pytest.mark.e2e
def test_noisy_neighbour_one_second_of_wrong_keys() -> None:
    report = report_of("noisy_neighbour.py", "--attacks", "wrong_keys", "--seconds", "1", "--json")
    assert report["backend"] == "local"
    baseline, attack = report["rows"]
    assert (baseline["attack"], attack["attack"]) == ("baseline", "wrong_keys")
    for row in (baseline, attack):
        # The other user was served throughout, and nobody saw a 5xx the service should not send.
        assert row["requests"] > 0 and row["success"] >= 0.95 and row["bad_5xx"] == 0, row
        positive({k: row[k] for k in ("p50_ms", "p95_ms", "admin_p95_ms")})
    notes = attack["notes"]
    assert notes["sent"] > 0
    # Past the failure limit (20 a minute, in windows of the clock: a second of attack can
    # straddle two) an address is refused in-process (429), not checked again (401).
    assert 0 < notes["attacker_401"] <= 40 and notes["attacker_429"] > 0
    assert notes["attacker_401"] + notes["attacker_429"] <= notes["sent"]
    assert baseline["notes"]["worker_rss_mb_idle_at_end"]


@pytest.mark.e2e
def test_bench_operations_once_on_a_2_mp_jpeg() -> None:
    report = report_of("bench_operations.py", "--runs", "1", "--images", "jpeg-2mp", "--json")
    rows = report["jpeg-2mp"]
    assert set(rows) >= {"resize", "blur=2", "rotate=90", "trim", "cover, faces", "faces: detection alone"}
    assert rows["resize"]["ratio"] == 1.0 and all(row["ms"] > 0 for row in rows.values())
