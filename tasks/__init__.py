"""Prefect tasks: thin wrappers that call ireasoner_core and log to MLflow."""
