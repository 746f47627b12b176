"""Shared state: what several requests, workers or replicas must agree on
(rate-limit windows, budgets, conversations)."""
