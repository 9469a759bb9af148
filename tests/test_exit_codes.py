"""Every command line fails with a non-zero status and one line naming the file or field, never a
traceback: bad model folders, adapters, report arguments, full disks, file-size limits, read-only
folders (issue 29). Each command runs as a subprocess, as a user or a script meets it; its other
cases go through the same entry point in process, since starting each one (imports) costs 15-40 s
of CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ireasoner_core.data.synthetic import generate_synthetic
from ireasoner_core.evaluation import tasks_include_path
from ireasoner_core.storage import save_torch, writing

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
# One iteration that checkpoints, with few short rollouts: the write fails within seconds of the start.
TINY_TRAIN = ["schedule.iterations=1", "checkpoint.every=1", "sampling.num_rollouts=2", "rewards.min_group=2",
              "sampling.solver_max_new_tokens=8", "sampling.proposer_max_new_tokens=8", "data.synthetic_images=2",
              "progress_bar=false"]


def _run_at_once(cases: dict[str, list[str]], env: dict[str, str],
                 timeout: int = 600) -> dict[str, subprocess.CompletedProcess]:
    """Start every case, then wait for all (their start-up overlaps): argv per name -> its completed process."""
    procs = {name: subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, argv in cases.items()}
    done = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=timeout)
        done[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return done


def _assert_one_line_error(proc: subprocess.CompletedProcess, prefix: str, *parts: str) -> str:
    """Non-zero exit, no traceback, and exactly one line starting with ``prefix`` that holds every part."""
    err = proc.stderr
    assert proc.returncode not in (0, None), f"exit 0:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _train(out: Path, *sets: str) -> list[str]:
    argv = [sys.executable, "-m", "ireasoner_core.cli", "train", "--config", "configs/tiny.yaml", "--output-dir", str(out)]
    for s in [*TINY_TRAIN, *sets]:
        argv += ["--set", s]
    return argv


def _under_file_size_limit(kib: int, argv: list[str]) -> list[str]:
    """``argv`` under ``ulimit -f`` (KiB); SIGXFSZ ignored, else the kernel kills it instead of failing the write."""
    return ["bash", "-c", f'trap "" XFSZ; ulimit -f {kib}; exec "$@"', "bash", *argv]


def _make_unwritable(folder: Path) -> Callable[[], None]:
    """Make ``folder`` refuse new files for this process; returns the undo."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    # chmod does not bind root; the immutable attribute does (CAP_LINUX_IMMUTABLE, which root has here).
    subprocess.run(["chattr", "+i", str(folder)], check=True)
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.slow
def test_train_on_a_read_only_folder_or_over_a_file_size_limit_is_a_one_line_error(tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    undo = _make_unwritable(read_only)
    try:
        procs = _run_at_once({
            "read_only": _train(read_only / "run"),
            # 8 KiB: config, pool and images fit; the first checkpoint file (rng, 14 kB) does not, and
            # torch alone said "RuntimeError: [enforce fail at inline_container.cc:671] . unexpected pos".
            "file_too_large": _under_file_size_limit(8, _train(tmp_path / "run")),
        }, env={**os.environ, **OFFLINE})
    finally:
        undo()
    reason = "Permission denied" if os.geteuid() != 0 else "Operation not permitted"
    _assert_one_line_error(procs["read_only"], "error: ", str(read_only / "run"), reason)
    assert procs["read_only"].returncode == 2
    line = _assert_one_line_error(procs["file_too_large"], "error: ", str(tmp_path / "run" / "checkpoints"),
                                  "rng-rank0.pt: File too large")
    assert procs["file_too_large"].returncode == 2
    assert "inline_container" not in procs["file_too_large"].stderr, line


@pytest.mark.parametrize("case", ["no_weights", "truncated_weights"])
def test_train_with_a_model_folder_without_whole_weights_is_a_one_line_error(case, tmp_path, capsys,
                                                                             embedded_model_dir):
    """Checked through `ireasoner train`'s main (its return value is the exit status), in process:
    the subprocess path is the one the storage test above takes."""
    from ireasoner_core.cli import main

    model = shutil.copytree(embedded_model_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    if case == "no_weights":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    images = tmp_path / "images"   # a model other than 'embedded' needs an image folder
    generate_synthetic(images, 2, seed=0)
    argv = ["train", "--config", "configs/tiny.yaml", "--output-dir", str(tmp_path / "run"),
            "--set", f"model.name_or_path={model}", "--set", f"data.image_dir={images}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    expected = (f"error: model.name_or_path: {model} has no weights" if case == "no_weights"
                else f"error: model.name_or_path: {weights} is truncated or corrupt")
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [err.strip().splitlines()[-1]]
    assert expected in err and "Traceback" not in err, err


def test_a_failed_checkpoint_write_names_the_file_and_the_reason(tmp_path):
    """ENOSPC: /dev/full fails every write as a full disk does; torch alone would say 'unexpected pos'."""
    full = Path("/dev/full")
    with pytest.raises(OSError, match="No space left on device") as err:
        save_torch({"w": torch.zeros(100_000)}, full)
    assert err.value.filename == str(full)
    # safetensors writes a temporary file and renames it (never aim it at /dev/full): its error, as seen
    # under `ulimit -f`, carries only the OS code, which becomes an OSError naming the folder.
    from safetensors import SafetensorError

    with pytest.raises(OSError, match="File too large") as err, writing(tmp_path / "adapters"):
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")
    assert (err.value.errno, err.value.filename) == (27, str(tmp_path / "adapters"))


@pytest.mark.slow
def test_report_refuses_bad_resamples_and_a_missing_store_without_creating_it(tmp_path, capsys):
    typo = tmp_path / "typo" / "dir" / "mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "ireasoner_core.cli", "report", "--tracking-uri", f"sqlite:///{typo}",
                           "--out-dir", str(tmp_path / "report")], cwd=REPO, env={**os.environ, **OFFLINE},
                          capture_output=True, text=True, timeout=600, check=False)
    _assert_one_line_error(proc, "ireasoner report: ", f"the MLflow store sqlite:///{typo} does not exist")
    assert proc.returncode == 2
    assert not (tmp_path / "typo").exists()   # MLflow used to create the folder and an empty store
    # The same entry point in process (its return value is the exit status).
    from ireasoner_core.cli import main

    assert main(["report", "--resamples", "0", "--tracking-uri", f"sqlite:///{tmp_path / 'any.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "ireasoner report: --resamples must be at least 1 (paired bootstrap resamples), got 0"
    assert not (tmp_path / "any.db").exists()


def _adapter_variants(root: Path) -> dict[str, Path]:
    """A fresh solver adapter, truncated and reshaped as if trained on a wider base model."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    from ireasoner_core.config import LoRAConfig, ModelConfig
    from ireasoner_core.model import load_backbone
    from ireasoner_core.policy import lora_target_regex

    base, _ = load_backbone(ModelConfig(), "cpu")
    get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=lora_target_regex(LoRAConfig()))
                   ).save_pretrained(str(root / "fresh"))
    out = {}
    for name in ("truncated", "other_base"):
        out[name] = shutil.copytree(root / "fresh", root / name)
    data = (root / "fresh" / "adapter_model.safetensors").read_bytes()
    (out["truncated"] / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    tensors = load_file(str(root / "fresh" / "adapter_model.safetensors"))
    save_file({k: torch.zeros(v.shape[0], v.shape[1] + 8) for k, v in tensors.items()},
              str(out["other_base"] / "adapter_model.safetensors"))
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_lmms_eval_exits_non_zero_naming_a_truncated_or_misfitting_adapter(tmp_path, embedded_model_dir):
    from ireasoner_core.evaluation.lmm import IReasonerLMM

    adapters = _adapter_variants(tmp_path)
    weights = {name: path / "adapter_model.safetensors" for name, path in adapters.items()}
    env = {**os.environ, **OFFLINE, "IREASONER_EVAL_CACHE": str(tmp_path / "eval-cache")}
    proc = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "ireasoner", "--model_args",
                           f"pretrained=embedded,adapter={adapters['truncated']}", "--tasks", "ireasoner_chartqa_mini",
                           "--include_path", str(tasks_include_path()), "--limit", "1", "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    _assert_one_line_error(proc, "ireasoner: ", f"adapter: {weights['truncated']} is truncated or corrupt")
    assert "Error during evaluation" not in proc.stderr   # lmms-eval's catch-all, which exited 0
    # The other adapter through the same door lmms-eval uses (a SystemExit passes its `except Exception`).
    with pytest.raises(SystemExit) as stop:
        IReasonerLMM.create_from_arg_string(f"pretrained=embedded,adapter={adapters['other_base']}", {"device": "cpu"})
    message = str(stop.value.code)
    assert message.startswith(f"ireasoner: adapter: {weights['other_base']} does not fit the model embedded")
    assert "size mismatch" in message and "\n" not in message
