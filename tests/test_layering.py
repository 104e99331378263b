"""The package rules each `__init__` docstring states, checked on every import in the code
(module level and inside functions), so a forbidden one fails here, not in review."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DECODERS = {"pyvips", "PIL"}
#: package -> the packages of ours it must never import
FORBIDDEN = {
    "config": {"pipeline", "web", "local"},
    "pipeline": {"web", "local"},
    "local": {"web"},
    "web": {"local"},
}
#: the one module of a package allowed an otherwise forbidden import, and why it is allowed
EXCEPTIONS = {("pipeline/backends.py", "local")}  # the composition point picks the backend


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_their_rules_allow(package: str) -> None:
    broken = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package)
        for name in imports_of(path) & FORBIDDEN[package]
        if (str(path.relative_to(ROOT)), name) not in EXCEPTIONS
    ]
    assert broken == []


def test_only_imaging_imports_the_decoders() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for package in FORBIDDEN
        for path in modules(package)
        if imports_of(path) & DECODERS
    }
    assert importers == {"pipeline/imaging.py"}


def test_config_needs_nothing_but_the_standard_library() -> None:
    outside = {
        name
        for path in modules("config")
        for name in imports_of(path)
        if name not in sys.stdlib_module_names and name != "config"
    }
    assert outside == set()


@pytest.mark.e2e
def test_no_process_but_a_worker_loads_a_decoder() -> None:
    """Statically clean is not enough: what these modules import at run time must not pull
    pyvips or Pillow in either (the API, the consumer's parent, the local backend)."""
    probe = (
        "import sys, web.app, web.__main__, pipeline.consumer, pipeline.service, pipeline.reconcile, "
        "pipeline.__main__, local.backend; "
        "print(sorted(m for m in ('pyvips', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
