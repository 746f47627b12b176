"""Observability: the per-request report (access log, metrics, usage and cost) and tracing."""
