-- Run once by the postgres image on an empty data volume: the Prefect database is
-- POSTGRES_DB itself; MLflow gets its own database on the same server.
CREATE DATABASE mlflow;
