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
# libyaml's parser when PyYAML has it: rules are parsed on every reload, 5x faster so
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path):
    return yaml.load(Path(path).read_text(), Loader=_Loader)


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
        # other dialects this provider serves natively: {dialect: {path, compact_path...}}
        self.also = spec.get("also") or {}
        self.models = tuple(spec.get("models") or ())  # bare ids a wildcard entry (`openai/*`) serves


class RuleSet:
    def __init__(self, dialects, translations, providers, prices, models, files, routing=([], None)):
        self.dialects = dialects
        self.routing = routing  # (routing rules as written, the file they came from)
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
        if Path(rel).name.startswith("_"):  # a fragment other files include (see `_include`)
            continue
        try:
            spec = read_yaml(f)
        except (OSError, yaml.YAMLError) as e:
            problems.append(f"{f}: {e}")
            continue
        kind = ("prices" if rel == "prices.yaml" else "models" if rel == "models.yaml"
                else "routing" if rel == "routing.yaml"
                else "provider" if rel.startswith("providers/")
                else "translation" if "_to_" in rel else "dialect")
        found = schemas.problems(f"rules_{kind}.schema.yaml", spec, str(f))
        if found:
            problems.extend(found)
        else:
            specs[rel] = (kind, spec, f)
    if problems:
        raise ConfigError(problems)

    dialect_specs = {spec["name"]: spec for kind, spec, _ in specs.values() if kind == "dialect"}
    dialects, translations, providers, provider_files, prices, models = {}, {}, {}, {}, {}, {}
    routing = ([], None)
    for rel, (kind, spec, f) in specs.items():
        try:
            if kind == "prices":
                prices = spec or {}
            elif kind == "models":
                models = spec or {}
            elif kind == "routing":
                routing = ((spec or {}).get("routing_rules") or [], str(f))
            elif kind == "dialect":
                dialects[spec["name"]] = Dialect(_inherit(spec, dialect_specs, f), str(f))
            elif kind == "translation":
                spec["stream"] = _include(spec["stream"], f, dirs)
                translations[spec["client"], spec["provider"]] = Translation(spec, str(f))
            else:
                providers[spec["name"]], provider_files[spec["name"]] = ProviderRule(spec), f
        except ConfigError as e:
            problems.extend(e.problems)
    for name, p in providers.items():
        if p.dialect not in dialects:
            problems.append(f"{provider_files[name]}: dialect: no dialect named {p.dialect!r}")
    spoken = {p.dialect for p in providers.values()}  # what a request may have to be translated into
    for a in dialects:
        for b in spoken & set(dialects):
            if a != b and (a, b) not in translations:
                problems.append(f"rules: no translation from {a} clients to {b} providers (dialects/{a}_to_{b}.yaml)")
    if problems:
        raise ConfigError(problems)
    return RuleSet(dialects, translations, providers, prices, ModelTable(models),
                   files=[str(f) for _, _, f in specs.values()], routing=routing)


def _inherit(spec, dialect_specs, where):
    """A dialect with `inherit: other` takes the other's `error`, `tables` and `ratelimit_headers`
    unless it has its own."""
    parent = spec.get("inherit")
    if parent is None:
        if "error" not in spec:
            raise ConfigError([f"{where}: error: required (or inherit: a dialect that has it)"])
        return spec
    if parent not in dialect_specs:
        raise ConfigError([f"{where}: inherit: no dialect named {parent!r}"])
    return {**{k: dialect_specs[parent][k] for k in ("error", "tables", "ratelimit_headers") if k in dialect_specs[parent]}, **spec}


def _include(stream, where, dirs):
    """A stream section with `include: _file.yaml` (a fragment beside the file, the same for
    several translations) takes the fragment's state, procedures and rules under its own."""
    name = stream.get("include")
    if name is None:
        return stream
    fragment = rule_files(dirs).get(f"dialects/{name}")
    if fragment is None:
        raise ConfigError([f"{where}: stream.include: no rules file dialects/{name}"])
    try:
        base = read_yaml(fragment) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError([f"{fragment}: {e}"]) from None
    problems = schemas.problems("rules_translation.schema.yaml", {"client": "", "provider": "", "request": {},
                                                                  "response": {}, "stream": base}, str(fragment))
    if problems:
        raise ConfigError(problems)
    merged = {**base, **{k: v for k, v in stream.items() if k != "include"}}
    merged["state"] = {**(base.get("state") or {}), **(stream.get("state") or {})}
    own = stream.get("procedures") or {}  # first: the fragment's procedures may `use` them
    merged["procedures"] = {**own, **{k: v for k, v in (base.get("procedures") or {}).items() if k not in own}}
    merged["events"] = [*(stream.get("events") or ()), *(base.get("events") or ())]
    merged["eof"] = [*(stream.get("eof") or ()), *(base.get("eof") or ())]
    return merged
