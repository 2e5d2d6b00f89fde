"""Observability: Prometheus metrics (and, later, structured logs)."""
