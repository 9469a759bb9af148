"""Schedules that fire: a switched-on schedule gets flow runs from Prefect's scheduler service.

Against the real stack of test_orchestration_integration (a `prefect server start` on 127.0.0.1
with a temporary SQLite database, `bash deployments/register.sh`, a process worker on
`ireasoner-pool`). Nobody here creates a flow run: every run checked is made by the server's
scheduler service, from a schedule that is switched on.

This is why requirements.lock pins SQLAlchemy 2.0: with Prefect 3.8.8 on SQLAlchemy 2.1 the
scheduler's bulk insert of flow runs fails on every loop ("Can't evaluate bulk DML statement;
please supply a bulk_dml decorated function": the rows carry a `state` key that is a hybrid
property of FlowRun, which 2.1's ORM bulk INSERT hands to the hybrid instead of ignoring), so a
switched-on schedule never produced a run and both tests here time out.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

import pytest

# The server, deployments and worker are conftest's `stack` (its scheduler looks every 5 s).
from test_orchestration_integration import _wait_final

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Every wait is bounded; the scheduler looks every 5 s (conftest's stack), the worker every 10 s.
WAIT_S = 150
_TICK_FLOW = """from prefect import flow


@flow(name="tick")
def tick() -> int:
    return 1
"""


def _client(st):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: st["env"]["PREFECT_API_URL"]}):
        return get_client(sync_client=True)


def _runs_of(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _by_scheduler(run, schedule_id) -> bool:
    """Made by the scheduler service from this schedule (not by `deployment run` or the API)."""
    return (run.auto_scheduled and run.created_by is not None and run.created_by.type == "SCHEDULE"
            and run.created_by.id == schedule_id and (run.idempotency_key or "").startswith("scheduled "))


def _poll(what: str, find, st, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(2)
    log = (st["tmp"] / "server.log").read_text()
    errors = [line for line in log.splitlines() if "Error" in line or "ERROR" in line][-10:]
    raise AssertionError(f"{what} not within {timeout} s; server log errors:\n" + "\n".join(errors))


def _assert_scheduler_healthy(st) -> None:
    """No failed loop of the scheduler service (schedule_deployments, schedule_recent_deployments)."""
    log = (st["tmp"] / "server.log").read_text()
    failed = [line for line in log.splitlines() if "ERROR" in line and "schedule_" in line]
    assert failed == [] and "Can't evaluate bulk DML" not in log, failed[-3:]


def test_a_schedule_due_soon_gets_a_run_from_the_scheduler_that_the_worker_completes(stack, tmp_path):
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    (tmp_path / "tick_flow.py").write_text(_TICK_FLOW)
    # Hourly, anchored 40 s from now: one run due soon, the next ones an hour apart.
    due = datetime.now(UTC) + timedelta(seconds=40)
    with _client(stack) as client:
        dep_id = client.create_deployment(
            flow_id=client.create_flow_from_name("tick"), name="due-soon", entrypoint="tick_flow.py:tick",
            work_pool_name="ireasoner-pool",
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}}],
            schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(hours=1),
                                                                          anchor_date=due), active=True)])
        (sched,) = client.read_deployment_schedules(dep_id)
        try:
            first = _poll("a scheduled run of the due-soon schedule", lambda: [
                r for r in _runs_of(client, dep_id)
                if _by_scheduler(r, sched.id) and abs((r.expected_start_time - due).total_seconds()) < 1], stack)
            run = first[0]
            fr, _ = _wait_final(stack, run.id, timeout=WAIT_S)
            assert fr.state.is_completed(), f"{fr.state}\n{stack['worker_log'].read_text()[-3000:]}"
            history = [s.type.value for s in client.read_flow_run_states(run.id)]
            assert history[0] == "SCHEDULED" and history[-1] == "COMPLETED", history
            # Only the scheduler made runs of this deployment.
            assert all(_by_scheduler(r, sched.id) for r in _runs_of(client, dep_id))
        finally:
            client.update_deployment_schedule(dep_id, sched.id, active=False)  # drops its future runs
            client.delete_deployment(dep_id)
    _assert_scheduler_healthy(stack)


def test_switching_retrain_on_fills_its_upcoming_runs(stack):
    """The UI's switch (PATCH the deployment schedule's `active`), then its Upcoming tab: runs in
    state Scheduled, in the future, made by the scheduler service from retrain's weekly cron."""
    with _client(stack) as client:
        dep = client.read_deployment_by_name("ireasoner/retrain")
        (sched,) = client.read_deployment_schedules(dep.id)
        assert sched.active is False and _runs_of(client, dep.id) == []  # registered off, as prefect.yaml says
        client.update_deployment_schedule(dep.id, sched.id, active=True)
        try:
            def upcoming():
                now = datetime.now(UTC)
                runs = [r for r in _runs_of(client, dep.id) if r.state and r.state.is_scheduled()
                        and r.expected_start_time > now and _by_scheduler(r, sched.id)]
                return runs if len(runs) >= 3 else None  # Prefect schedules at least 3 ahead

            runs = _poll("retrain's upcoming runs after switching it on", upcoming, stack)
            # The preset's cron, 0 3 * * 1 UTC: Mondays at 03:00, one week apart.
            starts = sorted(r.expected_start_time.astimezone(UTC) for r in runs)
            assert all((s.weekday(), s.hour, s.minute) == (0, 3, 0) for s in starts), starts
            assert all(b - a == timedelta(weeks=1) for a, b in itertools.pairwise(starts)), starts
            assert all(r.parameters == dep.parameters for r in runs)  # the preset's spec, unchanged
        finally:
            client.update_deployment_schedule(dep.id, sched.id, active=False)  # drops its future runs
            for run in _runs_of(client, dep.id):
                client.delete_flow_run(run.id)
    _assert_scheduler_healthy(stack)
