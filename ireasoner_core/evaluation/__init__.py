"""Benchmark evaluation through lmms-eval: the ``ireasoner`` model plugin, offline mini-benchmarks
for the embedded default (task YAMLs shipped in ``tasks/``), and ``run_evaluation``.

Importing this package is cheap (no torch, no lmms-eval): lmms-eval itself imports
``plugin`` through its entry point while it starts up.
"""

from __future__ import annotations

from pathlib import Path

from .benchmarks import BENCHMARKS, MINI_TASKS, TABLE1_TASKS, Benchmark


def tasks_include_path() -> Path:
    """The folder to pass to lmms-eval's ``--include_path`` for the mini tasks."""
    return Path(__file__).resolve().parent / "tasks"


__all__ = ["BENCHMARKS", "MINI_TASKS", "TABLE1_TASKS", "Benchmark", "tasks_include_path"]
