"""Run a preset of the ``ireasoner`` flow in this process, with no server started by hand.

    python -m flows.run smoke                     # the README's main job
    python -m flows.run smoke --set iterations=4 --set variants='[full, soft_only]'
    python -m flows.run ablations --force

Prefect runs in its local ephemeral mode unless ``PREFECT_API_URL`` points at a server;
MLflow writes to ``sqlite:///<repo>/mlflow.db`` with artifacts in ``<repo>/mlartifacts``
unless ``MLFLOW_TRACKING_URI`` is set. The last lines printed say how to open both UIs on
what was written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import yaml


def _merge(base: Any, change: Any) -> Any:
    """``change`` over ``base``: mappings merge key by key (as the flow's ``changes``), anything else replaces."""
    if isinstance(base, dict) and isinstance(change, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in change.items()}}
    return change


def _set(spec: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one ``--set FIELD=VALUE`` to a spec dict; a mapping value merges into the field's mapping."""
    from ireasoner_core.config import flat_overrides

    head, _, rest = dotted.partition(".")
    if head == "overrides":
        # Run-config overrides are keyed by dotted field names: overrides.sampling.temperature=0.7
        # is the key 'sampling.temperature', merged field by field with the preset's overrides.
        change = {rest: value} if rest else value
        if not isinstance(change, dict):
            # ValueError, not TypeError: main() reports ValueError as a one-line usage error.
            raise ValueError(f"--set overrides: expects a mapping of run-config fields, got {value!r}")  # noqa: TRY004
        spec["overrides"] = {**flat_overrides(spec.get("overrides") or {}),
                             **flat_overrides(change, "--set overrides")}
        return
    node = spec
    parts = dotted.split(".")
    for i, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {'.'.join(parts[:i + 1])} is not a mapping")
    node[parts[-1]] = _merge(node.get(parts[-1]), value)


def preset_spec(preset: str, sets: list[str]) -> dict[str, Any]:
    """The preset's spec dict with each ``FIELD=VALUE`` of ``--set`` applied (values read as YAML)."""
    from flows.presets import PRESETS
    from ireasoner_core.config import load_yaml

    spec_dict = yaml.safe_load(yaml.safe_dump(PRESETS[preset]))
    for pair in sets:
        if "=" not in pair:
            raise ValueError(f"--set expects FIELD=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            parsed = load_yaml(value)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {key.strip()}: {value!r} is not a YAML value: "
                             f"{getattr(err, 'problem', None) or err}") from None
        _set(spec_dict, key.strip(), parsed)
    return spec_dict


def main(argv: list[str] | None = None) -> int:
    from flows.presets import PRESETS

    p = argparse.ArgumentParser(prog="python -m flows.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", choices=sorted(PRESETS), help="which preset (deployment) to run")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="Change a spec field, e.g. iterations=4, resources.retries=0, variants='[full]' (YAML values).")
    p.add_argument("--force", action="store_true", help="Retrain variants that already finished.")
    args = p.parse_args(argv)

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # its first write races the ephemeral DB
    # A first start creates the database; on a busy 2-core machine that exceeds the 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        spec_dict = preset_spec(args.preset, args.set)
    except ValueError as err:
        p.error(str(err))

    from flows.ireasoner import ireasoner
    from tasks.runs import tracking_uri

    print(f"[ireasoner] preset {args.preset}: {spec_dict}", flush=True)
    started = time.monotonic()
    state = ireasoner(spec=spec_dict, force=args.force, return_state=True)
    minutes = (time.monotonic() - started) / 60
    uri = tracking_uri()
    print(f"\n[ireasoner] flow run {state.name} after {minutes:.1f} min: {state.message or ''}".rstrip())
    if state.is_completed():
        tasks = spec_dict.get("evaluation", {}).get("tasks", [])
        for row in state.result()["rows"]:
            scores = "  ".join(f"{t}={row[t]:.1f}" for t in tasks if row.get(t) is not None) or "no scores"
            its = "-" if row["iterations"] is None else row["iterations"]
            print(f"  {row['variant']:<20} seed {row['seed']}  {row['status']:<8} iterations {its:<5} {scores}\n"
                  f"      {row['mlflow_url']}")
    print(_how_to_look(uri, state.result()["experiment_id"] if state.is_completed() else None))
    return 0 if state.is_completed() else 1


def _how_to_look(uri: str, experiment_id: str | None = None) -> str:
    from tasks.conventions import UI_WORKFLOW_PARAM
    from tasks.runs import experiment_url, ui_base_url

    prefect_api = os.environ.get("PREFECT_API_URL")
    # The training view: MLflow 3.17 opens a fresh browser on its GenAI view (tasks/conventions.py).
    mlflow_page = (experiment_url(uri, experiment_id) if experiment_id is not None
                   else f"{ui_base_url(uri)}/#/?{UI_WORKFLOW_PARAM}")
    lines = ["", "To look at what this run wrote:"]
    if uri.startswith("sqlite:"):
        lines.append(f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000"
                     f"   then open {mlflow_page}")
    else:
        lines.append(f"  MLflow UI:  open {mlflow_page}")
    if prefect_api:
        lines.append(f"  Prefect UI: open {prefect_api.removesuffix('/api')}")
    else:
        home = os.environ.get("PREFECT_HOME", "~/.prefect")
        lines.append(f"  Prefect UI: PREFECT_HOME={home} PREFECT_SERVER_ANALYTICS_ENABLED=false .venv/bin/prefect server start --host 127.0.0.1 --port 4200"
                     "   then open http://127.0.0.1:4200/runs")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
