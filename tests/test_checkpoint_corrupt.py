"""A corrupt newest checkpoint is set aside and the run resumes from the previous one (issue 29, item 2).

One tiny run writes checkpoints 1 and 2 (``checkpoint.every=1``); each case corrupts a copy of
checkpoint 2 as a power loss or bit rot would, and resumes. ``legacy`` cases rewrite ``COMPLETE``
without checksums, as checkpoints written before them are, so the loaders' own errors are what
catches the damage there.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from ireasoner_core import checkpoint as ckpt

FAST = {"schedule.iterations": 2, "checkpoint.every": 1, "checkpoint.keep_last": 2,
        "sampling.solver_max_new_tokens": 8, "sampling.proposer_max_new_tokens": 8}
ADAPTER = "adapters/solver/adapter_model.safetensors"


IMAGES: list[Path] = []   # one synthetic image folder for all runs: a copied run must find its pool.json's paths


def _sets(out: Path) -> dict:
    return tiny_overrides(out, **FAST, **{"data.image_dir": str(IMAGES[0])})


def _cfg(out: Path):
    from ireasoner_core.config import build_config

    return build_config({}, _sets(out))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, embedded_model_dir) -> Path:
    """A finished 2-iteration run with complete checkpoints 1 and 2 (never modified by a test)."""
    from ireasoner_core.data.synthetic import generate_synthetic
    from ireasoner_core.trainer import train

    IMAGES[:] = [tmp_path_factory.mktemp("images")]
    generate_synthetic(IMAGES[0], 8, seed=0)
    out = tmp_path_factory.mktemp("pristine") / "run"
    train(_cfg(out))
    assert [p.name for p in ckpt.complete_checkpoints(out / "checkpoints")] == ["iter-000001", "iter-000002"]
    return out


def _copy(pristine: Path, tmp_path: Path, legacy: bool = False) -> Path:
    out = tmp_path / "run"
    shutil.copytree(pristine, out)
    if legacy:   # a checkpoint written before COMPLETE recorded checksums
        for path in ckpt.complete_checkpoints(out / "checkpoints"):
            (path / ckpt.COMPLETE).write_text(json.dumps({"iteration": ckpt.checkpoint_iteration(path)}))
    return out


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _empty(file: Path) -> None:
    file.write_bytes(b"")


def _flip_tensor_bytes(file: Path) -> None:
    """Flip bytes inside the tensor data (past the header): the file still parses."""
    data = bytearray(file.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(header + 3, len(data), 4):        # the high byte of each float32: huge or non-finite values
        data[i] ^= 0x7F
    file.write_bytes(bytes(data))


CASES: list[tuple[str, str, Callable[[Path], None], bool, str]] = [
    # (id, file in the checkpoint, damage, legacy marker, what the warning says about the reason)
    ("truncated-state", "trainer_state.pt", _truncate, False, "sha256 differs"),
    ("empty-state", "trainer_state.pt", _empty, False, "sha256 differs"),
    ("empty-rng", "rng-rank0.pt", _empty, False, "sha256 differs"),
    ("truncated-adapter", ADAPTER, _truncate, False, "sha256 differs"),
    ("flipped-adapter-bytes", ADAPTER, _flip_tensor_bytes, False, "sha256 differs"),
    ("legacy-truncated-state", "trainer_state.pt", _truncate, True, "PytorchStreamReader failed reading zip archive"),
    ("legacy-empty-state", "trainer_state.pt", _empty, True, "EOFError: Ran out of input"),
    ("legacy-empty-rng", "rng-rank0.pt", _empty, True, "EOFError: Ran out of input"),
    ("legacy-truncated-adapter", ADAPTER, _truncate, True, "SafetensorError"),
]


@pytest.mark.parametrize("name, rel, damage, legacy, reason", CASES, ids=[c[0] for c in CASES])
def test_a_corrupt_newest_checkpoint_is_set_aside_naming_the_file_and_the_previous_one_resumes(
        pristine, tmp_path, name, rel, damage, legacy, reason):
    from ireasoner_core.trainer import Trainer

    out = _copy(pristine, tmp_path, legacy)
    damage(out / "checkpoints" / "iter-000002" / rel)
    trainer = Trainer(_cfg(out))
    with pytest.warns(RuntimeWarning, match="cannot be loaded") as caught:
        assert trainer._resume() == 1
    (line,) = [str(w.message) for w in caught if "cannot be loaded" in str(w.message)]
    assert "\n" not in line
    assert f"iter-000002/{rel}" in line and reason in line and "set aside as iter-000002.corrupt-1" in line, line
    root = out / "checkpoints"
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["iter-000001"]
    assert (root / "iter-000002.corrupt-1" / rel).is_file()          # set aside, never deleted
    assert [json.loads(r)["iteration"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_an_intact_checkpoint_without_checksums_still_resumes(pristine, tmp_path):
    from ireasoner_core.trainer import Trainer

    out = _copy(pristine, tmp_path, legacy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert Trainer(_cfg(out))._resume() == 2
    assert ckpt.set_aside_checkpoints(out / "checkpoints") == []


def test_a_run_resumed_past_a_corrupt_checkpoint_repeats_the_uninterrupted_run(pristine, tmp_path):
    from ireasoner_core.trainer import train

    out = _copy(pristine, tmp_path)
    _flip_tensor_bytes(out / "checkpoints" / "iter-000002" / ADAPTER)
    with pytest.warns(RuntimeWarning, match="iter-000002/adapters/solver/adapter_model.safetensors"):
        result = train(_cfg(out))
    assert result.start_iteration == 1

    def rows(run: Path) -> list[str]:   # json.dumps: NaN == NaN; timings differ between runs
        return [json.dumps({k: v for k, v in json.loads(r).items() if not k.startswith("seconds")}, sort_keys=True)
                for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows(out) == rows(pristine)
    for role in ("solver", "proposer"):
        a = load_file(pristine / "final" / role / "adapter_model.safetensors")
        b = load_file(out / "final" / role / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role
    # the next save, its pruning and the leftover removal of this run kept the set-aside copy
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "iter-000001", "iter-000002", "iter-000002.corrupt-1"]


def test_with_no_loadable_checkpoint_left_train_says_so_in_one_line(pristine, tmp_path, capsys):
    from ireasoner_core import cli

    out = _copy(pristine, tmp_path)
    for i in (1, 2):
        _empty(out / "checkpoints" / f"iter-00000{i}" / "trainer_state.pt")
    argv = ["train", "--config", str(Path(__file__).parents[1] / "configs" / "tiny.yaml")]
    for k, v in _sets(out).items():
        argv += ["--set", f"{k}={v}"]
    for attempt in (1, 2):   # the rerun (a Prefect retry) refuses too: starting over is the user's call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert cli.main(argv) == 2
        stderr = capsys.readouterr().err
        err = [line for line in stderr.splitlines() if line.startswith("error: ")]   # not the weight-loading bar
        assert len(err) == 1 and "Traceback" not in stderr, stderr
        assert "no checkpoint can be loaded" in err[0] and "iter-000001.corrupt-1, iter-000002.corrupt-1" in err[0]
        assert "checkpoint.resume=false" in err[0]
    assert (out / "metrics.jsonl").is_file()     # nothing of the old run was thrown away


def test_finalize_fsyncs_every_file_before_marking_it_complete(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    partial = ckpt.new_partial_dir(root, 3)
    (partial / "adapters" / "solver").mkdir(parents=True)
    for rel in ("trainer_state.pt", "rng-rank0.pt", "adapters/solver/adapter_model.safetensors"):
        (partial / rel).write_bytes(os.urandom(64))
    synced: list[tuple[str, bool]] = []     # (file, was COMPLETE there yet)
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (partial / ckpt.COMPLETE).exists()))
        real(fd)
    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    final = ckpt.finalize(partial, 3, keep_last=2)
    before = {Path(p).relative_to(partial).as_posix() for p, marked in synced
              if not marked and Path(p).is_relative_to(partial) and Path(p) != partial}
    assert {"trainer_state.pt", "rng-rank0.pt", "adapters/solver/adapter_model.safetensors"} <= before
    assert (str(partial / ckpt.COMPLETE), True) in synced
    sums = json.loads((final / ckpt.COMPLETE).read_text())["sha256"]
    assert sorted(sums) == ["adapters/solver/adapter_model.safetensors", "rng-rank0.pt", "trainer_state.pt"]
    ckpt.verify(final)
    (final / "rng-rank0.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"rng-rank0\.pt: sha256 differs"):
        ckpt.verify(final)


def test_set_aside_checkpoints_survive_saves_pruning_and_leftover_removal(tmp_path):
    out = tmp_path / "run"
    root = out / "checkpoints"
    for i in (1, 2):
        ckpt.finalize(ckpt.new_partial_dir(root, i), i, keep_last=2)
    first = ckpt.set_aside(root / "iter-000002")
    ckpt.finalize(ckpt.new_partial_dir(root, 2), 2, keep_last=2)
    second = ckpt.set_aside(root / "iter-000002")
    assert (first.name, second.name) == ("iter-000002.corrupt-1", "iter-000002.corrupt-2")
    for i in (3, 4, 5):
        ckpt.finalize(ckpt.new_partial_dir(root, i), i, keep_last=2)
    ckpt.remove_leftovers(out, keep_last=2)
    assert [p.name for p in ckpt.complete_checkpoints(root)] == ["iter-000004", "iter-000005"]
    assert ckpt.set_aside_checkpoints(root) == [first, second]
