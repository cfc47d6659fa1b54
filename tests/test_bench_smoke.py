"""Every benchmark runs in smoke mode here, so none of them can rot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from signaling.testing import ROOT


def run_bench(module: str, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([sys.executable, "-m", module, "--smoke", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.timeout(400)
def test_transcribe_bench_smoke() -> None:
    out = run_bench("bench.transcribe")
    for heading in ("offline WER", "live WER", "TTFS p50", "speakers", "against the targets"):
        assert heading in out


@pytest.mark.timeout(400)
def test_fuzz_smoke() -> None:
    out = run_bench("bench.fuzz")
    assert "PASS" in out and "mismatches 0" in out


@pytest.mark.timeout(400)
def test_relay_smoke() -> None:
    out = run_bench("bench.relay")
    for line in ("ours", "bare aiohttp", "python-socketio", "ours / bare aiohttp", "fan-out"):
        assert line in out
