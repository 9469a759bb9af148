"""The training concurrency limit follows each spec's resources.max_parallel_training (smoke asks 1, the
mini sweep 2) unless someone set it by hand, in the UI or with `prefect gcl update`: that value is kept.

Before, the first spec to run fixed the limit for good, so `mini` after the README's smoke run trained
one variant at a time and ran twice as long as documented. A real (temporary) Prefect server.
"""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _limit() -> int:
    from tasks.train import TRAINING_LIMIT

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(TRAINING_LIMIT).limit


def test_the_limit_follows_specs_but_keeps_a_value_set_by_hand(harness):
    from flows.ireasoner import ensure_training_limit
    from tasks.train import TRAINING_LIMIT

    ensure_training_limit(1)            # smoke: created
    assert _limit() == 1
    ensure_training_limit(2)            # mini afterwards: two trainings at once, as it asks
    assert _limit() == 2
    ensure_training_limit(1)
    assert _limit() == 1
    with get_client(sync_client=True) as client:   # an operator caps it by hand
        client.upsert_global_concurrency_limit_by_name(TRAINING_LIMIT, 3)
    ensure_training_limit(2)
    assert _limit() == 3
    ensure_training_limit(3)            # a spec asking what is there changes nothing
    ensure_training_limit(1)
    assert _limit() == 3
