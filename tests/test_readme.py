"""The commands of the README and of `docs/`, run as a reader would run them: every shell block
not marked `<!-- not run: why -->` on the line before it runs, the README's first and then each
document's, in order, in one `bash -euo pipefail`, against a real `python -m web` started here.
Substitutions only of what `make run` fixes: the port (`localhost:8080`, and `IMGSVC_PORT` for
the tools that find the API by it, are the test server's) and the demo keys (the file the server
wrote is copied to where the README reads it). Then what the blocks downloaded must decode as the
thumbnails they claim to be. Usage synopses with placeholders are `text` blocks, not commands."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.support.processes import WebProcess, process_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```sh\n(?P<code>.*?)\n```", re.S)


def blocks(text: str) -> tuple[list[str], list[str]]:
    """The shell blocks to run, and the reasons given for those that are not."""
    run, skipped = [], []
    for match in BLOCK.finditer(text):
        reason = re.fullmatch(r"<!-- not run: (.+) -->", match["before"].strip())
        (skipped if reason else run).append(reason[1] if reason else match["code"])
    return run, skipped


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_block_is_run_or_says_why_not() -> None:
    run, _ = blocks((ROOT / "README.md").read_text())
    assert run, "the README's quickstart blocks are what this test runs"
    for document in DOCUMENTS:
        _, skipped = blocks(document.read_text())
        assert all(len(reason) > 10 for reason in skipped), document.name


async def test_the_readme_blocks_work_as_written(tmp_path: Path) -> None:
    env = process_env(IMGSVC_LOG_LEVEL="INFO")
    async with WebProcess("--data-dir", str(tmp_path / "data"), env=env, log=tmp_path / "web.log") as web:
        run = [code for document in DOCUMENTS for code in blocks(document.read_text())[0]]
        port = web.url.rsplit(":", 1)[1]
        script = "\n".join(run).replace("localhost:8080", f"localhost:{port}")
        reader = tmp_path / "reader"
        reader.mkdir()
        shutil.copytree(ROOT / "input", reader / "input")
        shutil.copy(tmp_path / "data" / "demo-keys.json", reader / "demo-keys.json")
        (reader / ".venv").symlink_to(ROOT / ".venv")  # the checkout's, as `make run` made it
        bash = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", script,
            cwd=reader, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=process_env(IMGSVC_PORT=port, HOME=str(reader)),
        )  # fmt: skip
        out, err = await asyncio.wait_for(bash.communicate(), 120)
        stdout, stderr = out.decode(), err.decode()
        assert bash.returncode == 0, f"{stdout[-3000:]}\n{stderr[-3000:]}"
        assert '"status": "ready"' in stdout.replace('":"', '": "')
        for name in ("my-dog-256.jpg", "cat-256.jpg"):
            with Image.open(reader / name) as thumbnail:
                assert thumbnail.format == "JPEG" and max(thumbnail.size) == 256, name
        with Image.open(reader / "cat.jpg") as original, Image.open(ROOT / "input" / "cat.jpg") as sent:
            assert original.size == sent.size
        assert '"public": true' in stdout.replace('":"', '": "').replace('":t', '": t')
        # docs/delivery.md: a signed public variant; docs/operations.md: a bulk upload of input/.
        assert '"variant": "w400-' in stdout.replace('":"', '": "')
        assert '"failed": 0' in stdout and '"uploaded": 2' in stdout
