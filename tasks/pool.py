"""Sample the unlabeled image pool once per (sources, size, seed) and write its manifest.

The cache is the manifest file itself, stored under ``<runs_dir>/pools/<key>/``. The key
hashes the sources' *content listing* (relative path, size and mtime of every file), the pool
size and the seed, so a folder that gained images (the ``retrain`` preset) gets a new pool,
while re-running a sweep on an unchanged folder reuses the manifest without re-scanning the
images. Without sources, synthetic images are generated first (embedded default).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prefect import get_run_logger, task
from pydantic import BaseModel

from ireasoner_core.data.pool import PoolManifest, describe_skipped, sample_pool

SYNTHETIC_DONE = ".complete"


class PoolRef(BaseModel):
    """What downstream tasks need of the pool: where its manifest is and what it hashes to."""

    manifest: str
    data_hash: str
    images: int
    skipped: int
    cached: bool


def sources_fingerprint(sources: list[Path]) -> str:
    """sha256 over every file's relative path, size and mtime in the source folders (no image decoding);
    a broken symbolic link counts by its name, so repairing it makes a new pool. Names are hashed as the
    file system's bytes, so a name that is not UTF-8 hashes too (the scan skips and names it)."""
    h = hashlib.sha256()
    for root in sources:
        h.update(os.fsencode(root))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:  # dangling link or link loop: the scan skips and counts it; so do we
                    h.update(os.fsencode(p.relative_to(root)) + b"\0broken\n")
                    continue
                h.update(os.fsencode(p.relative_to(root)) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def pool_key(sources: list[Path], size: int | None, seed: int) -> str:
    payload = json.dumps({"fp": sources_fingerprint(sources), "size": size, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def synthetic_folder(pools_dir: Path, n: int, seed: int, kinds: list[str] | None = None) -> Path:
    """Generate n synthetic images (of ``kinds``; None = every kind) once into pools_dir (the marker
    file says the folder is complete)."""
    from ireasoner_core.data.synthetic import generate_synthetic

    folder = pools_dir / (f"synthetic-n{n}-seed{seed}" + (f"-{'+'.join(kinds)}" if kinds else ""))
    if not (folder / SYNTHETIC_DONE).is_file():
        generate_synthetic(folder, n, seed=seed, kinds=kinds)
        (folder / SYNTHETIC_DONE).write_text(json.dumps({"n": n, "seed": seed, "kinds": kinds}))
    return folder


def sample_pool_cached(sources: list[Path], size: int | None, seed: int, pools_dir: Path) -> tuple[PoolManifest, Path, bool]:
    """The pool manifest for these sources, size and seed; sampled and written only on a cache miss."""
    key = pool_key(sources, size, seed)
    path = pools_dir / key / "manifest.json"
    if path.is_file():
        return PoolManifest.read(path), path, True
    manifest = sample_pool(sources, size, seed)
    manifest.write(path)
    return manifest, path, False


@task(name="sample-pool", task_run_name="sample-pool")
def sample_image_pool(sources: list[str], size: int | None, seed: int, synthetic_images: int,
                      pools_dir: str, synthetic_kinds: list[str] | None = None) -> PoolRef:
    """Pool task: image folders (or synthetic images) → cached manifest → PoolRef."""
    log = get_run_logger()
    pools = Path(pools_dir)
    roots = [Path(s) for s in sources]
    if not roots:
        roots = [synthetic_folder(pools, synthetic_images, seed, synthetic_kinds)]
        log.info("no image sources given: using %d synthetic images in %s", synthetic_images, roots[0])
    manifest, path, cached = sample_pool_cached(roots, size, seed, pools)
    log.info("pool %s: %d images (%d skipped as unreadable or unusable)%s -> %s", manifest.hash(), len(manifest.images),
             len(manifest.skipped), " [cached]" if cached else "", path)
    if manifest.skipped:
        log.warning("pool: %s", describe_skipped([(s["path"], s["reason"]) for s in manifest.skipped], full_paths=True))
    for note in manifest.notes:
        log.warning("pool: %s", note)
    return PoolRef(manifest=str(path), data_hash=manifest.hash(), images=len(manifest.images),
                   skipped=len(manifest.skipped), cached=cached)
