"""Keep the on/off switch of each deployment schedule across `prefect deploy` (register.sh).

`prefect deploy` writes every schedule as deployments/prefect.yaml declares it, ``active: false``
included, so re-registering (which compose does on every `up`) would switch off a schedule a user
switched on in the UI. register.sh saves the switches before deploying and restores them after:

    python deployments/schedules.py save FILE      # {"<flow>/<deployment>": {"<schedule>": active}}
    python deployments/schedules.py restore FILE

A schedule is identified by its slug, else by its definition (cron/interval/rrule and time zone);
a schedule or deployment that is new keeps what prefect.yaml says.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

PREFECT_YAML = Path(__file__).resolve().parent / "prefect.yaml"


def deployment_names(prefect_yaml: Path = PREFECT_YAML) -> set[str]:
    return {d["name"] for d in yaml.safe_load(prefect_yaml.read_text())["deployments"]}


def schedule_key(s: Any) -> str:
    if getattr(s, "slug", None):
        return f"slug:{s.slug}"
    return json.dumps(s.schedule.model_dump(mode="json", exclude_none=True), sort_keys=True)


def save(client: Any, names: set[str]) -> dict[str, dict[str, bool]]:
    """The switch of every schedule of the registered deployments named in prefect.yaml."""
    saved: dict[str, dict[str, bool]] = {}
    for dep in client.read_deployments():
        if dep.name in names:
            key = f"{client.read_flow(dep.flow_id).name}/{dep.name}"
            saved[key] = {schedule_key(s): bool(s.active) for s in client.read_deployment_schedules(dep.id)}
    return saved


def restore(client: Any, saved: dict[str, dict[str, bool]]) -> list[str]:
    """Set every schedule that existed before back to its saved switch; returns what was changed."""
    changed = []
    for name, switches in saved.items():
        dep = client.read_deployment_by_name(name)
        for s in client.read_deployment_schedules(dep.id):
            want = switches.get(schedule_key(s))
            if want is not None and want != bool(s.active):
                client.update_deployment_schedule(dep.id, s.id, active=want)
                changed.append(f"{name}: schedule {'on' if want else 'off'} (as it was before registering)")
    return changed


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"save", "restore"}:
        print("usage: schedules.py save|restore FILE", file=sys.stderr)
        return 2
    from prefect.client.orchestration import get_client

    path = Path(argv[1])
    with get_client(sync_client=True) as client:
        if argv[0] == "save":
            path.write_text(json.dumps(save(client, deployment_names())))
        else:
            for line in restore(client, json.loads(path.read_text())):
                print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
