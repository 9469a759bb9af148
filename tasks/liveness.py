"""What a killed flow process leaves behind on its machine, found and released by the next flow.

A SIGKILLed process runs no cleanup. In Prefect's local (ephemeral) mode that leaves three things:

- its ``ireasoner-training`` slot: Prefect gives slots back when their lease expires, but only a
  real server runs the lease reaper (the Repossessor); the killed process's ephemeral server kept
  the lease in memory, so no one ever frees the slot and every later run waits forever;
- its MLflow parent and child runs, RUNNING forever;
- its ephemeral Prefect server process, orphaned.

Each holder therefore writes a small ledger entry (``$PREFECT_HOME/ireasoner-holders/``) naming
itself by host, pid and process start time; the next flow on the machine checks those processes
and releases what the dead ones held. Nothing here touches a holder of another machine: against a
real server its lease simply expires.

A wait for a slot is never silent: every ``WAIT_LOG_SECONDS`` it logs what waits and who holds
the slots. Waiting for a live holder is what the limit is for (``max_parallel_training: 1`` makes a
training wait for the baseline's evaluation), so that is INFO. WARNING is kept for a holder whose
process is gone: one of this machine that died (its slot is given back, and that is said), or, in
local mode, taken slots that no live process is recorded as holding, twice running; only then is
the by-hand release (``FREE_BY_HAND``) suggested, since following it while the holder lives would
break the limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from ireasoner_core.locks import file_lock
from ireasoner_core.rundir import ProcessId, _start_time
from tasks.conventions import TAG_FLOW_RUN_ID
from tasks.runs import finish_run

TAG_PROCESS = "ireasoner.process"  # host:pid:start of the process that drives the run
WAIT_LOG_SECONDS = 30.0
FREE_BY_HAND = "`prefect gcl update {name} --active-slots 0` frees slots that no live process holds"
# Timed-out waits in a row with taken slots and no live recorded holder before that is a WARNING: a
# holder records itself just after it acquires, so one such reading may be a holder that just started.
UNEXPLAINED_WAITS = 2


def _ledger() -> Path:
    from prefect.settings import get_current_settings

    path = Path(get_current_settings().home).expanduser() / "ireasoner-holders"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ephemeral() -> bool:
    """Local mode: no PREFECT_API_URL, so each flow process starts its own temporary server."""
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url


def _entries(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(_ledger().glob(f"{kind}-*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # being written or removed right now
    return out


def _write(kind: str, entry: dict[str, Any]) -> Path:
    path = _ledger() / f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"process": ProcessId.current().token(), "since": time.time(), **entry}))
    os.replace(tmp, path)
    return path


def _dead(entry: dict[str, Any]) -> bool:
    pid = ProcessId.from_token(entry.get("process", ""))
    return pid is not None and pid.alive() is False


def release_slots_of_dead_processes(log: Any) -> int:
    """Give back the concurrency slots that processes of this machine held when they died."""
    from prefect.client.orchestration import get_client

    released = 0
    with file_lock(_ledger() / ".lock"):  # two reclaimers must not give back one slot twice
        for path, entry in _entries("slot"):
            if not _dead(entry):
                continue
            if not _ephemeral():  # a real server's Repossessor frees it when its lease expires
                path.unlink(missing_ok=True)
                log.warning("process %s (%s), which held %s slot(s) of concurrency limit %r, died; the server "
                            "gives them back when their lease expires", entry["process"], entry.get("what", "?"),
                            entry["slots"], entry["limit"])
                continue
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots([entry["limit"]], int(entry["slots"]),
                                                 occupancy_seconds=max(0.0, time.time() - entry["since"]))
            path.unlink(missing_ok=True)
            released += 1
            log.warning("gave back %s slot(s) of concurrency limit %r held by process %s (%s), which died",
                        entry["slots"], entry["limit"], entry["process"], entry.get("what", "?"))
    return released


def _live_holders(limit: str) -> list[dict[str, Any]]:
    """Ledger entries of this machine for ``limit`` whose process is alive (or of another host: cannot tell)."""
    return [e for _, e in _entries("slot") if e.get("limit") == limit and not _dead(e)]


def _holders(held: list[dict[str, Any]]) -> str:
    if not held:
        return "no live holder recorded on this machine"
    return "; ".join(f"{e.get('what', '?')} in process {e['process']} since {time.strftime('%H:%M:%S', time.localtime(e['since']))}"
                     for e in held)


def _occupancy(limit: str) -> tuple[int, int] | None:
    """(taken, limit) slots of the concurrency limit right now; None when unknown."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            gcl = client.read_global_concurrency_limit_by_name(limit)
        return int(gcl.active_slots), int(gcl.limit)
    except (ObjectNotFound, Exception):  # noqa: BLE001 - the message is best effort, the wait goes on
        return None


class _ExpectedSlotTimeout(logging.Filter):
    """Drops Prefect's ERROR record for a slot wait that timed out: concurrency_slot times out on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("ConcurrencySlotAcquisition" in msg and "TimeoutError" in msg)


_SLOT_TIMEOUT_FILTER = _ExpectedSlotTimeout()


class _Held:
    """A slot's context manager whose ledger entry is removed only once the slot is given back."""

    def __init__(self, slot: contextlib.AbstractContextManager) -> None:
        self.slot, self.entry = slot, None

    def __enter__(self) -> _Held:
        self.slot.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        # Raises when the server cannot be reached (Ctrl-C stops the ephemeral server with the flow):
        # then the entry stays, and the next flow frees the slot of this dead process.
        suppress = self.slot.__exit__(*exc)
        if self.entry is not None:
            self.entry.unlink(missing_ok=True)
        return suppress


