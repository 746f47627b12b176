"""Admission: whether a request may go on (its gateway key, the models that key may use,
rate limits, parallel requests, budget). See gate.py."""
