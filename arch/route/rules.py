"""Routing rules: an ordered list of `when` (JMESPath over the request and its
facts, see `facts.py`) and `target` (a model, an alias or a preference route);
the first rule whose `when` holds decides. Compiled once at load, with the
same JMESPath compiler as the translation rules."""
from dataclasses import dataclass

from jmespath.exceptions import JMESPathError

from arch.errors import ConfigError
from arch.route.facts import reads
from arch.rules.dialects import rule_interpreter
from arch.rules.mapping import compile_expr

_INTERPRETER = rule_interpreter({})


@dataclass(frozen=True)
class Rule:
    name: str
    when: object   # Facts -> value; the rule holds when it is JMESPath-true
    target: str
    where: str     # file and path, for messages
    reads: frozenset  # the computed facts its `when` names


def compile_rules(specs, where):
    """([Rule], problems) from the YAML list at `where`: every broken rule is reported at once."""
    rules, problems = [], []
    for n, spec in enumerate(specs or ()):
        here = f"{where}[{n}]"
        try:
            when = compile_expr(spec["when"], _INTERPRETER, f"{here}.when")
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        rules.append(Rule(spec.get("name") or here.rpartition(": ")[2], when, spec["target"], here,
                          frozenset(reads(spec["when"]))))
    return rules, problems


def first_match(rules, facts):
    """The first rule that holds. A rule a request makes fail (a function given the wrong
    type by an odd body) does not hold: a client's bytes never turn a rule into a 500."""
    for rule in rules:
        try:
            value = rule.when(facts)
        except (JMESPathError, TypeError):  # a function given the wrong type, a string compared to a number
            continue
        if value is not None and value is not False and value != "" and value != [] and value != {}:
            return rule  # JMESPath truth, inline: this loop runs every rule of every request
    return None
