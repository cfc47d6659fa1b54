"""The docs are a contract: the error table is the code's, the client's example runs, and
every close code and message type a client can meet is documented."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from aiohttp.test_utils import TestServer

from shared import protocol as p

from .conftest import ROOT

PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def test_the_error_table_is_every_code_the_server_has() -> None:
    table = PROTOCOL[PROTOCOL.index("## Error codes"):PROTOCOL.index("## HTTP API")]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)
    assert sorted(documented) == sorted(c.value for c in p.ErrorCode)
    assert len(documented) == len(set(documented))


def test_every_message_type_and_close_code_is_documented() -> None:
    for type_ in p.MessageType:
        assert f"`{type_.value}`" in PROTOCOL, type_
    from signaling.connection import CLOSE_KICKED, CLOSE_REMOVED, CLOSE_REPLACED
    table = PROTOCOL[PROTOCOL.index("### Close codes"):PROTOCOL.index("## WebRTC")]
    for code in (1000, 1001, 1007, 1008, 1009, 1013, CLOSE_REPLACED, CLOSE_REMOVED,
                 CLOSE_KICKED):
        assert f"| {code} |" in table, code


async def test_the_client_example_runs_as_written(server: TestServer, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "client.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.DOTALL)
    assert example is not None
    script = tmp_path / "example.py"
    script.write_text(example.group(1))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(server.make_url("/")), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "Greeter: hello from the shared client" in text, text
    assert "in Example lobby with ['Greeter']" in text, text
    assert re.search(r"stored as message \d+", text) and "refused: lobby_not_found" in text, text
