"""Real server and provider processes, for integration tests and benchmarks.

    server = ServerProcess(tmp_path / "data")
    server.start()                        # returns once /api/health answers
    provider = ProviderProcess(server.url, key="…")
    …
    provider.stop(); server.stop()
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildProcess:
    """A child that a test stops (SIGTERM, then SIGKILL after 10 s) or kills outright."""

    proc: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None


class ServerProcess(ChildProcess):
    """``voicebot serve`` in a child process, for tests that kill and restart it."""

    def __init__(self, data_dir: Path, port: int | None = None, log_path: Path | None = None,
                 **env: str) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        if log_path is None:
            fd, path = tempfile.mkstemp(prefix="voicebot-server-", suffix=".log")
            os.close(fd)
            log_path = Path(path)
        self.log_path = log_path  # appended to by every start: a file, not a pipe nobody reads

    @property
    def url(self) -> str:
        scheme = "https" if self.env.get("VOICEBOT_TLS_SELF_SIGNED") else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 20.0, ca_file: Path | None = None) -> None:
        """Starts it and waits until its health check answers (over https:// trusting
        ``ca_file``, the certificate it makes itself when self-signed)."""
        env = os.environ | self.env
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "signaling.cli", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)], cwd=ROOT, env=env,
                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()[-2000:]}")
            try:
                context = None
                if ca_file is not None:
                    if not ca_file.exists():
                        raise OSError("no certificate yet")
                    context = ssl.create_default_context(cafile=str(ca_file))
                urllib.request.urlopen(self.url + "api/health", timeout=1,
                                       context=context).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not come up")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")



class ProviderProcess(ChildProcess):
    """``voicebot bots`` in a child process."""

    def __init__(self, server_url: str, key: str, capacity: int = 4,
                 name: str = "provider", plugins: tuple[str, ...] = (),
                 media_dirs: tuple[Path, ...] = (), log_level: str = "INFO",
                 extra_args: tuple[str, ...] = (), **env: str) -> None:
        args = [sys.executable, "-m", "signaling.cli", "--log-level", log_level, "bots",
                "--server", server_url, "--capacity", str(capacity), "--name", name, *extra_args]
        for plugin in plugins:
            args += ["--plugin", plugin]
        env = os.environ | env | {"VOICEBOT_PROVIDER_KEY": key}
        if media_dirs:
            env["VOICEBOT_MEDIA_DIRS"] = os.pathsep.join(map(str, media_dirs))
        fd, path = tempfile.mkstemp(prefix=f"voicebot-{name}-", suffix=".log")
        self.log_path = Path(path)
        self._log = os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        code = super().stop()
        self._log.close()
        return code


class RedisServer(ChildProcess):
    """A real ``redis-server`` on a free loopback port, durable as docs/deploy.md says:
    append-only file fsynced on every write, so a restart keeps what was acknowledged."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not come up")
