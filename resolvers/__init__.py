"""Connectors to department sources (SQL, REST): pushed-down, batched fetches."""
