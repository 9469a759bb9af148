"""lmms-eval entry point (``[project.entry-points."lmms_eval.models"] ireasoner``).

lmms-eval 0.7 loads every ``lmms_eval.models`` entry point while it starts and expects a
``ModelManifest`` (not the class). The class lives in ``lmm.py`` and is imported only when the
model is actually requested, so listing models stays fast.
"""

from __future__ import annotations

from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "ireasoner"  # not a built-in lmms-eval id, so nothing is shadowed

manifest = ModelManifest(model_id=MODEL_ID, simple_class_path="ireasoner_core.evaluation.lmm.IReasonerLMM")
