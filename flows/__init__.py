"""Prefect flows: the `ireasoner` flow and its sub-flows."""
