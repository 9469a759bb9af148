"""Paper tables (1-3, with paired bootstrap intervals and seed spread) and figures (3, 5, 6, 7).

Pure functions over plain data: no MLflow here (tasks/reporting.py reads MLflow and calls these).
"""

from .bootstrap import BootstrapCI, SeedSummary, paired_bootstrap, summarize_seeds
from .figures import depth_profile, history_from_records, training_figures
from .tables import Cell, Table, VariantRun, build_table, paper_tables

__all__ = [
    "BootstrapCI",
    "Cell",
    "SeedSummary",
    "Table",
    "VariantRun",
    "build_table",
    "depth_profile",
    "history_from_records",
    "paired_bootstrap",
    "paper_tables",
    "summarize_seeds",
    "training_figures",
]
