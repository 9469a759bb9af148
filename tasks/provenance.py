"""What a run was made from: code commit, dependency lock, repository paths.

These hashes are the identity used to skip a variant that already finished (idempotent
re-runs), so they must not depend on where the repository is checked out.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = REPO_ROOT / "requirements.lock"
SOURCE_DIRS = ("ireasoner_core", "flows", "tasks", "configs")
SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".jinja")


def code_hash(repo: Path = REPO_ROOT) -> str:
    """Git commit of the code, with '-dirty' when tracked files differ from it ('nogit' outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    return commit + ("-dirty" if dirty else "")


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes ('missing' when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_hash() -> str:
    """sha256 of requirements.lock: the exact dependency set a run used."""
    return file_hash(LOCK_FILE)


def source_hash(repo: Path = REPO_ROOT) -> str:
    """sha256 (16 hex) of what decides what a variant computes: every source file of
    ireasoner_core/, flows/, tasks/ and configs/, and requirements.lock, read from disk.

    Unlike the commit, it ignores commits that touch only docs or tests, and it does see
    uncommitted edits; it also works where there is no .git (a container image). A finished
    variant is skipped only when this hash matches.
    """
    h = hashlib.sha256()
    for d in SOURCE_DIRS:
        root = repo / d
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(repo)).encode() + b"\0" + p.read_bytes() + b"\0")
    lock = repo / LOCK_FILE.name
    if lock.is_file():
        h.update(b"requirements.lock\0" + lock.read_bytes())
    return h.hexdigest()[:16]
