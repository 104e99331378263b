"""The floor plan: `pipeline/` in rooms by role, each room importing only the rooms its
`__init__` names (module level and inside functions), with no circle between rooms, so a
forbidden import fails here, not in review. Only imaging's renditions load a decoder."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DECODERS = {"pyvips", "PIL", "cv2"}
#: Each room (a package, or `pipeline.backends` alone) and the rooms of ours it may import; its
#: `__init__` says the same in words. A room always imports itself.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "pipeline.core": {"config"},
    "pipeline.aws": {"config", "pipeline.core"},
    "pipeline.local": {"config", "pipeline.core"},
    "pipeline.imaging": {"config", "pipeline.core"},
    "pipeline.webhooks": {"config", "pipeline.core"},
    "pipeline.backends": {"config", "pipeline.core", "pipeline.aws", "pipeline.local"},
    "pipeline.consumer": {
        "config", "pipeline.core", "pipeline.imaging", "pipeline.webhooks", "pipeline.backends",
    },
    "pipeline.cli": {
        "config", "pipeline.core", "pipeline.aws", "pipeline.local", "pipeline.imaging",
        "pipeline.webhooks", "pipeline.backends", "pipeline.consumer",
    },
    "pipeline": {"pipeline.cli"},  # `python -m pipeline` hands over to the command line
    "web": {
        "config", "pipeline.core", "pipeline.aws", "pipeline.imaging", "pipeline.webhooks",
        "pipeline.backends", "pipeline.consumer",
    },
}  # fmt: skip
#: (module, room): an import its room's rule forbids, allowed to that one module, and why.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("pipeline/consumer/lambda_handler.py", "pipeline.aws"): "the Lambda runtime is AWS by definition",
}


def room_of(module: str) -> str | None:
    """The room of a dotted module name, or None for a module that is not ours."""
    parts = module.split(".")
    if parts[0] not in ("config", "pipeline", "web"):
        return None
    if parts[0] != "pipeline" or len(parts) == 1 or parts[1] == "__main__":
        return parts[0]
    return f"pipeline.{parts[1]}"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, by its whole dotted name (module level and inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def ours_imported_by(path: Path) -> set[str]:
    """Every module of ours `path` imports (`from pipeline.core import x` names `pipeline.core`)."""
    return {name for name in imported_modules(path) if room_of(name) is not None}


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def room_of_file(path: Path) -> str:
    room = room_of(module_of(path))
    assert room is not None, path
    return room


def forbidden_imports(paths: list[Path]) -> list[str]:
    broken = []
    for path in paths:
        room, rel = room_of_file(path), str(path.relative_to(ROOT))
        for name in sorted(ours_imported_by(path)):
            target = room_of(name)
            if target in (None, room) or target in ALLOWED[room] or (rel, str(target)) in EXCEPTIONS:
                continue
            broken.append(f"{rel} imports {name} ({room} may not import {target})")
    return broken


def code() -> list[Path]:
    return [
        path for package in ("config", "pipeline", "web") for path in sorted((ROOT / package).rglob("*.py"))
    ]


def test_every_room_imports_only_what_its_rule_allows() -> None:
    assert forbidden_imports(code()) == []


def test_a_forbidden_import_fails() -> None:
    """The check itself: one backend reaching into the other is caught."""
    probe = ROOT / "pipeline" / "local" / "_layering_probe.py"
    probe.write_text("from pipeline.aws.queue import Queue\n")
    try:
        assert forbidden_imports([probe]) == [
            "pipeline/local/_layering_probe.py imports pipeline.aws.queue"
            " (pipeline.local may not import pipeline.aws)"
        ]
    finally:
        probe.unlink()


def test_the_rooms_have_no_circle() -> None:
    """Between rooms imports run one way: no room reaches back to a room that imports it."""
    edges: dict[str, set[str]] = {}
    for path in code():
        room = room_of_file(path)
        targets = {room_of(name) for name in ours_imported_by(path)} - {None, room}
        edges.setdefault(room, set()).update(str(target) for target in targets)

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in edges.get(todo.pop(), set()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert sorted(room for room in edges if room in reachable(room)) == []


def test_every_room_says_what_it_may_import() -> None:
    for room in sorted(ALLOWED):
        if room == "pipeline.backends":
            init = ROOT / "pipeline" / "backends.py"
        else:
            init = ROOT / Path(*room.split(".")) / "__init__.py"
        assert "May import" in (ast.get_docstring(ast.parse(init.read_text())) or ""), init


def top_level_imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def test_only_imaging_imports_the_decoders() -> None:
    importers = {str(path.relative_to(ROOT)) for path in code() if top_level_imports(path) & DECODERS}
    assert importers == {
        "pipeline/imaging/renditions.py",
        "pipeline/imaging/operate.py",
        "pipeline/imaging/metadata.py",
        "pipeline/imaging/faces.py",
    }


def test_config_needs_nothing_but_the_standard_library() -> None:
    outside = {
        name
        for path in sorted((ROOT / "config").rglob("*.py"))
        for name in top_level_imports(path)
        if name not in sys.stdlib_module_names and name != "config"
    }
    assert outside == set()


@pytest.mark.e2e
def test_no_process_but_a_worker_loads_a_decoder() -> None:
    """Statically clean is not enough: what these modules import at run time must not pull
    pyvips or Pillow in either (the API, the consumer's parent, the local backend)."""
    probe = (
        "import sys, web.app, web.__main__, pipeline.consumer.loop, pipeline.consumer.service, "
        "pipeline.cli.reconcile, pipeline.cli.main, pipeline.local.backend; "
        "print(sorted(m for m in ('pyvips', 'PIL', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.e2e
def test_a_process_on_a_data_directory_loads_no_aws_library(tmp_path: Path) -> None:
    """The local backend stands on the core alone: the API's and the consumer's modules, and a
    backend opened on a data directory, load none of AWS's libraries (nor moto)."""
    probe = (
        "import asyncio, sys\n"
        "import web.__main__, web.app, pipeline.consumer.service, pipeline.local.backend\n"
        "from config.settings import Settings\n"
        "from pipeline.backends import open_backend\n"
        "async def main():\n"
        f"    settings = Settings.from_env({{'IMGSVC_DATA_DIR': {str(tmp_path / 'data')!r}}})\n"
        "    async with open_backend(settings) as backend:\n"
        "        await backend.tables.users.get({'user_id': 'nobody'})\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('botocore', 'aiobotocore', 'boto3', 'moto') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
