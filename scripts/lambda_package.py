"""Build the Lambda deployment package the template's `LambdaCodeBucket`/`LambdaCodeKey` name: the
service's `pipeline` and `config` packages with its runtime dependencies, as Linux x86_64 wheels
for the function's runtime (`PYTHON`), whatever machine builds it.

    python scripts/lambda_package.py [--out dist/image-service-lambda.zip]   # or: make lambda-package

The function runs the consumer's jobs and webhook deliveries; the embedded AWS (moto, Flask,
granian) and the web server's extras stay out. Versions are the lock file's (constraints.txt).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What the function never imports: the embedded AWS and its web servers.
LEFT_OUT = {"moto", "flask", "flask-cors", "granian"}
PACKAGES = ("pipeline", "config")
#: Published as source only; pure Python (cffi's ABI mode: pyvips-binary brings libvips), so a
#: wheel built here serves any platform.
SOURCE_ONLY = ("pyvips",)
#: The function's runtime: python3.12, on Amazon Linux 2023 (glibc 2.34). Not python3.11, whose
#: Amazon Linux 2 (glibc 2.26) cannot load pyvips-binary's libvips (manylinux_2_28).
PYTHON = "3.12"
PLATFORM = [
    *("--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64"),
    *("--platform", "manylinux_2_34_x86_64", "--implementation", "cp", "--python-version", PYTHON),
]


def requirements() -> list[str]:
    """The runtime dependencies of pyproject.toml, less `LEFT_OUT`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    kept = []
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=~! ;]", requirement, maxsplit=1)[0].lower()
        if name not in LEFT_OUT:
            kept.append(requirement)
    return kept


def build(out: Path) -> int:
    """Write the package to `out`; its size in bytes."""
    with tempfile.TemporaryDirectory() as scratch:
        target, wheels = Path(scratch) / "package", Path(scratch) / "wheels"
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
        constraints = ["-c", str(ROOT / "constraints.txt")]
        subprocess.run(
            [*pip, "wheel", "--no-deps", "-w", str(wheels), *constraints, *SOURCE_ONLY], check=True
        )
        built = [w.name for w in wheels.glob("*.whl")]
        assert all(name.endswith("-py3-none-any.whl") for name in built), built
        subprocess.run(
            [
                *pip, "install", "--no-compile", "--only-binary=:all:", *PLATFORM,
                "--find-links", str(wheels), "--target", str(target), *constraints, *requirements(),
            ],
            check=True,
        )  # fmt: skip
        for package in PACKAGES:
            shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(target.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    archive.write(path, path.relative_to(target))
    return out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "image-service-lambda.zip")
    args = parser.parse_args()
    size = build(args.out)
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB); upload it to LambdaCodeBucket as LambdaCodeKey")


if __name__ == "__main__":
    main()
