"""A new plugin author's first half hour: ``voicebot plugin new`` writes a package whose own
tests pass (a fake lobby, then a real one), and ``voicebot dev`` runs it in a lobby whose
link it prints, restarting it when a file is saved."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared import protocol as p
from signaling.testing import free_port

from .conftest import ROOT, Clients
from .helpers import wait_until

pytestmark = pytest.mark.backends("sqlite")


def new_plugin(where: Path) -> Path:
    out = subprocess.run([sys.executable, "-m", "signaling.cli", "plugin", "new", "weather-bot",
                          "--dir", str(where)], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    root = where / "weather-bot"
    assert "voicebot dev" in out.stdout and (root / "weather_bot.py").is_file()
    return root


def test_a_new_plugins_own_tests_pass_as_written(tmp_path: Path) -> None:
    root = new_plugin(tmp_path)
    # the same name again is refused, not overwritten
    again = subprocess.run([sys.executable, "-m", "signaling.cli", "plugin", "new",
                            "weather-bot", "--dir", str(tmp_path)], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                           cwd=root, capture_output=True, text=True, timeout=300,
                           env=os.environ | {"PYTHONPATH": str(root)})
    assert tests.returncode == 0 and "3 passed" in tests.stdout, tests.stdout + tests.stderr


async def test_voicebot_dev_runs_the_plugin_and_restarts_it_when_saved(
        tmp_path: Path) -> None:
    root = new_plugin(tmp_path)
    port = free_port()
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "signaling.cli", "dev", "--path", str(root),
                                 "--port", str(port), "--data-dir", str(tmp_path / "data")],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                env=os.environ | {"VOICEBOT_AUTO_BOTS": "weather"})
    pool = Clients(f"http://127.0.0.1:{port}/")
    try:
        await wait_until(lambda: "talk to your bot" in log_path.read_text(), 60, "the link")
        link = re.search(r"talk to your bot: (\S+)#lobby=(\S+)", log_path.read_text())
        assert link is not None and link.group(1) == f"http://127.0.0.1:{port}/"
        await wait_until(lambda: "bot plugins:" in log_path.read_text(), 60, "the provider")
        ann, inbox = await pool.new("Ann")
        await ann.join(lobby_id=link.group(2))
        await inbox.wait_for(p.BotStatus, kind="weather", status="live", timeout=60)
        await ann.chat(link.group(2), "!weather")
        await inbox.wait_for(p.Chat, text="Hello, Ann!", timeout=30)

        source = root / "weather_bot.py"
        source.write_text(source.read_text().replace("Hello, {name}!", "Howdy, {name}!"))
        await wait_until(lambda: "weather_bot.py changed" in log_path.read_text(), 30,
                         "the restart")
        deadline = time.monotonic() + 90
        while not inbox.of(p.Chat, text="Howdy, Ann!"):  # once the bot is back, it answers
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            await ann.chat(link.group(2), "!weather")
            with contextlib.suppress(AssertionError):
                await inbox.wait_for(p.Chat, text="Howdy, Ann!", timeout=3)
    finally:
        await pool.close()
        proc.terminate()
        proc.wait(30)
