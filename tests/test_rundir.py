"""A run directory has one writer, and a resume refuses a pool that changed since its checkpoints.

Real trainer processes (``ireasoner train``) and the real trainer; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ireasoner_core.rundir import (
    LOCK_FILE,
    ConfigChangedError,
    PoolChangedError,
    ProcessId,
    run_dir_lock,
)

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _train_cmd(out: Path, iterations: int, **extra) -> list[str]:
    sys.path.insert(0, str(HERE))
    from conftest import tiny_overrides

    cmd = [sys.executable, "-m", "ireasoner_core.cli", "train", "--config", str(HERE.parent / "configs" / "tiny.yaml")]
    for k, v in tiny_overrides(out, **{"schedule.iterations": iterations, **extra}).items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


@pytest.mark.slow
def test_a_second_trainer_on_a_busy_run_directory_refuses_naming_it_and_the_holder(tmp_path, embedded_model_dir):
    out = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(out, 50), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not ((out / LOCK_FILE).is_file() and (out / LOCK_FILE).read_text()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run(_train_cmd(out, 50), check=False, env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    msg = second.stderr
    assert f"run directory {out} is in use by process {first.pid} on " in msg
    assert "Traceback" not in msg


def test_the_lock_is_released_when_its_holder_dies_and_names_a_live_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ireasoner_core.rundir import run_dir_lock\n"
        f"with run_dir_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    from ireasoner_core.rundir import RunDirBusyError

    with pytest.raises(RunDirBusyError, match=f"process {holder.pid} on "), run_dir_lock(out):
        pass
    holder.kill()
    holder.wait()
    with run_dir_lock(out):  # the kernel dropped the dead holder's lock: no stale lock
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_process_id_tells_a_dead_process_from_a_live_one():
    me = ProcessId.current()
    assert me.alive() is True
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert ProcessId(me.host, p.pid, me.start).alive() is False
    assert ProcessId(me.host, me.pid, me.start + "0").alive() is False  # pid reused by another process
    assert ProcessId("another-host", 1, "1").alive() is None
    assert ProcessId.from_token(me.token()) == me


@pytest.mark.slow
def test_resume_names_a_changed_config_or_image_folder_and_can_extend_a_run(tmp_path, embedded_model_dir):
    from ireasoner_core.config import build_config
    from ireasoner_core.data.synthetic import generate_synthetic
    from ireasoner_core.trainer import train

    sys.path.insert(0, str(HERE))
    from conftest import tiny_overrides

    images = tmp_path / "images"
    generate_synthetic(images, 6, seed=0)
    cfg = build_config({}, tiny_overrides(tmp_path / "run", **{"schedule.iterations": 2, "data.image_dir": str(images),
                                                                "log_diagnostics_every": 100}))
    train(cfg)
    # Extending a finished run: refused naming the field, and continued when asked to.
    longer = build_config({}, {**cfg.flat(), "schedule.iterations": 3})
    with pytest.raises(ConfigChangedError, match="schedule.iterations: 2 -> 3.*resume_changed_config=true"):
        train(longer)
    extended = train(build_config({}, {**longer.flat(), "checkpoint.resume_changed_config": True}))
    assert (extended.start_iteration, extended.iterations) == (2, 3)
    (tmp_path / "run" / "final.partial-4242").mkdir()  # a crash leftover, cleared by the next start
    pngs = sorted(images.glob("*.png"))
    pngs[0].unlink()
    shutil.copy(pngs[1], images / "zz-new.png")
    with pytest.raises(PoolChangedError) as err:
        train(longer)
    msg = str(err.value)
    assert str(tmp_path / "run") in msg and pngs[0].name in msg and "zz-new.png" in msg
    # pool.json still records the pool the checkpoints were trained on.
    recorded = json.loads((tmp_path / "run" / "pool.json").read_text())["images"]
    assert str(pngs[0]) in recorded
    assert not (tmp_path / "run" / "final.partial-4242").exists()
