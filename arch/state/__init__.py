"""Shared state: what several requests, workers or replicas must agree on
(rate-limit windows, budgets, conversations). `redis.py` is the client for the
shared backend."""
