"""How the trainer reports: a small callback interface, a JSONL writer and a progress bar.

The orchestration layer (tasks/) implements its MLflow logger as one more callback; the core
never imports it. Only the main process calls callbacks.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig
    from .trainer import TrainResult


COMPLETIONS_KEY = "completions"
"""Record key of an iteration's generations (every ``log_completions_every`` iterations, else absent)."""


class TrainerCallback:
    """Override what you need; every hook is a no-op here."""

    def on_train_start(self, cfg: "TrainConfig", start_iteration: int) -> None: ...

    def on_iteration(self, record: dict[str, Any]) -> None:
        """One global iteration's signals (the metrics.jsonl record). Every ``log_completions_every``
        iterations ``record["completions"]`` also holds its generations, one plain dict per Solver
        rollout (``completion_rows``): the record is also what a subprocess's metrics.jsonl carries
        to a callback in another process, so the generations travel the same way."""

    def on_checkpoint(self, path: Path, iteration: int) -> None: ...

    def on_train_end(self, result: "TrainResult") -> None: ...


def completion_rows(iteration: int, image_paths: Sequence[str], questions: Sequence[str], texts: Sequence[str],
                    parsed: Sequence[Any], by_image: Sequence[Sequence[int]], rewards: Sequence[Any],
                    proposer_rewards: Sequence[float]) -> list[dict[str, Any]]:
    """One iteration's generations as table rows, one per Solver rollout of this process's images.

    ``texts``/``parsed`` are the flat rollouts, ``by_image[i]`` the rows of image i, ``rewards[i]``
    its ``rewards.SolverRewards`` (per-rollout r_ans, r_step, r_sol, the dominant group) and
    ``proposer_rewards[i]`` the Proposer's reward for its question.
    """
    rows = []
    for i, rollouts in enumerate(by_image):
        sr = rewards[i]
        for j, r in enumerate(rollouts):
            rows.append({
                "iteration": iteration, "image": Path(image_paths[i]).name, "question": questions[i],
                "rollout": j, "completion": texts[r], "answer": parsed[r].answer,
                "dominant": j in sr.group, "r_ans": _jsonable(float(sr.r_ans[j])),
                "r_step": _jsonable(float(sr.r_step[j])), "r_sol": _jsonable(float(sr.r_sol[j])),
                "answer_entropy": _jsonable(float(sr.entropy)),
                "proposer_reward": _jsonable(float(proposer_rewards[i])),
            })
    return rows


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None     # JSON has no NaN; null reads back unambiguously
    return v


class JsonlLogger(TrainerCallback):
    """One JSON object per iteration, flushed and fsynced so a killed run keeps every finished line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, iteration: int) -> None:
        """On resume: drop records past the checkpoint, so the file shows one history.

        A torn line (a kill during a write) is dropped too: it belongs to an iteration past the
        last one that finished writing, and ``read_jsonl`` would skip it anyway.
        """
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("iteration", 0) <= iteration:
                keep.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def on_iteration(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a metrics/diagnostics JSONL file (a torn last line from a crash is ignored)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class ProgressBar(TrainerCallback):
    """tqdm bar over global iterations with the signals a researcher watches."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def on_train_start(self, cfg: "TrainConfig", start_iteration: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=start_iteration, desc=f"train {cfg.ablation}", unit="it",
                        dynamic_ncols=True)

    def on_iteration(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        self.bar.set_postfix(r_sol=f"{record['r_sol_mean']:.3f}", H=f"{record['answer_entropy']:.2f}",
                             G=f"{record['group_size']:.1f}", kl=f"{record['kl_solver']:.2e}", refresh=False)

    def on_train_end(self, result: "TrainResult") -> None:
        if self.bar is not None:
            self.bar.close()
