"""Atomic checkpoint directories.

A checkpoint is written into ``iter-XXXXXX.partial-<nonce>/`` and renamed to ``iter-XXXXXX/``
only after every file, including the ``COMPLETE`` marker, is on disk. A crash leaves at most a
``.partial`` directory, which ``latest_checkpoint`` never returns and the next save removes.
Pruning renames a checkpoint to ``.deleting-<nonce>`` before deleting it, so a kill mid-delete
never leaves a half-deleted ``iter-XXXXXX``; ``remove_leftovers`` clears what kills leave.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

COMPLETE = "COMPLETE"
_NAME = re.compile(r"^iter-(\d{6})$")


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
    """Mark complete, rename into place, prune old complete checkpoints."""
    (partial / COMPLETE).write_text(json.dumps({"iteration": iteration}))
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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
