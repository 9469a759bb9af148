"""`--params '{"changes": {...}}'` edits a deployment's preset without dropping the rest of its spec.

Prefect merges run parameters into the deployment's at the top level only, so
`--params '{"spec": {...}}'` replaces the whole preset (evaluation tasks and baseline gone);
``changes`` is a second flow parameter merged into ``spec`` field by field. The end-to-end path
(`prefect deployment run ireasoner/smoke --params '{"changes": ...}'` through a server and a
worker) is exercised by tests/test_compose_postgres.py.
"""

from __future__ import annotations

import pytest

from flows.ireasoner import ireasoner, with_changes
from flows.presets import PRESETS
from flows.spec import ExperimentSpec


def test_changes_keep_the_rest_of_the_preset():
    smoke = ExperimentSpec.model_validate(PRESETS["smoke"])
    changed = with_changes(smoke, {"iterations": 2, "overrides": {"checkpoint.every": 1},
                                   "evaluation": {"limit": 3}, "images": {"synthetic_images": 4}})
    assert changed.iterations == 2 and changed.evaluation.limit == 3 and changed.images.synthetic_images == 4
    # Untouched: the variants (baseline kept), the benchmarks, the base config, the other overrides.
    assert [v.name for v in changed.variant_specs()] == ["baseline", "full"]
    assert changed.evaluation.tasks == smoke.evaluation.tasks and len(changed.evaluation.tasks) == 3
    assert changed.base_config == "configs/tiny.yaml"
    assert changed.overrides == {"checkpoint.every": 1, "log_diagnostics_every": 1}
    # A list is replaced, not appended to.
    assert [v.name for v in with_changes(smoke, {"variants": ["soft_only"]}).variant_specs()] == ["soft_only"]


def test_changes_are_validated_and_unknown_fields_named():
    smoke = ExperimentSpec.model_validate(PRESETS["smoke"])
    with pytest.raises(ValueError, match=r"unknown spec fields \['iteratons'\]"):
        with_changes(smoke, {"iteratons": 2})
    with pytest.raises(ValueError, match="iterations"):
        with_changes(smoke, {"iterations": -1})


def test_the_flow_takes_changes_beside_the_spec():
    params = ireasoner.validate_parameters({"spec": PRESETS["smoke"], "changes": {"iterations": 2}})
    assert params["changes"] == {"iterations": 2} and isinstance(params["spec"], ExperimentSpec)
