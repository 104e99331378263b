"""Every script under `scripts/` still imports and parses its arguments, so a change to the code
they drive (a module moved, a name renamed) breaks a test, not a user's benchmark. Runs at small
sizes are the scripts' own tests (capacity, cluster, durability, noisy_neighbour)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(path.name for path in (ROOT / "scripts").glob("*.py"))
#: Modules the scripts share, with no command line of their own.
LIBRARIES = {"awsproxy.py", "proccpu.py", "stack.py"}

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
