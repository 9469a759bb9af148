"""Real 2-process data-parallel training on CPU (accelerate launch, gloo).

`--multi_gpu` is accelerate's torchrun launcher; on a machine without GPUs the trainer asks
accelerate for CPU processes, which then form a gloo group (`--cpu` would need MPI)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_training_ends_with_identical_changed_adapters(tmp_path, embedded_model_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(HERE / "dist_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for role in ("solver", "proposer"):
        a0, a1, b0 = r0["after"][role], r1["after"][role], r0["before"][role]
        assert a0.keys() == a1.keys() and a0
        assert all(torch.equal(a0[k], a1[k]) for k in a0), f"{role} adapters differ across processes"
        assert all(torch.equal(b0[k], r1["before"][role][k]) for k in b0), "initialisation differs"
        assert any(not torch.equal(a0[k], b0[k]) for k in a0), f"{role} adapter did not train"
    assert r0["baselines"] == r1["baselines"] and r0["betas"] == r1["betas"]
    # Each process took different images: the pool order is split by rank.
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3
