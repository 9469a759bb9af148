# syntax=docker/dockerfile:1
# Images of the production topology (docker-compose.yml), built from the locked dependency set
# (requirements.lock), so a worker runs exactly what CI tested.
#   target "server": Prefect server and MLflow tracking server (no torch), with the PostgreSQL
#                    drivers both need (asyncpg for Prefect, psycopg2 for MLflow).
#   target "worker": this project with every locked dependency (torch wheels bundle CUDA; the
#                    node needs only the NVIDIA driver and container toolkit), running flow runs.
FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install "uv==0.13.8"
WORKDIR /app
COPY requirements.lock ./

FROM base AS server
# -c: every package the lock knows is installed at the locked version.
RUN uv pip install --system -c requirements.lock prefect mlflow asyncpg "psycopg2-binary==2.9.13"
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
