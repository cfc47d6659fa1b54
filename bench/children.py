"""Child processes a benchmark drives over pipes: the load generators, the speakers, the idle
clients. Each is ``python -m <module> ...`` from the repository root; it says how far it got
in lines on stdout and is let go by closing its stdin."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from signaling.testing import ROOT


async def spawn(module: str, *args: str) -> asyncio.subprocess.Process:
    """``python -m module args...`` with stdin, stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def read_line(child: asyncio.subprocess.Process, what: str, timeout: float,
                    prefix: bytes = b"") -> bytes:
    """The child's next line, which must start with ``prefix``; if it does not (or the child
    has gone), the child is killed and its stderr raised as ``{what} failed: ...``."""
    assert child.stdout is not None and child.stderr is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout)
    if not line or not line.startswith(prefix):
        child.kill()
        err = (await child.stderr.read()).decode(errors="replace")
        raise RuntimeError(f"{what} failed: {err[-2000:]}")
    return line


async def release(children: list[asyncio.subprocess.Process], timeout: float) -> None:
    """Closes every child's stdin (the sign to finish), then waits for each, killing one that
    takes longer than ``timeout``."""
    for child in children:
        if child.stdin is not None:
            child.stdin.close()
    for child in children:
        try:
            await asyncio.wait_for(child.wait(), timeout)
        except TimeoutError:
            child.kill()
            await child.wait()
