"""The docs are a contract: the error table is the code's, the client's example runs, and
every close code and message type a client can meet is documented."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
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


def _architecture_problems(text: str) -> tuple[list[str], int]:
    """What docs/architecture.md's caption path names that is not where it says: each row
    names a file, then the classes, methods and functions in it."""
    files: dict[str, Path] = {}
    for folder in ("signaling", "signaling/static/js", "bots", "shared"):
        for path in (ROOT / folder).iterdir():
            if path.suffix in (".py", ".js"):
                files.setdefault(path.name, path)
    problems, checked = [], 0
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| step"):
            continue
        source = None
        for m in re.finditer(r"`([^`]+)`", line):
            token = m.group(1)
            if line[m.start() - 1:m.start()] == "(" and line[m.end():m.end() + 1] == ")":
                continue  # a message type or an event, named in passing
            if re.fullmatch(r"[\w/]+\.(py|js)", token):
                path = ROOT / token if "/" in token else files.get(token)
                source = path.read_text() if path is not None and path.exists() else None
                if source is None:
                    problems.append(f"no file {token}")
                continue
            if source is None or not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)?", token):
                continue
            for ident in token.split("."):
                checked += 1
                if not re.search(rf"(\bdef|\bclass|\bfunction)\s+{ident}\b"
                                 rf"|^\s*(async\s+)?{ident}\s*\(", source, re.M):
                    problems.append(f"{token}: no {ident} in the file named before it")
    return problems, checked


def test_the_architecture_page_names_code_that_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    problems, checked = _architecture_problems(text)
    assert not problems and checked > 40
    # and it notices a name that is not there
    assert _architecture_problems(text.replace("`Hub.caption`", "`Hub.captions`"))[0]


def plugin_doc_files() -> dict[str, str]:
    """docs/plugins.md's code blocks, by the file each one's first line names."""
    doc = (ROOT / "docs" / "plugins.md").read_text()
    files = {}
    for lang, body in re.findall(r"```(python|toml)\n(.*?)```", doc, re.DOTALL):
        first = body.splitlines()[0]
        assert first.startswith("# ") and " " not in first[2:], f"a {lang} block names no file"
        files[first[2:]] = body
    return files


@pytest.mark.backends("sqlite")
async def test_every_plugin_doc_snippet_runs_as_written(
        server: TestServer, tmp_path: Path, provider_process: Any) -> None:
    import tomllib

    from signaling.dispatch import DISPATCHER

    from .helpers import wait_until

    files = plugin_doc_files()
    assert {"greeter_bot.py", "keyword_bot.py", "timer_bot.py", "reader_bot.py", "test_fake.py",
            "test_live.py", "join.py", "pyproject.toml"} <= set(files), sorted(files)
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    entry = tomllib.loads(files["pyproject.toml"])["project"]["entry-points"]
    assert entry["ai_voicebot.bots"] == {"greeter": "greeter_bot:GreeterBot"}
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    tests = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
        "--rootdir", str(tmp_path), str(tmp_path), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(tests.communicate(), 300))[0].decode()
    assert tests.returncode == 0 and "5 passed" in out, out

    url = str(server.make_url("/"))
    provider_process(url, plugins=("echo",))
    await wait_until(lambda: server.app[DISPATCHER].providers, 60, "the provider")
    join = await asyncio.create_subprocess_exec(
        sys.executable, str(tmp_path / "join.py"), url, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(join.communicate(), 120))[0].decode()
    assert join.returncode == 0, out
    assert "added: 201" in out and "Echo answered: hello" in out, out
