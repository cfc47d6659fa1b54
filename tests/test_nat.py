"""Real networks, simulated: two homes behind symmetric NATs (Linux namespaces, nftables), the
server, its transcriber and coturn on the "internet" side, Chromium in each home over HTTPS
with the server's self-signed certificate, told to trust exactly it.

With TURN the two people hear each other through coturn's relay and both are captioned;
without it they can't connect to each other at all — the control that shows the NATs are real
— while both still reach the transcriber on the internet side. Every address is in
198.18.0.0/15 and exists only inside the namespaces.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from .browser import CHROMIUM, chromium, create_lobby, enter, max_level, participant
from .conftest import PROVIDER_KEY, ROOT
from .netsim import INTERNET_IP, Internet
from .speech import DATA

pytestmark = pytest.mark.backends("sqlite")
SECRET = "nat-test-turn-secret"
PORT = 8443
URL = f"https://{INTERNET_IP}:{PORT}/"


@pytest.fixture
def internet() -> Iterator[Internet]:
    net = Internet().build(2, symmetric=True)
    try:
        yield net
    finally:
        net.close()


class Deployment:
    """coturn, the server (HTTPS, self-signed) and a provider, inside the internet."""

    def __init__(self, net: Internet, tmp: Path, *, turn: bool) -> None:
        self.net, self.tmp, self.procs = net, tmp, []
        self.logs: list[Path] = []
        env = {"VOICEBOT_PROVIDER_KEY": PROVIDER_KEY, "VOICEBOT_AUTO_BOTS": "transcriber",
               "VOICEBOT_TLS_SELF_SIGNED": "1", "VOICEBOT_TLS_NAMES": INTERNET_IP,
               "VOICEBOT_HOST": INTERNET_IP, "VOICEBOT_PORT": str(PORT)}
        if turn:
            turnserver = shutil.which("turnserver")
            assert turnserver, "turnserver is missing: apt-get install coturn"
            self.start("coturn", [turnserver, "-n", f"--listening-ip={INTERNET_IP}",
                                  f"--relay-ip={INTERNET_IP}", "--listening-port=3478",
                                  "--use-auth-secret", f"--static-auth-secret={SECRET}",
                                  "--realm=voicebot.test", "--no-tls", "--no-dtls", "--no-cli",
                                  "--fingerprint", "--min-port=40000", "--max-port=40999",
                                  "--simple-log", f"--log-file={tmp / 'turn.log'}",
                                  f"--pidfile={tmp / 'turn.pid'}"])
            env |= {"VOICEBOT_TURN_URLS": f"turn:{INTERNET_IP}:3478?transport=udp",
                    "VOICEBOT_TURN_SECRET": SECRET, "VOICEBOT_ICE_POLICY": "relay"}
        self.start("server", [sys.executable, "-m", "signaling.cli", "serve", "--data-dir",
                              str(tmp / "data")], env)
        self.cert = tmp / "data" / "tls" / "cert.pem"
        self.wait_for_log("server", "serving on https://")
        self.start("provider", [sys.executable, "-m", "signaling.cli", "bots", "--server", URL,
                                "--ca-file", str(self.cert), "--plugin", "transcriber"],
                   {"VOICEBOT_PROVIDER_KEY": PROVIDER_KEY})

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        import os
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(
                self.net.exec_args(self.net.inet, args), cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, env=os.environ | (env or {})))

    def wait_for_log(self, name: str, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        log = self.tmp / f"{name}.log"
        while text not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.1)

    def spki(self) -> str:
        """What Chromium is told to trust: the certificate's public key hash."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(der).digest()).decode()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


SELECTED_PAIR = """async (peerId) => {
  const entry = voicebot.mesh.peers.get(peerId);
  if (!entry) return null;
  const stats = await entry.pc.getStats();
  let pair = null;
  stats.forEach((r) => { if (r.type === "transport" && r.selectedCandidatePairId)
                           pair = stats.get(r.selectedCandidatePairId); });
  if (!pair) return null;
  return [stats.get(pair.localCandidateId).candidateType,
          stats.get(pair.remoteCandidateId).candidateType];
}"""


