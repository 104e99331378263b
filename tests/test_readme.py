"""The README's commands, run as a reader would run them: every shell block not marked
`<!-- not run: why -->` on the line before it runs, in order, in one `bash -euo pipefail`, against
a real `python -m web` started here. Two substitutions only, both of what `make run` fixes: the
port (`localhost:8080` is the one the test's server got) and the demo keys (the file the server
wrote is copied to where the README reads it). Then what the blocks downloaded must decode as the
thumbnails they claim to be."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from scripts.durability import Web
from tests.conftest import process_env

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


def test_every_block_is_run_or_says_why_not() -> None:
    run, skipped = blocks((ROOT / "README.md").read_text())
    assert run, "the README's quickstart blocks are what this test runs"
    assert all(len(reason) > 10 for reason in skipped)


async def test_the_readme_blocks_work_as_written(tmp_path: Path) -> None:
    web = Web(tmp_path / "data", tmp_path / "web.log", process_env(IMGSVC_LOG_LEVEL="INFO"))
    await web.start()
    try:
        run, _ = blocks((ROOT / "README.md").read_text())
        port = web.url.rsplit(":", 1)[1]
        script = "\n".join(run).replace("localhost:8080", f"localhost:{port}")
        reader = tmp_path / "reader"
        reader.mkdir()
        shutil.copytree(ROOT / "input", reader / "input")
        shutil.copy(tmp_path / "data" / "demo-keys.json", reader / "demo-keys.json")
        bash = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", script,
            cwd=reader, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
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
    finally:
        await web.stop()
