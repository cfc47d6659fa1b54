"""A small internet in Linux network namespaces, for tests of real networks.

    internet (ns "inet", 198.18.0.1 on its loopback): server, bot provider, coturn
       ├── 198.18.N.1 ── veth ── 198.18.N.2  nat N  (nftables masquerade: the home's router)
       │                                      └── 198.19.N.1 ── veth ── 198.19.N.2  home N

Every address is in 198.18.0.0/15 (benchmarking space, RFC 2544), which exists only inside
these namespaces; nothing is routed anywhere else (the namespaces have no other links). A
home reaches the internet only through its NAT; homes can't reach each other directly.
``symmetric`` NATs map each destination to a new random port (``masquerade random``), as
the strict routers that make TURN necessary do. Needs root (CI runs as root); a machine that
can't make namespaces fails with a clear message.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTERNET_IP = "198.18.0.1"
PORT = 8443
URL = f"https://{INTERNET_IP}:{PORT}/"  # the server, in the internet
SECRET = "simulated-turn-secret"
ROOT = Path(__file__).resolve().parent.parent


class NetError(RuntimeError):
    """The simulated network could not be built here."""


def _run(*args: str, input: str | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, input=input, timeout=30)
    if done.returncode != 0:
        raise NetError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@dataclass
class Home:
    index: int
    ns: str
    nat_ns: str
    ip: str  # the home's private address
    nat_ip: str  # the router's public address


@dataclass
class Internet:
    """Namespaces named ``vb<tag>-…``, removed by ``close``."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    homes: list[Home] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    @property
    def inet(self) -> str:
        return f"vb{self.tag}-inet"

    def _netns(self, name: str) -> str:
        _run("ip", "netns", "add", name)
        self._made.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self, homes: int = 2, *, symmetric: bool = True) -> Internet:
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise NetError(f"{tool} is missing: apt-get install iproute2 nftables")
        if os.geteuid() != 0:
            raise NetError("network namespaces need root")
        self._netns(self.inet)
        _run("ip", "-n", self.inet, "addr", "add", f"{INTERNET_IP}/32", "dev", "lo")
        # the internet routes between the homes' routers (and, with watch_for_leaks, out)
        _run("ip", "netns", "exec", self.inet, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for n in range(1, homes + 1):
            self.add_home(n, symmetric=symmetric)
        return self

    def add_home(self, n: int, *, symmetric: bool = True) -> Home:
        nat, home = self._netns(f"vb{self.tag}-nat{n}"), self._netns(f"vb{self.tag}-home{n}")
        up, down = f"vb{self.tag}u{n}", f"vb{self.tag}d{n}"  # ≤ 15 characters
        _run("ip", "link", "add", f"{up}a", "type", "veth", "peer", "name", f"{up}b")
        _run("ip", "link", "set", f"{up}a", "netns", self.inet)
        _run("ip", "link", "set", f"{up}b", "netns", nat)
        _run("ip", "link", "add", f"{down}a", "type", "veth", "peer", "name", f"{down}b")
        _run("ip", "link", "set", f"{down}a", "netns", nat)
        _run("ip", "link", "set", f"{down}b", "netns", home)
        public, private = f"198.18.{n}", f"198.19.{n}"
        for ns, dev, addr in ((self.inet, f"{up}a", f"{public}.1/24"),
                              (nat, f"{up}b", f"{public}.2/24"),
                              (nat, f"{down}a", f"{private}.1/24"),
                              (home, f"{down}b", f"{private}.2/24")):
            _run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", nat, "route", "add", "default", "via", f"{public}.1")
        _run("ip", "-n", home, "route", "add", "default", "via", f"{private}.1")
        _run("ip", "netns", "exec", nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        flags = " random" if symmetric else " persistent"
        # the router: outbound traffic leaves from its public address; nothing comes in that
        # is not the answer to something that went out
        _run("ip", "netns", "exec", nat, "nft", "-f", "-", input=f"""
table ip router {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{up}b" masquerade{flags}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        iifname "{down}a" accept
        ct state established,related accept
    }}
    # nor to the router itself: a packet let in to a port no one listens on would leave a
    # mapping behind that takes the port the home's next outbound packet needs (and hole
    # punching would fail even through a cone NAT)
    chain input {{
        type filter hook input priority filter; policy drop;
        iifname {{ "lo", "{down}a" }} accept
        ct state established,related accept
    }}
}}
""")
        home_ = Home(n, home, nat, f"{private}.2", f"{public}.2")
        self.homes.append(home_)
        return home_

    def watch_for_leaks(self) -> None:
        """Gives the internet a way out — a default route (IPv4 and IPv6) into a link to an
        empty namespace — and counts, then drops, every packet that takes it: anything sent,
        by the internet or by a home through it, to an address outside 198.18.0.0/15 and
        loopback. Without the route such a packet would fail before it was sent, and nothing
        would count it."""
        void, sink = self._netns(f"vb{self.tag}-void"), f"vb{self.tag}sink"
        _run("ip", "link", "add", f"{sink}a", "type", "veth", "peer", "name", f"{sink}b")
        _run("ip", "link", "set", f"{sink}a", "netns", self.inet)
        _run("ip", "link", "set", f"{sink}b", "netns", void)
        _run("ip", "-n", self.inet, "link", "set", f"{sink}a", "up")
        _run("ip", "-n", void, "link", "set", f"{sink}b", "up")
        _run("ip", "-n", self.inet, "route", "add", "default", "dev", f"{sink}a")
        _run("ip", "-n", self.inet, "-6", "route", "add", "default", "dev", f"{sink}a")
        _run("ip", "netns", "exec", self.inet, "nft", "-f", "-", input="""
table inet leaks {
    counter leaked { }
    set to4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags dynamic; }
    set to6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags dynamic; }
    chain out {
        update @to4 { ip saddr . ip daddr . meta l4proto . th dport }
        update @to6 { ip6 saddr . ip6 daddr . meta l4proto . th dport }
        counter name leaked drop
    }
    chain output {
        type filter hook output priority filter; policy accept;
        ip daddr { 127.0.0.0/8, 198.18.0.0/15 } accept
        # the kernel's own link-scoped IPv6 (router solicitations, MLD): never routed
        ip6 daddr { ::1, fe80::/10, ff02::/16 } accept
        goto out
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip daddr 198.18.0.0/15 accept
        goto out
    }
}
""")

    def leaked(self) -> tuple[int, str]:
        """Packets sent out of the internet since ``watch_for_leaks``, and by whom and where
        to (source, destination, protocol, port; ports of TCP and UDP only)."""
        out = _run("ip", "netns", "exec", self.inet, "nft", "list", "counter", "inet",
                   "leaks", "leaked")
        where = " ".join(
            _run("ip", "netns", "exec", self.inet, "nft", "list", "set", "inet", "leaks",
                 name).partition("elements = {")[2].partition("}")[0].replace("\t", "")
            for name in ("to4", "to6"))
        return int(out.split("packets", 1)[1].split()[0]), where

    def move(self, home: Home) -> str:
        """Gives the home's router another public address, as when a phone moves from Wi-Fi
        to mobile data: every connection through the old one is gone (the kernel forgets the
        NAT's mappings of an address that is removed), and nothing tells the home."""
        public = home.nat_ip.rsplit(".", 1)[0]
        new = f"{public}.{int(home.nat_ip.rsplit('.', 1)[1]) + 1}"
        dev = f"vb{self.tag}u{home.index}b"
        _run("ip", "-n", home.nat_ns, "addr", "del", f"{home.nat_ip}/24", "dev", dev)
        _run("ip", "-n", home.nat_ns, "addr", "add", f"{new}/24", "dev", dev)
        _run("ip", "-n", home.nat_ns, "route", "replace", "default", "via", f"{public}.1")
        home.nat_ip = new
        return new

    def exec_args(self, ns: str, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]

    def wrapper(self, ns: str, program: str, directory: Path) -> Path:
        """A script that runs ``program`` inside ``ns`` (for tools that launch a binary
        themselves, like Playwright its browser)."""
        path = directory / f"in-{ns}-{Path(program).name}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {program} "$@"\n')
        path.chmod(0o755)
        return path

    def close(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()



class Deployment:
    """coturn, the server (HTTPS, self-signed) and a provider, inside the internet."""

    def __init__(self, net: Internet, tmp: Path, provider_key: str, *, turn: bool,
                 stun: bool = False, policy: str = "all") -> None:
        self.net, self.tmp, self.procs = net, tmp, []
        self.logs: list[Path] = []
        env = {"VOICEBOT_PROVIDER_KEY": provider_key, "VOICEBOT_AUTO_BOTS": "transcriber",
               "VOICEBOT_TLS_SELF_SIGNED": "1", "VOICEBOT_TLS_NAMES": INTERNET_IP,
               "VOICEBOT_HOST": INTERNET_IP, "VOICEBOT_PORT": str(PORT)}
        if turn or stun:
            turnserver = shutil.which("turnserver")
            assert turnserver, "turnserver is missing: apt-get install coturn"
            self.start("coturn", [turnserver, "-n", f"--listening-ip={INTERNET_IP}",
                                  f"--relay-ip={INTERNET_IP}", "--listening-port=3478",
                                  "--use-auth-secret", f"--static-auth-secret={SECRET}",
                                  "--realm=voicebot.test", "--no-tls", "--no-dtls", "--no-cli",
                                  "--fingerprint", "--min-port=40000", "--max-port=40999",
                                  # the homes' private space, as docs/deploy.md denies RFC
                                  # 1918's: coturn must not even try to send there (the
                                  # internet has no route to it, and a send that fails
                                  # makes coturn close the whole allocation)
                                  "--denied-peer-ip=198.19.0.0-198.19.255.255",
                                  "--simple-log", f"--log-file={tmp / 'turn.log'}",
                                  f"--pidfile={tmp / 'turn.pid'}"])
        if turn:
            env |= {"VOICEBOT_TURN_URLS": f"turn:{INTERNET_IP}:3478?transport=udp",
                    "VOICEBOT_TURN_SECRET": SECRET, "VOICEBOT_ICE_POLICY": policy}
        elif stun:
            env |= {"VOICEBOT_STUN_URLS": f"stun:{INTERNET_IP}:3478"}
        self.start("server", [sys.executable, "-m", "signaling.cli", "serve", "--data-dir",
                              str(tmp / "data")], env)
        self.cert = tmp / "data" / "tls" / "cert.pem"
        self.wait_for_log("server", "serving on https://")
        self.start("provider", [sys.executable, "-m", "signaling.cli", "bots", "--server", URL,
                                "--ca-file", str(self.cert), "--plugin", "transcriber"],
                   {"VOICEBOT_PROVIDER_KEY": provider_key})

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
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

    @asynccontextmanager
    async def browser(self, ns: str, *extra_args: str) -> AsyncIterator[Any]:
        """Chromium inside ``ns``, trusting exactly the server's certificate; its microphone
        plays english_espeak.wav over and over."""
        from .browser import CHROMIUM, chromium
        from .speech import DATA

        args = (f"--ignore-certificate-errors-spki-list={self.spki()}", *extra_args)
        wrapper = self.net.wrapper(ns, CHROMIUM, self.tmp)
        async with chromium(DATA / "english_espeak.wav", executable=wrapper,
                            extra_args=args) as browser:
            yield browser

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def home_page(browser: Any) -> Any:
    """A page that trusts only what the browser was told to (the server's certificate). Its
    console goes to the test's output, which pytest shows when the test fails."""
    page = await (await browser.new_context(ignore_https_errors=False)).new_page()
    started = time.monotonic()
    page.on("console", lambda m: print(f"[page {time.monotonic() - started:6.1f}s] "
                                       f"{m.type}: {m.text}"))
    return page
