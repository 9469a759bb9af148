"""``ireasoner benchmarks fetch [TASK...]``: download the table-1 datasets into the Hugging Face
cache on a machine with network, so that workers can evaluate offline (``HF_HUB_OFFLINE=1``)
from the same cache (``HF_HOME``).

Each task is loaded the way the evaluation will load it, through lmms-eval's own task loader
(same dataset path, configuration, revision and split), so what lands in the cache is exactly
what an offline evaluation later finds there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from .benchmarks import MINI_TASKS, TABLE1_TASKS

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class FetchError(ValueError):
    """A task name cannot be fetched; the message names it."""


def go_online() -> None:
    """Turn the Hugging Face offline switches off for this process (fetching is the one online step)."""
    for var in _OFFLINE_VARS:
        os.environ[var] = "0"
    # Both libraries read the switches once at import; a caller that imported them first is covered too.
    for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        mod = sys.modules.get(module)
        for name in names:
            if mod is not None and hasattr(mod, name):
                setattr(mod, name, False)


def load_with_lmms_eval(task: str) -> None:
    """Build the task with lmms-eval's loader, which downloads its dataset into the cache."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    # MathVista's and MathVerse's modules build an OpenAI client when imported, even though
    # fetching never calls it; a placeholder key lets the module load (an existing key is kept).
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-ireasoner-benchmarks-fetch")
    get_task_dict([task], TaskManager(verbosity="WARNING"))


def fetch_benchmarks(tasks: Sequence[str] = (), load: Callable[[str], None] = load_with_lmms_eval) -> dict[str, str]:
    """Fetch ``tasks`` (default: the eight of paper table 1); returns task -> "ok" or the error."""
    tasks = list(tasks) or list(TABLE1_TASKS)
    for task in tasks:
        if task in MINI_TASKS:
            raise FetchError(f"task {task!r} is a mini benchmark: it is built locally on first use, nothing to fetch")
    go_online()
    outcome: dict[str, str] = {}
    for task in dict.fromkeys(tasks):
        try:
            load(task)
            outcome[task] = "ok"
        except Exception as err:  # one unreachable dataset must not stop the others
            outcome[task] = f"{type(err).__name__}: {err}"
    return outcome


def main(tasks: Sequence[str]) -> int:
    """CLI body: fetch, print one line per task, exit 1 when any failed."""
    try:
        outcome = fetch_benchmarks(tasks)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for task, status in outcome.items():
        print(f"{task}: {'fetched' if status == 'ok' else 'FAILED - ' + status}")
    failed = [t for t, s in outcome.items() if s != "ok"]
    if failed:
        print(f"{len(failed)} of {len(outcome)} task(s) not fetched: {', '.join(failed)} (gated datasets need "
              "`huggingface-cli login` or HF_TOKEN)", file=sys.stderr)
        return 1
    return 0
