"""docker-compose.yml's production topology, for real, without a docker engine.

PostgreSQL from Debian's package (initdb/pg_ctl in a temporary folder, on a free loopback port,
with a password as the compose file sets one), the databases created as the postgres image
does (POSTGRES_DB, then deployments/postgres-init.sql), then every other service's exact
``command`` and ``environment`` from docker-compose.yml, interpolated as compose does, with the
service host names translated to 127.0.0.1, their ports to free ones and their volumes to
temporary folders: the Prefect server on PostgreSQL, the MLflow server on PostgreSQL with
``--serve-artifacts``, the one-shot ``register`` job, and a process worker. Each service's own
healthcheck command decides when it is up. The smoke deployment then runs through them (shrunk
with --params), and the runs, metrics, system metrics and artifacts are read back from
PostgreSQL itself and from the artifact folder.

Debian's postgresql package must be installed (scripts/test.sh installs it when missing).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# The compose-internal address of each service (host name, container port).
SERVICE_PORTS = {"postgres": 5432, "prefect-server": 4200, "mlflow": 5000}
pytestmark = [pytest.mark.slow, pytest.mark.integration]
# Secrets a user has in the environment of every process (canaries): none may reach MLflow or a log.
SECRETS = {"HF_TOKEN": "hf_CanaryToken4711", "AWS_SECRET_ACCESS_KEY": "aws-canary-secret-4711",
           "PGPASSWORD": "pg-canary-4711", "DATABASE_URL": "postgresql://u:db-canary-4711@db/x"}

from test_compose import _interpolate  # noqa: E402 - compose's ${VAR} rules, tested there


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    assert dirs, ("PostgreSQL is not installed: `apt-get install -y postgresql` (scripts/test.sh does this "
                  "on a fresh machine)")
    return Path(dirs[-1])


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root: drop to Debian's `postgres` account then."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


class Translate:
    """Compose names → this machine: service hosts → 127.0.0.1, container ports → free ports,
    volume mount points → temporary folders."""

    def __init__(self, ports: dict[str, int], mounts: dict[str, Path]):
        self.ports = ports
        self.by_container_port = {str(SERVICE_PORTS[s]): str(p) for s, p in ports.items()}
        self.mounts = mounts

    def value(self, s: str) -> str:
        def hostport(m: re.Match) -> str:
            return f"127.0.0.1:{self.by_container_port.get(m.group(2), m.group(2))}"
        hosts = "|".join(map(re.escape, [*SERVICE_PORTS, "localhost", "127.0.0.1", "0.0.0.0"]))
        s = re.sub(rf"\b({hosts}):(\d+)\b", hostport, s)
        for inside, outside in self.mounts.items():
            if s == inside or s.startswith(inside + "/"):
                s = str(outside) + s[len(inside):]
        return s

    def command(self, service: str, env: dict[str, str]) -> list[str]:
        cmd = [self.value(_interpolate(c, env)) for c in SERVICES[service]["command"]]
        for i, c in enumerate(cmd[:-1]):
            if c == "--port":
                cmd[i + 1] = self.by_container_port[cmd[i + 1]]
            if c == "--host":
                cmd[i + 1] = "127.0.0.1"
            if c == "--allowed-hosts":  # bare service names are Host headers without a port
                cmd[i + 1] = ",".join(h if ":" in h else "127.0.0.1" if h in SERVICE_PORTS else h
                                      for h in cmd[i + 1].split(","))
        return cmd

    def environment(self, service: str, env: dict[str, str]) -> dict[str, str]:
        return {k: self.value(_interpolate(str(v), env)) for k, v in SERVICES[service].get("environment", {}).items()}

    def healthcheck(self, service: str) -> list[str]:
        test = SERVICES[service]["healthcheck"]["test"]
        assert test[0] == "CMD", test
        return [self.value(c) for c in test[1:]]


def _wait(what: str, check, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p, log in zip(procs, logs):
            assert p.poll() is None, f"{what}: a service exited ({p.args[:3]}):\n{log.read_text()[-4000:]}"
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} not up after {timeout} s:\n" + "\n".join(log.read_text()[-3000:] for log in logs))


def _check(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]} {out.stderr[-2000:]}"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=5)   # nothing to keep at teardown; a server's graceful exit takes ~30 s
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="module")
def topology():
    # Not under pytest's tmp_path: PostgreSQL runs as another user, who must reach its data folder.
    tmp = Path(tempfile.mkdtemp(prefix="ireasoner-compose-"))
    os.chmod(tmp, 0o755)
    password = "s3cret-pg-pass"
    shell_env = {"POSTGRES_PASSWORD": password}  # what a user exports before `docker compose up`
    ports = {s: _free_port() for s in SERVICE_PORTS}
    mounts = {"/mlartifacts": tmp / "mlartifacts", "/data/images": tmp / "images",
              "/cache/huggingface": tmp / "hf-cache", "/app/runs": tmp / "runs"}
    for p in mounts.values():
        p.mkdir()
    tr = Translate(ports, mounts)
    pg = tr.environment("postgres", shell_env)
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    pg_bin, su = _pg_bin(), _as_postgres_user()
    data = tmp / "pgdata"
    data.mkdir()
    (tmp / "pwfile").write_text(password + "\n")
    if su:
        shutil.chown(data, "postgres")
        shutil.chown(tmp / "pwfile", "postgres")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    base.update({"PATH": f"{BIN}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                 "PREFECT_HOME": str(tmp / "prefect-home"), "IREASONER_SYSTEM_METRICS_INTERVAL": "1",
                 "PREFECT_WORKER_QUERY_SECONDS": "2",   # the worker's 10 s default poll, shortened for CI
                 **SECRETS})
    try:
        _check([*su, str(pg_bin / "initdb"), "-D", str(data), "-U", pg["POSTGRES_USER"],
                f"--pwfile={tmp / 'pwfile'}", "--auth=scram-sha-256", "-E", "UTF8"])
        _check([*su, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(data / "postgres.log"), "-w", "start",
                "-o", f"-c listen_addresses=127.0.0.1 -p {ports['postgres']} -k {data}"])
        import psycopg

        admin = f"postgresql://{pg['POSTGRES_USER']}:{password}@127.0.0.1:{ports['postgres']}"
        # What the postgres image does on an empty volume: POSTGRES_DB, then the init scripts.
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {pg['POSTGRES_DB']}")
            conn.execute((ROOT / "deployments" / "postgres-init.sql").read_text())

        def start(service: str, cwd: Path) -> dict[str, str]:
            env = {**base, **tr.environment(service, shell_env)}
            log = tmp / f"{service}.log"
            procs.append(subprocess.Popen(tr.command(service, shell_env), cwd=cwd, env=env, stdout=log.open("w"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
            logs.append(log)
            return env

        def healthy(service: str) -> bool:
            return subprocess.run(tr.healthcheck(service), capture_output=True, timeout=30).returncode == 0

        start("prefect-server", tmp)
        start("mlflow", tmp)
        _wait("prefect-server and mlflow healthchecks",
              lambda: healthy("prefect-server") and healthy("mlflow"), procs, logs)
        # register: one-shot, after prefect-server is healthy; the worker waits for it to succeed.
        reg_env = {**base, **tr.environment("register", shell_env)}
        reg = subprocess.run(tr.command("register", shell_env), cwd=ROOT, env=reg_env, capture_output=True,
                             text=True, timeout=400)
        assert reg.returncode == 0, reg.stdout[-3000:] + reg.stderr[-3000:]
        worker_env = start("worker", ROOT)  # the image's WORKDIR is the project
        yield {"tmp": tmp, "ports": ports, "env": worker_env, "admin": admin, "mounts": mounts,
               "worker_log": logs[-1], "password": password, "logs": logs,
               "register": lambda: subprocess.run(tr.command("register", shell_env), cwd=ROOT, env=reg_env,
                                                  capture_output=True, text=True, timeout=400)}
    finally:
        for p in reversed(procs):
            _stop(p)
        subprocess.run([*su, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def _sql(topology, db: str, query: str, *args) -> list[tuple]:
    import psycopg

    with psycopg.connect(f"{topology['admin']}/{db}") as conn:
        return conn.execute(query, args).fetchall()


SMOKE_TASKS = ["ireasoner_chartqa_mini", "ireasoner_ai2d_mini", "ireasoner_geometry_mini"]


@pytest.fixture(scope="module")
def smoke(topology):
    """`docker compose exec worker prefect deployment run ireasoner/smoke`, shrunk with ``changes``
    (the preset's benchmarks, base config and other overrides stay)."""
    changes = {"name": "compose-pg", "iterations": 2, "variants": ["full"], "evaluation": {"limit": 2},
               "runs_dir": str(topology["mounts"]["/app/runs"]), "images": {"synthetic_images": 4},
               "overrides": {"checkpoint.every": 1, "sampling.num_rollouts": 2,
                             "sampling.solver_max_new_tokens": 12, "sampling.proposer_max_new_tokens": 12}}
    out = subprocess.run([str(BIN / "prefect"), "deployment", "run", "ireasoner/smoke", "--params",
                          json.dumps({"changes": changes}), "--watch", "--watch-timeout", "900"],
                         cwd=ROOT, env=topology["env"], capture_output=True, text=True, timeout=960)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "Completed" in text, text[-3000:] + topology["worker_log"].read_text()[-5000:]
    return text


def test_smoke_deployment_lands_in_postgres_and_the_artifact_store(topology, smoke):
    env = topology["env"]
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{topology['ports']['mlflow']}"
    # Prefect's state is in PostgreSQL: the flow run and its completed state.
    flow_runs = _sql(topology, "prefect", "SELECT fr.state_type FROM flow_run fr JOIN deployment d "
                     "ON fr.deployment_id = d.id WHERE d.name = %s", "smoke")
    assert [r[0] for r in flow_runs] == ["COMPLETED"]
    # Task runs are named by variant (the UI's list says which variant is being evaluated).
    names = {n for (n,) in _sql(topology, "prefect", "SELECT name FROM task_run")}
    assert {"train-full-s0", "evaluate-full-s0"} <= names, sorted(names)
    # MLflow's store is PostgreSQL: the sweep run and its finished child run with its metrics.
    runs = dict(_sql(topology, "mlflow", "SELECT name, status FROM runs"))
    assert runs.get("compose-pg") == "FINISHED" and runs.get("full-s0") == "FINISHED", runs
    (child,) = [r[0] for r in _sql(topology, "mlflow", "SELECT run_uuid FROM runs WHERE name = 'full-s0'")]
    steps = _sql(topology, "mlflow", "SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train/r_sol_mean' "
                 "ORDER BY step", child)
    assert [s for (s,) in steps] == [1, 2]
    keys = {k for (k,) in _sql(topology, "mlflow", "SELECT DISTINCT key FROM metrics WHERE run_uuid = %s", child)}
    # The preset's three benchmarks survived the `changes` override (a `spec` override drops them).
    assert {f"eval/{t}" for t in SMOKE_TASKS} <= keys, sorted(keys)
    assert any(k.startswith("system/cpu_utilization") for k in keys), sorted(keys)
    assert any(k.startswith("system/system_memory_usage") for k in keys), sorted(keys)
    params = dict(_sql(topology, "mlflow", "SELECT key, value FROM params WHERE run_uuid = %s", child))
    assert params["log_diagnostics_every"] == "1" and params["schedule.iterations"] == "2"
    # Artifacts went through the server (--serve-artifacts) into the mounted artifact folder.
    (uri,) = [u for (u,) in _sql(topology, "mlflow", "SELECT artifact_uri FROM runs WHERE run_uuid = %s", child)]
    assert uri.startswith("mlflow-artifacts:/"), uri
    stored = {p.relative_to(topology["mounts"]["/mlartifacts"]).as_posix()
              for p in topology["mounts"]["/mlartifacts"].rglob("*") if p.is_file()}
    assert any(s.endswith(f"{child}/artifacts/train/metrics.jsonl") for s in stored), sorted(stored)[:20]
    assert any(s.endswith(f"{child}/artifacts/adapters/solver/adapter_model.safetensors") for s in stored)
    # The report's cells are metrics of the sweep run, in PostgreSQL too.
    cells = {k for (k,) in _sql(topology, "mlflow", "SELECT m.key FROM metrics m JOIN runs r ON m.run_uuid = "
                                 "r.run_uuid WHERE r.name = 'compose-pg'")}
    assert f"table1/full/{SMOKE_TASKS[0]}" in cells, sorted(cells)
    # Progress bars do not flood the worker's log: bars that honour TQDM_DISABLE are gone
    # (transformers' weight loading), the others render at their start and end only.
    log = topology["worker_log"].read_text()
    assert "Loading weights" not in log
    assert {p for p in re.findall(r"(\d+)%\|", log)} <= {"0", "100"}


def test_no_secret_reaches_mlflow_or_the_logs(topology, smoke):
    """HF_TOKEN, cloud keys and database passwords in the environment: not in params, tags,
    artifacts or logs (MLflow's tables, the artifact store, Prefect's log table, process logs)."""
    secrets = [*SECRETS.values(), topology["password"]]
    texts = {}
    for table in ("params", "tags", "experiment_tags", "registered_model_tags", "model_version_tags"):
        texts[f"mlflow.{table}"] = json.dumps(_sql(topology, "mlflow", f"SELECT * FROM {table}"), default=str)
    texts["prefect.log"] = json.dumps(_sql(topology, "prefect", "SELECT message FROM log"))
    texts["prefect.flow_run"] = json.dumps(_sql(topology, "prefect", "SELECT parameters FROM flow_run"), default=str)
    for p in topology["mounts"]["/mlartifacts"].rglob("*"):
        if p.is_file():
            texts[str(p)] = p.read_bytes().decode("utf-8", "replace")
    for log in topology["logs"]:
        if "mlflow" not in log.name:  # the MLflow server is given the database URL on its command line
            texts[str(log)] = log.read_text()
    assert len(texts) > 10 and any("metrics.jsonl" in k for k in texts)
    leaks = [(where, s) for where, text in texts.items() for s in secrets if s in text]
    assert leaks == []


def test_reregistering_keeps_a_schedule_switched_on_in_the_ui(topology):
    """compose runs register.sh on every `up`: a schedule switched on in the UI must stay on."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: topology["env"]["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("ireasoner/retrain")
        (sched,) = client.read_deployment_schedules(dep.id)
        assert sched.active is False  # as prefect.yaml declares it
        client.update_deployment_schedule(dep.id, sched.id, active=True)  # what the UI's toggle does
    again = topology["register"]()  # the next `docker compose up`
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    with temporary_settings({PREFECT_API_URL: topology["env"]["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("ireasoner/retrain")
        (after,) = client.read_deployment_schedules(dep.id)
        assert after.active is True and after.schedule.cron == "0 3 * * 1"
        # A schedule nobody touched keeps prefect.yaml's definition (the smoke preset has none).
        assert client.read_deployment_schedules(client.read_deployment_by_name("ireasoner/smoke").id) == []
        # And the switched-on schedule produces runs on PostgreSQL too: the scheduler service (every
        # 60 s here, as in compose) fills retrain's Upcoming tab. On SQLAlchemy 2.1 it never did.
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        deadline, upcoming = time.monotonic() + 150, []
        while time.monotonic() < deadline and not upcoming:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
            upcoming = [r for r in runs if r.auto_scheduled and r.state and r.state.is_scheduled()]
            time.sleep(3)
        assert upcoming, "retrain switched on for 150 s on PostgreSQL without an upcoming run"
        client.update_deployment_schedule(dep.id, after.id, active=False)  # also drops its future runs
