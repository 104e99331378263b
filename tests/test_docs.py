"""The documentation keeps up with the code: every error code the service can answer or record
is in docs/api.md's errors section."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Codes of classes only ever raised through a subclass of their own (each names its own code).
BASES = {"permanent_error", "transient_error", "quota_exceeded", "unauthenticated", "upload_timeout"}
#: Calls that answer an error code directly, the code as their second argument (the document's
#: builder takes it first).
WRITERS = {"error_response", "_answer_and_close", "_answer"}
DOCUMENTS = {"error_document"}


def codes_in_the_code() -> dict[str, str]:
    """Every error code: the `code` of each error class, and each code answered directly."""
    found: dict[str, str] = {}
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "web").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (
                        isinstance(stmt, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "code" for t in stmt.targets)
                        and isinstance(stmt.value, ast.Constant)
                        and isinstance(stmt.value.value, str)
                    ):
                        found.setdefault(stmt.value.value, node.name)
            elif isinstance(node, ast.Call):
                name = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if name in WRITERS and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    found.setdefault(str(node.args[1].value), name)
                if name in DOCUMENTS and node.args and isinstance(node.args[0], ast.Constant):
                    found.setdefault(str(node.args[0].value), name)
    return found


def test_every_error_code_is_documented() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    errors = api[api.index("## Errors") :]
    codes = codes_in_the_code()
    assert len(codes) > 60  # the scan finds them
    assert sorted(c for c in codes if c not in BASES and f"`{c}`" not in errors) == []


def test_the_bases_left_out_are_only_bases() -> None:
    """A code left out above must belong to a class that other error classes refine."""
    from pipeline.core import errors

    bases = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and cls.__subclasses__()}
    assert bases >= BASES


def test_every_error_class_lives_in_the_errors_module() -> None:
    """One home for the error classes: elsewhere one is refined only as an internal signal that
    carries more than a code (listed here, with why)."""
    errors_module = ROOT / "pipeline" / "core" / "errors.py"
    defined = {
        node.name for node in ast.walk(ast.parse(errors_module.read_text())) if isinstance(node, ast.ClassDef)
    }
    outside = set()
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "web").rglob("*.py")]:
        if path == errors_module:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") in defined for b in node.bases):
                outside.add((str(path.relative_to(ROOT)), node.name))
    assert outside == {
        ("pipeline/imaging/workers.py", "PoolBroke"),  # the pool's own: retried once, never answered
        ("pipeline/core/objects.py", "OversizeObject"),  # carries the object's metadata to its reader
    }
