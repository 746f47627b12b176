"""Loads the rules directories into one immutable, compiled `RuleSet`.

Built-in rules come from `rules/` (shipped inside the package when installed); each directory named in
the config (`rules:`) or with `--rules DIR` is laid over them file by file, so
a user overrides `providers/openai.yaml` or adds `providers/acme.yaml` without
touching the rest. Every file is checked against its schema in `schemas/` and
every JMESPath expression compiled here, once; a reload builds a new RuleSet.
"""
from pathlib import Path

import yaml

from arch import schemas
from arch.rules.dialects import Dialect, Translation
from arch.rules.models import ModelTable
from arch.errors import ConfigError

BUILTIN = schemas.data_dir("rules")


class ProviderRule:
    """How to reach one kind of provider: `rules/providers/<name>.yaml`."""

    def __init__(self, spec):
        self.name = spec["name"]
        self.dialect = spec["dialect"]
        self.base_url = spec.get("base_url")
        self.base_url_required = spec.get("base_url_required", False)
        self.path = spec["path"]
        self.count_tokens_path = spec.get("count_tokens_path")
        self.auth = spec.get("auth")
        self.headers = spec.get("headers") or {}
        self.forward_headers = [h.lower() for h in spec.get("forward_headers") or ()]
        self.params = spec.get("params") or {}
        self.rename = spec.get("rename") or {}


class RuleSet:
    def __init__(self, dialects, translations, providers, prices, models, files):
        self.dialects = dialects
        self.translations = translations
        self.providers = providers
        self.prices = prices
        self.models = models
        self.files = files

    def translation(self, client, provider):
        """The Translation between two dialects, or None when they are the same."""
        if client == provider:
            return None
        return self.translations[client, provider]


def rule_files(dirs):
    """{relative path: file} over the built-in rules and each user dir in order."""
    files = {}
    for d in [BUILTIN, *map(Path, dirs)]:
        if not d.is_dir():
            raise ConfigError([f"{d}: rules directory not found"])
        for f in sorted(d.rglob("*.yaml")):
            files[f.relative_to(d).as_posix()] = f
    return files


def load_rules(dirs=()):
    problems = []
    specs = {}
    for rel, f in rule_files(dirs).items():
        try:
            spec = yaml.safe_load(f.read_text())
        except (OSError, yaml.YAMLError) as e:
            problems.append(f"{f}: {e}")
            continue
        kind = ("prices" if rel == "prices.yaml" else "models" if rel == "models.yaml"
                else "provider" if rel.startswith("providers/")
                else "translation" if "_to_" in rel else "dialect")
        found = schemas.problems(f"rules_{kind}.schema.yaml", spec, str(f))
        if found:
            problems.extend(found)
        else:
            specs[rel] = (kind, spec, f)
    if problems:
        raise ConfigError(problems)

    dialects, translations, providers, provider_files, prices, models = {}, {}, {}, {}, {}, {}
    for rel, (kind, spec, f) in specs.items():
        try:
            if kind == "prices":
                prices = spec or {}
            elif kind == "models":
                models = spec or {}
            elif kind == "dialect":
                dialects[spec["name"]] = Dialect(spec, str(f))
            elif kind == "translation":
                translations[spec["client"], spec["provider"]] = Translation(spec, str(f))
            else:
                providers[spec["name"]], provider_files[spec["name"]] = ProviderRule(spec), f
        except ConfigError as e:
            problems.extend(e.problems)
    for name, p in providers.items():
        if p.dialect not in dialects:
            problems.append(f"{provider_files[name]}: dialect: no dialect named {p.dialect!r}")
    for a in dialects:
        for b in dialects:
            if a != b and (a, b) not in translations:
                problems.append(f"rules: no translation from {a} clients to {b} providers (dialects/{a}_to_{b}.yaml)")
    if problems:
        raise ConfigError(problems)
    return RuleSet(dialects, translations, providers, prices, ModelTable(models), files=[str(f) for _, _, f in specs.values()])
