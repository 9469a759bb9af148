# syntax=docker/dockerfile:1
# Images of the production topology (docker-compose.yml), built from the locked dependency set
# (requirements.lock), so a worker runs exactly what CI tested.
#   target "server": Prefect server and MLflow tracking server (no torch), with the PostgreSQL
#                    drivers both need: asyncpg for Prefect, psycopg 3 for MLflow (its URI names the
#                    driver, postgresql+psycopg://: SQLAlchemy 2.0, pinned, maps plain postgresql:// to psycopg2).
#   target "worker": this project with every locked dependency (torch wheels bundle CUDA; the
#                    node needs only the NVIDIA driver and container toolkit), running flow runs.
FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install "uv==0.13.8"
WORKDIR /app
COPY requirements.lock ./

FROM base AS server
# -c: every package the lock knows is installed at the locked version.
# tests/test_compose_postgres.py runs both servers from the same lock against a real PostgreSQL.
RUN uv pip install --system -c requirements.lock prefect mlflow asyncpg "psycopg[binary]"
EXPOSE 4200 5000

FROM base AS worker
RUN uv pip install --system -r requirements.lock
COPY pyproject.toml README.md ./
COPY ireasoner_core ./ireasoner_core
COPY flows ./flows
COPY tasks ./tasks
COPY configs ./configs
COPY deployments ./deployments
COPY scripts ./scripts
RUN uv pip install --system --no-deps -e .
ENV HF_HOME=/cache/huggingface IREASONER_IMAGES=/data/images PREFECT=prefect
CMD ["prefect", "worker", "start", "--pool", "ireasoner-pool", "--type", "process"]