async def home_page(browser: Any) -> Page:
    return await (await browser.new_context(ignore_https_errors=False)).new_page()


async def run_call(net: Internet, deployment: Deployment, tmp: Path,
                   expect_connected: bool) -> dict[str, Any]:
    args = (f"--ignore-certificate-errors-spki-list={deployment.spki()}",)
    speech = DATA / "english_espeak.wav"
    wrappers = [net.wrapper(home.ns, CHROMIUM, tmp) for home in net.homes]
    async with chromium(speech, executable=wrappers[0], extra_args=args) as home1, \
            chromium(speech, executable=wrappers[1], extra_args=args) as home2:
        ann, ben = await home_page(home1), await home_page(home2)
        await enter(ann, URL, "Ann")
        lobby = await create_lobby(ann, "across the internet")
        await enter(ben, f"{URL}#lobby={lobby}", "Ben")
        result: dict[str, Any] = {}
        if not expect_connected:
            await asyncio.sleep(20)  # ICE gives up on a pair it can't reach
            result["states"] = [await participant(ann, "Ben").get_attribute("data-peer"),
                                await participant(ben, "Ann").get_attribute("data-peer")]
            result["levels"] = [await max_level(ann, "Ben", 2.0), await max_level(ben, "Ann", 2.0)]
            # each home still reaches the internet side: the page got its microphone over
            # https:// at a non-local address, and the transcriber's connection is up
            result["mics"] = [await page.evaluate("voicebot.store.state.mic") for page in (ann, ben)]
            result["bot"] = [await participant(page, "Transcriber").get_attribute("data-peer")
                             for page in (ann, ben)]
            return result
        for page, other in ((ann, "Ben"), (ben, "Ann")):
            await expect(participant(page, other)).to_have_attribute("data-peer", "connected",
                                                                     timeout=30000)
        result["levels"] = [await max_level(ann, "Ben", 3.0), await max_level(ben, "Ann", 3.0)]
        ids = [await p.evaluate("voicebot.store.state.session.session_id") for p in (ann, ben)]
        result["pairs"] = [await ann.evaluate(SELECTED_PAIR, ids[1]),
                           await ben.evaluate(SELECTED_PAIR, ids[0])]
        # both are captioned by the transcriber on the internet side
        for page in (ann, ben):
            await expect(page.locator("#messages .msg.transcript").first).to_be_visible(
                timeout=90000)
        speakers = set(await ann.evaluate(
            "voicebot.store.state.messages.filter((m) => m.segment_id).map((m) => m.speaker_id)"))
        deadline = time.monotonic() + 90
        while not set(ids) <= speakers and time.monotonic() < deadline:
            await asyncio.sleep(1)
            speakers = set(await ann.evaluate(
                "voicebot.store.state.messages.filter((m) => m.segment_id)"
                ".map((m) => m.speaker_id)"))
        result["captioned"] = speakers
        result["ids"] = ids
        return result


@pytest.mark.timeout(400)
async def test_two_homes_behind_symmetric_nats_talk_through_turn(internet: Internet,
                                                                 tmp_path: Path) -> None:
    """With TURN (relay policy: see docs/deploy.md) they hear each other through coturn's
    relay, and both are captioned."""
    deployment = Deployment(internet, tmp_path, turn=True)
    try:
        result = await run_call(internet, deployment, tmp_path, expect_connected=True)
    finally:
        deployment.close()
    assert min(result["levels"]) > 0.01, result
    assert result["pairs"] == [["relay", "relay"], ["relay", "relay"]], result
    assert set(result["ids"]) <= result["captioned"], result


@pytest.mark.timeout(300)
async def test_without_turn_the_two_homes_cannot_connect(internet: Internet,
                                                        tmp_path: Path) -> None:
    deployment = Deployment(internet, tmp_path, turn=False)
    try:
        result = await run_call(internet, deployment, tmp_path, expect_connected=False)
    finally:
        deployment.close()
    assert "connected" not in result["states"], result
    assert max(result["levels"]) < 0.003, result
    assert result["mics"] == ["on", "on"] and result["bot"] == ["connected", "connected"], result
