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

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

INTERNET_IP = "198.18.0.1"


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
}}
""")
        home_ = Home(n, home, nat, f"{private}.2", f"{public}.2")
        self.homes.append(home_)
        return home_

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

