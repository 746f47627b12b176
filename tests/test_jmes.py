"""The JMESPath compilers (arch/rules/jmes.py, and arch/route/rules.py for
routing rules) against jmespath itself.

Every expression in the built-in rules, and a set covering each kind of node,
is evaluated both ways on the recorded vectors and on random JSON: same value,
or the same kind of error. This is what lets the rules run as compiled functions. A
routing rule list, compiled into one function, holds exactly when jmespath
finds its `when` true (a rule jmespath fails on does not hold).
"""
from pathlib import Path

import jmespath
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders

from arch.route.facts import facts
from arch.route.rules import compile_list, compile_rules
from arch.rules.dialects import rule_interpreter
from arch.rules.jmes import compile_node, is_false
from fakes import vector_json

ROOT = Path(__file__).resolve().parent.parent
NOT_EXPRESSIONS = {"client", "provider", "tables", "message", "param", "framing", "literals", "end_markers",
                   "name", "path", "request_schema", "usage", "ratelimit_headers"}

EVERY_KIND = [
    "a", "a.b.c", "a[0]", "a[-1]", "a[1:3]", "a[::-1]", "a[*].b", "a[].b", "a[][]", "*.b", "a.*",
    "a[?b == `1`].c", "a[?b > `1`]", "a[?!b]", "!a", "!`0`", "a || b", "a && b", "a == b", "a != b",
    "a < b", "a >= `2`", "`\"x\"` < `1`", "{x: a, y: b}", "[a, b]", "a | [0]", "@", "length(a)",
    "sort_by(a, &b)", "max_by(a, &b)", "to_string(a)", "`[1, 2]`[?@ > `1`]", "'lit'", "a.{k: b}",
    "a[?b == 'x'] | [0].c", "[a, b][]", "a.b[?c].d || `null`", "a < `1e999`", "a == `-1e999`", "a > 'b'",
]


def rule_expressions():
    """(file, expression) for every JMESPath string in rules/dialects."""
    found = []

    def walk(value, key, f):
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in NOT_EXPRESSIONS:
                    walk(v, k, f)
        elif isinstance(value, list):
            for v in value:
                walk(v, key, f)
        elif isinstance(value, str) and key != "use":
            found.append((f.name, value))

    for f in sorted((ROOT / "rules" / "dialects").glob("*.yaml")):
        walk(yaml.safe_load(f.read_text()), None, f)
    return found


def outcome(fn, root):
    try:
        return "value", fn(root)
    except Exception as e:  # a type error in a function call, say: both must fail alike
        return "error", type(e).__name__


INTERPRETER = rule_interpreter({"tables": {"t": {"a": "b"}}})
ROOTS = [vector_json(name) for name in (
    "openai/request_parallel_tools.json", "openai/request_multiturn_tool_results.json",
    "openai/chat_completion_parallel_tool_calls.json", "anthropic/request_parallel_tools.json",
    "anthropic/message_thinking_tool_use.json", "anthropic/message_parallel_tool_use.json")]
ROOTS += [{"e": r, "s": {"i": 0, "open": "text", "usage": {}}, "c": {"request": ROOTS[0], "model": "m"}} for r in ROOTS]
ROOTS += [{"a": [{"b": 1, "c": "x"}, {"b": 2}, {"b": 0, "c": None}], "b": 2}, {"a": {"b": {"c": [1]}}, "b": "s"}, None]


def check(text, root):
    ast = jmespath.compile(text).parsed
    expected = outcome(lambda r: INTERPRETER.visit(ast, r), root)
    got = outcome(compile_node(ast, INTERPRETER), root)
    if "now()" in text or "new_id(" in text:  # time and random ids differ from call to call
        assert got[0] == expected[0], text
    else:
        assert got == expected, text


@pytest.mark.parametrize("where,text", rule_expressions())
def test_rule_expressions_match_jmespath(where, text):
    for root in ROOTS:
        check(text, root)


@pytest.mark.parametrize("text", EVERY_KIND)
def test_every_kind_of_node_matches_jmespath(text):
    for root in ROOTS:
        check(text, root)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "x", "b"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
                    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_random_json_matches_jmespath(root):
    for text in EVERY_KIND:
        check(text, root)


ROUTING_WHEN = [
    "headers.\"x-tier\" == 'free'", "headers.\"x-tier\" != 'free'", "headers.\"x-tier\"", "headers.\"x-tier\".a",
    "headers", "input_tokens > `100`", "input_tokens <= `5`", "input_tokens == `3`", "has_images", "!has_images",
    "has_tools && !has_thinking", "has_tools || stream", "model == 'm'", "model != `null`", "model",
    "body.a == `1`", "body.a != `1`", "body.a > `1`", "body.a < `1.5`", "body.a >= 'b'", "body.a == `true`",
    "body.a == `[1]`", "body.a.b == 'x'", "body.a.b.c", "body.a || body.b", "body.a && body.b", "!body.a",
    "!(body.a == `0`)", "body.a == body.b", "body.a < body.b", "length(body.a) > `1`", "nothing",
    "nothing.a == `null`", "dialect == 'openai' && `0`", "`0`", "`\"\"`", "body.a[0] == `1`", "body.c[*].a",
    "model_facts.tools", "has_tools && model_facts && !(model_facts.tools)", "contains(last_user_message, 'py')",
    "(body.a || body.b) == `2`", "!(body.a && body.b)", "body.a > body.b || body.b", "input_tokens < `1e999`",
    "body.a[?b > `1` && !c]",
]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from("abc"), JSON, max_size=3), st.sampled_from([None, "free", "vip"]),
       st.sampled_from([None, "m", "x"]), st.integers(0, 200), st.booleans(), st.booleans(), st.booleans(),
       st.sampled_from([None, {}, {"tools": True}, {"tools": False}]), st.sampled_from(["", "python"]))
def test_routing_rules_hold_when_jmespath_finds_them_true(body, tier, model, tokens, images, tools, thinking,
                                                          model_facts, last):
    rules, problems = compile_rules([{"name": str(n), "when": w, "target": "t"} for n, w in enumerate(ROUTING_WHEN)],
                                    "test")
    assert not problems
    body = {**body, "model": model, "stream": thinking}
    headers = HTTPHeaders({"X-Tier": tier} if tier else {})  # as a handler has them
    for rule in rules:
        first = compile_list([rule], lambda root, raw: model_facts)
        root = facts(body, headers, "openai")
        root.update(input_tokens=tokens, has_images=images, has_tools=tools, has_thinking=thinking,
                    last_user_message=last)
        reference = dict(root, model_facts=model_facts)
        try:
            holds = not is_false(INTERPRETER.visit(jmespath.compile(ROUTING_WHEN[int(rule.name)]).parsed, reference))
        except (jmespath.exceptions.JMESPathError, TypeError):
            holds = False
        assert (first(root, b"") is rule) is holds, (rule.name, ROUTING_WHEN[int(rule.name)], root)


def test_a_routing_rule_nested_deeper_than_python_parses_still_compiles():
    when = " || ".join(f"body.a == `{n}`" for n in range(250))  # too deep for Python's parser
    rules, problems = compile_rules([{"name": "deep", "when": when, "target": "t"}], "test")
    first = compile_list(rules, None)
    assert not problems and first(facts({"a": 249}, HTTPHeaders(), "openai"), b"") is rules[0]
    assert first(facts({"a": 250}, HTTPHeaders(), "openai"), b"") is None
    deeper = " || ".join(f"body.a == `{n}`" for n in range(400))
    assert compile_rules([{"when": deeper, "target": "t"}], "test")[1] == ["test[0].when: nested more than 300 levels deep"]
