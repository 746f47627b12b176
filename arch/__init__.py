"""Arch gateway: one endpoint for every LLM, in the dialect the client speaks."""
__version__ = "0.1.0"
