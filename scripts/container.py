"""Build the service's container image with podman where no container registry is reachable: the
base (Debian bookworm) made from Debian's own packages with debootstrap and imported, then the
Containerfile built `FROM` it, pip reaching its registry through the host's network and CA bundle.

    python scripts/container.py            # localhost/image-service:latest (make container)
    python scripts/container.py --tag localhost/image-service:test

With a registry, `podman build -t image-service .` is all it takes (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "localhost/imgsvc-base:bookworm"
LOCK = Path(tempfile.gettempdir()) / "image-service-container.lock"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: podman as these machines run it: runc, and no default ulimits (a sandbox may not raise them).
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'


def podman_env(scratch: Path) -> dict[str, str]:
    conf = scratch / "containers.conf"
    if not conf.exists():
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(
    env: dict[str, str], *args: str, timeout: float = 900, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=env, text=True, capture_output=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload, no-any-return]


def base_image(env: dict[str, str]) -> str:
    """The base image, made once per machine (debootstrap's minimal bookworm, about a minute)."""
    if podman(env, "image", "exists", BASE).returncode == 0:
        return BASE
    with tempfile.TemporaryDirectory() as scratch:
        rootfs = Path(scratch) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = podman(env, "import", "-", BASE, stdin=tar.stdout)
        tar.wait()
        if imported.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr}")
    return BASE


def build(tag: str, env: dict[str, str]) -> None:
    """The Containerfile, built `FROM` the base, with the host's network and pip's CA bundle; one
    build at a time on the machine (CI starts one beside the suite, whose test then waits for it
    and finds every layer made)."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build(tag, env)


def _build(tag: str, env: dict[str, str]) -> None:
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    # Docker's format: OCI images have no HEALTHCHECK.
    args = [
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "--build-arg",
        f"BASE={base_image(env)}",
        "-t",
        tag,
    ]
    if Path(cert).exists():  # mounted at a path of its own: over /etc/ssl/certs it breaks ca-certificates
        args += [
            "--volume",
            f"{cert}:/run/imgsvc-pip-ca.crt:ro",
            "--build-arg",
            "PIP_CERT=/run/imgsvc-pip-ca.crt",
        ]
    built = podman(env, *args, "-f", str(ROOT / "Containerfile"), str(ROOT))
    if built.returncode != 0:
        raise RuntimeError(f"podman build failed:\n{built.stdout[-4000:]}\n{built.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="localhost/image-service:latest")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        build(args.tag, podman_env(Path(scratch)))
    print(f"built {args.tag}")


if __name__ == "__main__":
    main()
