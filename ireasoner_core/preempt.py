"""Preemption: SIGTERM / SIGINT stop a training at the end of its current iteration, with a checkpoint.

`docker stop` and Kubernetes send SIGTERM, then SIGKILL after a grace period; Ctrl-C sends SIGINT.
The first signal only sets a flag, which the loop reads after each iteration (all ranks agree on it,
so their checkpoint is of one iteration); a second signal exits at once, losing that iteration.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """The training stopped on a signal after writing a checkpoint (or before its first iteration)."""

    def __init__(self, signum: int, checkpoint: Path | None, iteration: int) -> None:
        self.signum, self.checkpoint, self.iteration = signum, checkpoint, iteration
        name = signal.Signals(signum).name
        if checkpoint is not None:
            text = f"interrupted by {name}: checkpoint {checkpoint} written; rerun the same command to resume"
        else:
            text = f"interrupted by {name} before an iteration ran: nothing new to save; rerun the same command to go on"
        super().__init__(text)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a signal: 128 + its number (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + self.signum


class StopRequest:
    """A stop asked of a training, by a signal handler or by the flow that runs it in a thread."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = int(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals(stop: StopRequest, announce: bool = True) -> Iterator[StopRequest]:
    """Route SIGTERM and SIGINT to ``stop`` while inside; a no-op outside the main thread.

    signal.signal only works in the main thread: a training in a Prefect task thread is stopped by
    its flow instead (tasks/train.py), which calls ``stop.request``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.requested:
            if announce:
                print(f"[ireasoner] second {name}: stopping now without a checkpoint of this iteration",
                      file=sys.stderr, flush=True)
            os._exit(128 + signum)      # at once: no unwinding through torch, nothing half-written is COMPLETE
        stop.request(signum)
        if announce:
            print(f"[ireasoner] {name} received: finishing the current iteration and writing a checkpoint "
                  f"(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