@contextlib.contextmanager
def concurrency_slot(limit: str, what: str, log: Any, wait_log_seconds: float = WAIT_LOG_SECONDS) -> Iterator[None]:
    """Prefect's ``concurrency`` slot for ``what``, recorded in the ledger; waits are logged, dead holders freed."""
    from prefect.concurrency.sync import concurrency

    # Each short timeout below is a wait we log ourselves (naming the holder); Prefect's service
    # would also log it as an ERROR with a traceback-like repr every 30 s.
    logging.getLogger("prefect._internal.concurrency").addFilter(_SLOT_TIMEOUT_FILTER)
    waited = 0.0
    retried_free = False
    unexplained = 0   # timed-out waits in a row with no live holder to explain them
    with contextlib.ExitStack() as stack:
        while True:
            release_slots_of_dead_processes(log)   # a dead holder of this machine: given back, with a WARNING
            try:
                held = stack.enter_context(_Held(concurrency(limit, occupy=1, timeout_seconds=wait_log_seconds)))
                break
            except TimeoutError:
                waited += wait_log_seconds
                occupancy = _occupancy(limit)
                if occupancy is not None and occupancy[0] < occupancy[1] and not retried_free:
                    # The holder let go between our timeout and this read: nothing is stuck, try again.
                    # Once only: a slot that reads free but cannot be taken twice running is worth a warning.
                    log.info("%s: a slot of concurrency limit %r was freed as its wait timed out (%.0f s); "
                             "trying again", what, limit, waited)
                    retried_free = True
                    continue
                retried_free = False
                taken = "occupancy unknown" if occupancy is None else f"{occupancy[0]}/{occupancy[1]} slots taken"
                live = _live_holders(limit)
                # Local mode: every holder is a process of this machine and records itself, so taken
                # slots without one are a holder that is gone. Against a server, other machines hold slots.
                unexplained = unexplained + 1 if _ephemeral() and not live and occupancy is not None else 0
                if unexplained >= UNEXPLAINED_WAITS:
                    log.warning("%s has waited %.0f s for a slot of concurrency limit %r (%s), and no live process "
                                "of this machine is recorded as holding one; %s", what, waited, limit, taken,
                                FREE_BY_HAND.format(name=limit))
                else:
                    log.info("%s waits for a slot of concurrency limit %r (%s; held by: %s; waited %.0f s); it "
                             "starts when a holder finishes", what, limit, taken, _holders(live), waited)
        held.entry = _write("slot", {"limit": limit, "slots": 1, "what": what})
        yield


def record_server() -> None:
    """Note this process's ephemeral Prefect server, so a next flow can stop it if this process dies."""
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        proc = getattr(server, "server_process", None)
        if proc is not None and proc.poll() is None:
            me = ProcessId.current()
            _write("server", {"server": ProcessId(me.host, proc.pid, _start_time(proc.pid)).token()})


def stop_servers_of_dead_processes(log: Any) -> int:
    """SIGTERM the ephemeral Prefect servers whose flow process died (nobody else ever talks to them)."""
    stopped = 0
    with file_lock(_ledger() / ".lock"):
        for path, entry in _entries("server"):
            if not _dead(entry):
                continue
            server = ProcessId.from_token(entry.get("server", ""))
            if server is not None and server.alive():
                os.kill(server.pid, signal.SIGTERM)
                stopped += 1
                log.warning("stopped the local Prefect server (pid %d) left behind by process %s, which died",
                            server.pid, entry["process"])
            path.unlink(missing_ok=True)
    return stopped


def process_tags() -> dict[str, str]:
    """Tags naming the process that drives a run, so a later flow can tell it died."""
    return {TAG_PROCESS: ProcessId.current().token()}


def fail_runs_of_dead_processes(client: MlflowClient, experiment_id: str, log: Any) -> list[str]:
    """Mark FAILED the RUNNING runs whose driving process (of this machine) died, and their unstarted children."""
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    by_id = {r.info.run_id: r for r in running}
    dead: dict[str, str] = {}
    for r in running:
        pid = ProcessId.from_token(r.data.tags.get(TAG_PROCESS, ""))
        if pid is not None and pid.alive() is False:
            dead[r.info.run_id] = f"process {pid.pid} on {pid.host}"
    for r in running:  # children created by a dead parent that never started a process of their own
        parent = r.data.tags.get("mlflow.parentRunId")
        if r.info.run_id not in dead and TAG_PROCESS not in r.data.tags and parent in dead:
            dead[r.info.run_id] = dead[parent]
    for run_id, who in dead.items():
        finish_run(client, run_id, ok=False, status_tag="failed",
                   error=f"{who} died while this run was RUNNING (killed?); marked failed by the next flow")
        log.warning("run %s (%s) was RUNNING but its %s died: marked failed", run_id,
                    by_id[run_id].info.run_name, who)
        _crash_flow_run(by_id[run_id].data.tags.get(TAG_FLOW_RUN_ID), who)
    return list(dead)


def _crash_flow_run(flow_run_id: str | None, who: str) -> None:
    """The dead flow's Prefect flow run says RUNNING too (no one was left to report); say Crashed."""
    if not flow_run_id:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    # best effort: the run may be gone or already final
    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        fr = client.read_flow_run(flow_run_id)
        if fr.state is not None and not fr.state.is_final():
            client.set_flow_run_state(flow_run_id, Crashed(message=f"{who} died"), force=True)


def clean_up_after_dead_flows(client: MlflowClient, experiment_id: str, log: Any) -> None:
    """At the start of a flow: free what dead flows of this machine held, then record our own server."""
    stop_servers_of_dead_processes(log)
    release_slots_of_dead_processes(log)
    fail_runs_of_dead_processes(client, experiment_id, log)
    if _ephemeral():
        record_server()
