"""Atomic checkpoint directories.

A checkpoint is written into ``iter-XXXXXX.partial-<nonce>/`` and renamed to ``iter-XXXXXX/``
only after every file, including the ``COMPLETE`` marker, is on disk. A crash leaves at most a
``.partial`` directory, which ``latest_checkpoint`` never returns and the next save removes.
Pruning renames a checkpoint to ``.deleting-<nonce>`` before deleting it, so a kill mid-delete
never leaves a half-deleted ``iter-XXXXXX``; ``remove_leftovers`` clears what kills leave.

Every file's contents are fsynced before ``COMPLETE`` is written, and ``COMPLETE`` records each
file's sha256, so a power loss or bit rot after the rename is found at load (``verify``) rather
than as NaNs iterations later. A checkpoint that fails to load is set aside as
``iter-XXXXXX.corrupt-<n>`` (kept for inspection, outside the namespace that loading, pruning
and leftover removal look at) and the run resumes from the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from .rundir import RunDirError

COMPLETE = "COMPLETE"
_NAME = re.compile(r"^iter-(\d{6})$")
_CORRUPT = re.compile(r"^iter-\d{6}\.corrupt-\d+$")


class CheckpointError(RunDirError):
    """A checkpoint whose files cannot be loaded; the message names the file and the reason."""


def checkpoint_name(iteration: int) -> str:
    return f"iter-{iteration:06d}"


def new_partial_dir(root: Path, iteration: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    path = root / f"{checkpoint_name(iteration)}.partial-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def finalize(partial: Path, iteration: int, keep_last: int) -> Path:
    """Fsync every file, mark complete with per-file sha256, rename into place, prune old ones."""
    files = sorted(p for p in partial.rglob("*") if p.is_file() and p.name != COMPLETE)
    sums = {}
    for path in files:
        sums[path.relative_to(partial).as_posix()] = _sha256(path)
        _fsync_file(path)
    # a rename is only as durable as the contents it points to: without these, a power loss can leave
    # 0-byte files in a directory that already says COMPLETE
    for folder in sorted({p.parent for p in files}, key=lambda d: len(d.parts), reverse=True):
        _fsync_dir(folder)
    marker = partial / COMPLETE
    marker.write_text(json.dumps({"iteration": iteration, "sha256": sums}))
    _fsync_file(marker)
    _fsync_dir(partial)
    final = partial.parent / checkpoint_name(iteration)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync_dir(final.parent)
    _prune(final.parent, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> list[Path]:
    old = complete_checkpoints(root)[:-keep_last]
    for path in old:
        _delete(path)
    return old


def _delete(path: Path) -> None:
    """Rename out of the checkpoint namespace first (atomic), then delete at leisure."""
    doomed = path.with_name(f"{path.name}.deleting-{uuid.uuid4().hex[:8]}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(out: Path, keep_last: int) -> list[Path]:
    """What killed runs leave in a run directory: partial final adapters, partial or half-deleted
    checkpoints, and complete ones beyond ``keep_last``. Call only while holding the run directory."""
    out, root = Path(out), Path(out) / "checkpoints"
    removed = [p for p in out.glob("final.partial-*")]
    if root.is_dir():
        removed += [p for p in root.iterdir() if p.is_dir() and (".partial-" in p.name or ".deleting-" in p.name
                    or (_NAME.match(p.name) and not (p / COMPLETE).is_file()))]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed + _prune(root, keep_last)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; directories without the marker are ignored."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def checkpoint_iteration(path: Path) -> int:
    return json.loads((path / COMPLETE).read_text())["iteration"]


def verify(path: Path) -> None:
    """Raise CheckpointError naming the first file whose sha256 is not the one ``COMPLETE`` recorded.

    Checkpoints written before checksums were recorded have none to check and pass.
    """
    marker = path / COMPLETE
    try:
        sums = json.loads(marker.read_text()).get("sha256", {})
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{marker}: unreadable ({err})") from None
    for rel, expected in sums.items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (listed in {COMPLETE})")
        if _sha256(file) != expected:
            raise CheckpointError(f"{file}: sha256 differs from the one recorded when it was written "
                                  f"({file.stat().st_size} bytes now)")


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that failed to load to ``<name>.corrupt-<n>``: out of use, never deleted."""
    n = 1
    while (target := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    os.replace(path, target)
    _fsync_dir(path.parent)
    return target


def set_aside_checkpoints(root: Path) -> list[Path]:
    """Checkpoints earlier loads set aside as corrupt, by name."""
    return sorted(p for p in root.iterdir() if _CORRUPT.match(p.name)) if root.is_dir() else []


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
