"""The rules engine: dialects, translations and streams declared in YAML, compiled at load."""
