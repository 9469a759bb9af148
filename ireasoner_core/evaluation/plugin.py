"""lmms-eval entry point (``[project.entry-points."lmms_eval.models"] ireasoner``).

lmms-eval 0.7 loads every ``lmms_eval.models`` entry point while it starts and expects a
``ModelManifest`` (not the class). The class lives in ``lmm.py`` and is imported only when the
model is actually requested, so listing models stays fast.
"""

from __future__ import annotations

import sys

from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "ireasoner"  # not a built-in lmms-eval id, so nothing is shadowed
CLASS_PATH = "ireasoner_core.evaluation.lmm.IReasonerLMM"

manifest = ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def _show_in_model_listing() -> None:
    # `lmms-eval models` (0.7.3) prints only its name table AVAILABLE_SIMPLE_MODELS, not the
    # registry that resolves --model, so an entry-point model would run but not be listed.
    # lmms-eval's own (deprecated) plugin loader adds plugin models to that table the same way.
    models = sys.modules.get("lmms_eval.models")
    table = getattr(models, "AVAILABLE_SIMPLE_MODELS", None)
    if isinstance(table, dict):
        table.setdefault(MODEL_ID, CLASS_PATH)


_show_in_model_listing()
