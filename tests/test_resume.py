"""Crash and resume: a killed run restarts from its newest complete checkpoint and continues the
same trajectory as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ireasoner_core import checkpoint as ckpt

HERE = Path(__file__).parent
# lambda first: a warm-up counted from the resume, not the global iteration, is named as the cause
KEYS = ["lambda", "r_ans_mean", "r_step_mean", "r_sol_mean", "loss_solver", "kl_solver", "loss_proposer",
        "answer_entropy", "group_size", "baseline_solver", "beta_solver"]


def _cmd(out: Path, iterations: int, every: int = 2) -> list[str]:
    sys.path.insert(0, str(HERE))
    from conftest import tiny_overrides

    sets = tiny_overrides(out, **{"schedule.iterations": iterations, "checkpoint.every": every})
    cmd = [sys.executable, "-m", "ireasoner_core.cli", "train", "--config", str(HERE.parent / "configs" / "tiny.yaml")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def _rows(path: Path) -> dict[int, dict]:
    return {r["iteration"]: r for r in map(json.loads, path.read_text().splitlines())}


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, embedded_model_dir) -> Path:
    """One uninterrupted 6-iteration run, the reference of every interrupted one here."""
    full = tmp_path_factory.mktemp("uninterrupted") / "full"
    subprocess.run(_cmd(full, 6), env=ENV, check=True, capture_output=True, timeout=900)
    return full


@pytest.mark.slow
def test_killed_run_resumes_and_matches_uninterrupted(tmp_path, uninterrupted):
    full, crashed = uninterrupted, tmp_path / "crashed"

    proc = subprocess.Popen(_cmd(crashed, 6), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = crashed / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:      # kill once iteration 3 is logged: past checkpoint 2, before 4
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = ckpt.latest_checkpoint(crashed / "checkpoints")
    assert latest is not None
    k = ckpt.checkpoint_iteration(latest)
    assert 2 <= k < 6

    subprocess.run(_cmd(crashed, 6), env=ENV, check=True, capture_output=True, timeout=900)
    result = json.loads((crashed / "result.json").read_text())
    assert result["start_iteration"] == k and result["iterations"] == 6
    a, b = _rows(full / "metrics.jsonl"), _rows(crashed / "metrics.jsonl")
    assert sorted(b) == list(range(1, 7))          # one history: no duplicated or missing iterations
    for t in range(k + 1, 7):
        for key in KEYS:
            assert a[t][key] == b[t][key], (t, key, a[t][key], b[t][key])
        assert a[t]["answers"] == b[t]["answers"] and a[t]["question"] == b[t]["question"]


def _same_adapters(a: Path, b: Path) -> None:
    """Both runs' final adapters hold bit-identical tensors."""
    from safetensors.torch import load_file

    for role in ("solver", "proposer"):
        x, y = (load_file(str(d / "final" / role / "adapter_model.safetensors")) for d in (a, b))
        assert sorted(x) == sorted(y) and all(x[k].equal(y[k]) for k in x), role


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> int:
    deadline = time.time() + 600
    while time.time() < deadline:
        lines = len(path.read_text().splitlines()) if path.exists() else 0
        if lines >= n:
            return lines
        assert proc.poll() is None, "the training ended before it was signalled"
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.slow
def test_sigterm_mid_iteration_checkpoints_it_and_the_resume_matches_uninterrupted(tmp_path, uninterrupted):
    # checkpoint.every=100: the only checkpoint is the one the signal makes
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(_cmd(stopped, 6, every=100), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_lines(stopped / "metrics.jsonl", 2, proc)
    time.sleep(0.3)     # past iteration 2's stop check even on a loaded machine: iteration seen + 1 is under way
    seen = _wait_for_lines(stopped / "metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-3000:]
    latest = ckpt.latest_checkpoint(stopped / "checkpoints")
    assert latest is not None and ckpt.checkpoint_iteration(latest) == seen + 1, (latest, seen)
    assert err.strip().splitlines()[-1] == (f"error: interrupted by SIGTERM: checkpoint {latest} written; "
                                            "rerun the same command to resume")
    assert "Traceback" not in err
    assert len(_rows(stopped / "metrics.jsonl")) == seen + 1      # it stopped after that iteration

    resumed = subprocess.run(_cmd(stopped, 6, every=100), check=False, env=ENV, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((stopped / "result.json").read_text())
    assert result["start_iteration"] == seen + 1
    a, b = _rows(uninterrupted / "metrics.jsonl"), _rows(stopped / "metrics.jsonl")
    assert sorted(b) == list(range(1, 7))
    for t in range(1, 7):
        for key in KEYS:
            assert a[t][key] == b[t][key], (t, key, a[t][key], b[t][key])
        assert a[t]["answers"] == b[t]["answers"] and a[t]["question"] == b[t]["question"]
    _same_adapters(uninterrupted, stopped)


@pytest.mark.slow
def test_a_second_signal_stops_at_once_without_a_checkpoint(tmp_path, embedded_model_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, 6, every=100), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_lines(out / "metrics.jsonl", 1, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    first = ""
    while "SIGINT received" not in first:     # the handler ran: the next signal is a second one
        first = proc.stderr.readline()
        assert first, "the trainer never acknowledged the first SIGINT"
    proc.send_signal(signal.SIGINT)
    err = first + proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err[-3000:]
    assert "second SIGINT: stopping now" in err and "Traceback" not in err
    assert ckpt.latest_checkpoint(out / "checkpoints") is None      # the iteration under way was given up


def test_partial_checkpoints_are_never_loaded(tmp_path):
    root = tmp_path / "checkpoints"
    good = ckpt.finalize(ckpt.new_partial_dir(root, 2), 2, keep_last=2)
    (root / "iter-000004.partial-dead").mkdir()            # a crash mid-save
    (root / "iter-000006").mkdir()                         # renamed but no marker (never happens, still ignored)
    assert ckpt.latest_checkpoint(root) == good
    ckpt.finalize(ckpt.new_partial_dir(root, 8), 8, keep_last=2)
    assert not (root / "iter-000004.partial-dead").exists()      # the next save cleans partials up
    for i in (10, 12):
        ckpt.finalize(ckpt.new_partial_dir(root, i), i, keep_last=2)
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["iter-000010", "iter-000012"]


def test_crash_leftovers_are_removed_before_a_run_starts(tmp_path):
    out = tmp_path / "run"
    root = out / "checkpoints"
    for i in (3, 4, 5):                                    # a kill during pruning kept 3 > keep_last=2
        ckpt.finalize(ckpt.new_partial_dir(root, i), i, keep_last=5)
    (out / "final.partial-4242" / "solver").mkdir(parents=True)   # a kill while saving the final adapters
    (root / "iter-000001").mkdir()                          # half deleted: the marker went first
    (root / "iter-000001" / "trainer_state.pt").write_text("x")
    (root / "iter-000002.partial-dead").mkdir()             # a kill mid-save
    (out / "final").mkdir()                                 # what a finished run keeps is left alone
    removed = ckpt.remove_leftovers(out, keep_last=2)
    assert sorted(p.name for p in removed) == ["final.partial-4242", "iter-000001", "iter-000002.partial-dead",
                                              "iter-000003"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "final"]
    assert sorted(p.name for p in root.iterdir()) == ["iter-000004", "iter-000005"]


def test_pruning_never_leaves_a_half_deleted_checkpoint_that_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for i in (1, 2):
        ckpt.finalize(ckpt.new_partial_dir(root, i), i, keep_last=2)
    real_rmtree = ckpt.shutil.rmtree

    def killed_mid_delete(path, *a, **k):                  # the process dies inside the first deletion
        raise KeyboardInterrupt
    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        ckpt.finalize(ckpt.new_partial_dir(root, 3), 3, keep_last=2)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    # The checkpoint being pruned was first renamed out of the iter-XXXXXX namespace.
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["iter-000002", "iter-000003"]
    assert ckpt.remove_leftovers(tmp_path, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["iter-000002", "iter-000003"]
