"""Preemption below the CLI: the trainer stopped by its caller (a flow running it in a thread), and a
flow's SIGTERM passed on to its variants, in-process or as training subprocesses.

The CLI's SIGTERM, with its resume bit-identical to an uninterrupted run, is in tests/test_resume.py.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from ireasoner_core import checkpoint as ckpt
from ireasoner_core.preempt import StopRequest, TrainingInterrupted, stop_on_signals
from tasks import train as train_task

REPO = Path(__file__).resolve().parents[1]

# A stand-in trainer: the real signal handling, an "iteration" that only ends when told, the CLI's last line.
FAKE_TRAINER = """
import sys, time
from pathlib import Path
from ireasoner_core.preempt import StopRequest, TrainingInterrupted, stop_on_signals
out = Path(sys.argv[1])
with stop_on_signals(StopRequest()) as stop:
    out.joinpath("metrics.jsonl").write_text('{"iteration": 1}\\n')
    deadline = time.monotonic() + 20
    while not stop.requested:
        if time.monotonic() > deadline:
            sys.exit(0)              # never signalled: ends as a finished training would
        time.sleep(0.02)
    out.joinpath("ckpt").write_text("1")
    err = TrainingInterrupted(stop.signum, out / "ckpt", 1)
print(f"error: {err}", flush=True)
sys.exit(err.exit_code)
"""


class _Sink:
    """MlflowTrainLogger's two calls, recorded."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_iteration(self, record: dict) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass


@pytest.mark.slow
def test_a_stop_from_the_caller_checkpoints_the_current_iteration(tiny_cfg):
    from ireasoner_core.callbacks import TrainerCallback
    from ireasoner_core.trainer import train

    stop = StopRequest()

    class StopAfterFirst(TrainerCallback):
        def on_iteration(self, record: dict) -> None:     # as a flow's handler does, from outside the loop
            stop.request(signal.SIGTERM)

    cfg = tiny_cfg(**{"checkpoint.every": 100, "schedule.iterations": 3})
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, callbacks=[StopAfterFirst()], stop=stop)
    out = Path(cfg.checkpoint.output_dir)
    assert [ckpt.checkpoint_iteration(p) for p in ckpt.complete_checkpoints(out / "checkpoints")] == [1]
    assert info.value.checkpoint == ckpt.latest_checkpoint(out / "checkpoints") and info.value.exit_code == 143
    assert str(info.value) == (f"interrupted by SIGTERM: checkpoint {info.value.checkpoint} written; "
                               "rerun the same command to resume")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (out / "result.json").exists()


def test_the_signal_handlers_are_installed_only_in_the_main_thread_and_restored():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(StopRequest(), announce=False) as stop:
        assert signal.getsignal(signal.SIGTERM) is not before
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM               # a flag, not an exit
    assert signal.getsignal(signal.SIGTERM) is before

    seen = []

    def in_thread() -> None:
        with stop_on_signals(StopRequest()):
            seen.append(signal.getsignal(signal.SIGTERM))
    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == [before]


def test_a_flows_sigterm_stops_its_variants_and_a_second_goes_to_the_previous_handler():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    try:
        running = StopRequest()
        with train_task.variants_stop_on_sigterm(), train_task._stoppable(running):
            os.kill(os.getpid(), signal.SIGTERM)
            assert running.signum == signal.SIGTERM and calls == []         # an in-process training stops
            with train_task._stoppable(StopRequest()) as late:              # one starting later stops at once
                assert late.requested
            with pytest.raises(train_task.VariantInterrupted, match="training of full-s0 not started: the flow "
                                                                     "received SIGTERM"):
                train_task.check_not_preempted("training of full-s0")
            assert not train_task._retry_unless_preempted(None, None, None)  # and no Prefect retry
            os.kill(os.getpid(), signal.SIGTERM)
            assert calls == [signal.SIGTERM]        # the second: Prefect's handler (the flow crashes at once)
        assert signal.getsignal(signal.SIGTERM) is not None
    finally:
        signal.signal(signal.SIGTERM, previous)
        train_task.PREEMPTION.signum = None


def test_a_flows_sigterm_reaches_its_training_subprocess_which_checkpoints(tmp_path):
    cmd = [sys.executable, "-c", FAKE_TRAINER, str(tmp_path)]
    sink = _Sink()
    log = logging.getLogger("test-preemption")

    def flow_gets_sigterm() -> None:
        while not (tmp_path / "metrics.jsonl").exists():
            threading.Event().wait(0.02)
        train_task.PREEMPTION.request(signal.SIGTERM)      # what the flow's handler does

    threading.Thread(target=flow_gets_sigterm, daemon=True).start()
    try:
        with pytest.raises(train_task.VariantInterrupted) as info:
            train_task.run_subprocess_training(cmd, {**os.environ, "PYTHONPATH": str(REPO)}, tmp_path / "metrics.jsonl",
                                               sink, log, poll_seconds=0.05)
    finally:
        train_task.PREEMPTION.signum = None
    assert str(info.value) == (f"interrupted by SIGTERM: checkpoint {tmp_path / 'ckpt'} written; "
                               "rerun the same command to resume")
    assert (tmp_path / "ckpt").read_text() == "1" and sink.records == [{"iteration": 1}]
