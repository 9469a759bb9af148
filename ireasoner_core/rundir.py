"""One writer per run directory, and a resume that refuses a changed image pool.

A run directory holds one training history (checkpoints, metrics.jsonl, pool.json). Two trainers
writing it at once interleave their metrics and mix their configs, so the first one holds an
exclusive ``flock`` on ``<run dir>/.lock`` for its whole life; the kernel drops it when the
holder dies, so a crash never leaves a stale lock. The file records who holds it (host, pid,
command) so the refusal can name the other process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig

LOCK_FILE = ".lock"
_SHOWN = 3  # image paths named per side in a pool-changed message


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked; the message names it and says what to do."""


class RunDirBusyError(RunDirError):
    """Another live process is writing this run directory."""


class ConfigChangedError(RunDirError):
    """The checkpoints in a run directory were trained under another configuration."""


class PoolChangedError(RunDirError):
    """A resumed run would continue on a different image pool than its checkpoints were trained on."""


@dataclass(frozen=True)
class ProcessId:
    """A process as other processes can check it later: pid reuse is caught by the start time."""

    host: str
    pid: int
    start: str  # kernel start time in clock ticks since boot ("" where /proc is missing)

    @classmethod
    def current(cls) -> ProcessId:
        return cls(socket.gethostname(), os.getpid(), _start_time(os.getpid()))

    def alive(self) -> bool | None:
        """True/False for a process of this host; None for another host (cannot tell from here)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        return _start_time(self.pid) == self.start

    def token(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    @classmethod
    def from_token(cls, token: str) -> ProcessId | None:
        try:
            host, pid, start = token.rsplit(":", 2)
            return cls(host, int(pid), start)
        except ValueError:
            return None


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22 (starttime), counted after the command name, which may itself hold spaces or ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def run_dir_lock(out: Path) -> Iterator[None]:
    """Hold ``out`` exclusively for this process; RunDirBusyError naming the holder if another has it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"checkpoint.output_dir {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise RunDirBusyError(f"run directory {out} is in use by {_describe_holder(fh.read())}; wait for "
                                  "it to finish, stop it, or use another checkpoint.output_dir") from None
        me = ProcessId.current()
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({**asdict(me), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)[:500]}))
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"process {h['pid']} on {h['host']} (since {h['since']}: {h['command']})"
    except (ValueError, KeyError):
        return "another process (it has not written its name yet)"


def check_resumed_pool(out: Path, resume: bool, images: list[str]) -> None:
    """A run that will resume from a checkpoint must sample the pool its ``pool.json`` recorded."""
    from .checkpoint import latest_checkpoint
    from .data.pool import PoolManifest

    recorded = Path(out) / "pool.json"
    if resume and recorded.is_file() and latest_checkpoint(Path(out) / "checkpoints") is not None:
        check_pool_unchanged(out, PoolManifest.read(recorded).images, list(images))


def check_pool_unchanged(out: Path, recorded: list[str], current: list[str]) -> None:
    """Before resuming: the images of ``pool.json`` (what the checkpoints saw) must be today's pool."""
    if recorded == current:
        return
    gone = [p for p in recorded if p not in set(current)]
    new = [p for p in current if p not in set(recorded)]
    parts = [f"{len(recorded)} images recorded, {len(current)} now"]
    if gone:
        parts.append(f"{len(gone)} no longer in the pool: {_some(gone)}")
    if new:
        parts.append(f"{len(new)} new: {_some(new)}")
    if not gone and not new:
        parts.append("same images in a different order (other seed or pool_size?)")
    raise PoolChangedError(
        f"{out} was trained on a different image pool than the one sampled now ({'; '.join(parts)}); restore the "
        f"image folder, or start over with checkpoint.resume=false or another checkpoint.output_dir")


def _some(paths: list[str]) -> str:
    more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return ", ".join(Path(p).name for p in paths[:_SHOWN]) + more


def config_changed_error(out: Path, old_hash: str, cfg: TrainConfig) -> ConfigChangedError:
    """The refusal to resume under a changed config, naming each changed field (from the run's config.yaml)."""
    from .config import load_config

    changes = "hash " + old_hash + " != " + cfg.hash()
    recorded = Path(out) / "config.yaml"
    if recorded.is_file():
        skip = ("checkpoint.", "progress_bar", "run_name")  # not part of the hash
        try:
            before = {k: v for k, v in load_config(recorded).flat().items() if not k.startswith(skip)}
        except ValueError:
            before = {}
        now = {k: v for k, v in cfg.flat().items() if not k.startswith(skip)}
        diff = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                if before.get(k) != now.get(k)]
        if diff:
            changes = "; ".join(diff)
    return ConfigChangedError(
        f"{out} holds checkpoints of a different configuration ({changes}); use another checkpoint.output_dir, "
        "set checkpoint.resume=false to start over, or checkpoint.resume_changed_config=true to continue these "
        "checkpoints under the new configuration (e.g. to extend schedule.iterations)")
