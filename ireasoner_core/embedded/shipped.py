"""The shipped embedded model: one set of weights for every machine, checked by sha256.

The model path ``embedded`` loads ``ireasoner_core/embedded/weights/``, a copy committed with
the code. Building it again would give another model on another machine (CPU kernels and thread
counts change the floats, and 1,050 training steps amplify the change), so nothing builds on a
user's first run: a build is for those who change the recipe, and ``ireasoner replace-embedded``
is the one explicit way to put a new build here. ``MANIFEST.json`` lists the sha256 of every
file; a mismatch, a missing file or an unlisted file is refused naming the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST_FILE = "MANIFEST.json"
BUILD_FILE = "BUILD.json"
# Everything a loader reads: weights, config, tokenizer, processor, chat template, build record.
SHIPPED_FILES = (
    "BUILD.json", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
    "processor_config.json", "tokenizer.json", "tokenizer_config.json",
)
MAX_SHIPPED_BYTES = 25 * 1024 * 1024
# (path, size, mtime_ns) of each directory already verified by this process: hashing 8 MB per
# load is cheap, but a sweep loads the model dozens of times.
_VERIFIED: dict[Path, tuple] = {}


class EmbeddedIntegrityError(RuntimeError):
    """The shipped embedded model is not what its manifest says; the message names the file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(model_dir: Path) -> dict:
    """Record the sha256 of every model file (all but the manifest itself) in MANIFEST.json."""
    model_dir = Path(model_dir)
    files = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    build = json.loads((model_dir / BUILD_FILE).read_text())
    manifest = {"build_version": build["build_version"],
                "files": {name: sha256_file(model_dir / name) for name in files}}
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _stamp(model_dir: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_dir.iterdir() if p.is_file()))


def verify(model_dir: Path) -> Path:
    """Check every file of ``model_dir`` against MANIFEST.json; raise naming the first that differs."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise EmbeddedIntegrityError(f"embedded model: {manifest_path} is missing; the shipped copy is incomplete "
                                     "(restore it with `git checkout -- ireasoner_core/embedded/weights`)")
    stamp = _stamp(model_dir)
    if _VERIFIED.get(model_dir) == stamp:
        return model_dir
    try:
        listed: dict[str, str] = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise EmbeddedIntegrityError(f"embedded model: {manifest_path} is not a valid manifest: {err}") from None
    for name, want in sorted(listed.items()):
        path = model_dir / name
        if not path.is_file():
            raise EmbeddedIntegrityError(f"embedded model: {path} is missing (listed in {MANIFEST_FILE})")
        got = sha256_file(path)
        if got != want:
            raise EmbeddedIntegrityError(
                f"embedded model: {path} has sha256 {got[:16]}…, {MANIFEST_FILE} says {want[:16]}…; the file was "
                "changed (restore it with `git checkout -- ireasoner_core/embedded/weights`, or replace the whole "
                "copy with `ireasoner replace-embedded BUILD_DIR`)")
    extra = sorted({p.name for p in model_dir.iterdir() if p.is_file()} - set(listed) - {MANIFEST_FILE})
    if extra:
        raise EmbeddedIntegrityError(f"embedded model: {model_dir / extra[0]} is not in {MANIFEST_FILE}")
    _VERIFIED[model_dir] = stamp
    return model_dir


def shipped_model_dir() -> Path:
    """The directory that the model path ``embedded`` names, verified against its manifest."""
    return verify(SHIPPED_DIR)


def replace_shipped(build_dir: Path, *, target: Path = SHIPPED_DIR, force: bool = False) -> dict:
    """Copy a complete build into ``target`` with a new manifest; refuse a same-recipe replacement
    unless ``force`` (git keeps every committed copy, so weights change only with the recipe)."""
    build_dir = Path(build_dir)
    missing = [n for n in SHIPPED_FILES if not (build_dir / n).is_file()]
    if missing:
        raise EmbeddedIntegrityError(f"replace-embedded: {build_dir / missing[0]} is missing; not a complete build")
    new = json.loads((build_dir / BUILD_FILE).read_text())
    size = sum((build_dir / n).stat().st_size for n in SHIPPED_FILES)
    if size > MAX_SHIPPED_BYTES:
        raise EmbeddedIntegrityError(f"replace-embedded: {build_dir} holds {size / 2**20:.1f} MiB, more than the "
                                     f"{MAX_SHIPPED_BYTES / 2**20:.0f} MiB a shipped model may take")
    old_build = Path(target) / BUILD_FILE
    if old_build.is_file() and not force:
        old = json.loads(old_build.read_text())
        if old.get("recipe_version") == new.get("recipe_version"):
            raise EmbeddedIntegrityError(
                f"replace-embedded: {build_dir} has the shipped recipe {new.get('recipe_version')}; weights are "
                "replaced only when the recipe changes (pass --force to replace anyway)")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".weights-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the shipped copy is read by everyone
    for name in SHIPPED_FILES:
        shutil.copy2(build_dir / name, staging / name)
    manifest = write_manifest(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    _VERIFIED.pop(target, None)
    return manifest


# Keys of BUILD.json that name the weights and the recipe: a measurement recorded later never rewrites them.
_IDENTITY_KEYS = ("build_version", "recipe_version", "architecture", "parameters", "seed", "warm_start")


def record_in_build(model_dir: Path, key: str, value) -> dict:
    """Add one measurement to a build's BUILD.json under ``key`` and rewrite MANIFEST.json to match.

    The weights and every other file stay as they are (the build version names the weights, so it
    does not change); the directory is verified against its manifest first, so a file changed by
    hand is refused rather than blessed by the new manifest. BUILD.json is replaced atomically."""
    model_dir = Path(model_dir)
    if key in _IDENTITY_KEYS:
        raise EmbeddedIntegrityError(f"embedded model: {key!r} names the build; a later measurement cannot rewrite it")
    verify(model_dir)
    path = model_dir / BUILD_FILE
    build = json.loads(path.read_text())
    build[key] = value
    tmp = path.with_name(BUILD_FILE + ".tmp")
    tmp.write_text(json.dumps(build, indent=2, sort_keys=True))  # as build.py writes it
    tmp.replace(path)
    manifest = write_manifest(model_dir)
    _VERIFIED.pop(model_dir, None)
    verify(model_dir)
    return manifest
