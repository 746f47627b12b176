"""Dialects and translations, compiled from rules YAML.

A `Dialect` is one API shape (openai, anthropic): how its requests are
validated, how its errors look, how its streams are framed. A `Translation`
is one direction between two dialects (`openai_to_anthropic.yaml`: an OpenAI
client, an Anthropic provider): request, response and stream mappings.
Nothing in here names a particular dialect; the YAML does.
"""
import json
import logging
from collections import Counter

import jmespath

import fastjsonschema
from jmespath import Options
from jmespath.exceptions import JMESPathError
from jmespath.visitor import TreeInterpreter

from arch import jsonio, schemas
from arch.errors import ConfigError, GatewayError
from arch.rules.functions import RuleFunctions
from arch.rules.jmes import compile_path
from arch.rules.responses import ResponsesFunctions
from arch.rules.resume import Pause
from arch.rules.mapping import compile_expr, compile_mapping, compile_steps, truthy

log = logging.getLogger("arch")


class _Functions(ResponsesFunctions, RuleFunctions):
    """Every function a rules file may call."""


def rule_interpreter(spec):
    """The JMESPath interpreter of one rules file (its functions see its `tables`), made
    once and kept: jmespath's own search() builds one, method cache and all, per call."""
    return TreeInterpreter(Options(custom_functions=_Functions(spec.get("tables"))))


class Dialect:
    def __init__(self, spec, where):
        interpreter = rule_interpreter(spec)
        self.name = spec["name"]
        self.path = spec["path"]
        self.request_schema = spec["request_schema"]
        try:
            schemas.compiled(self.request_schema)  # loaded and compiled now, not on the first request
        except (OSError, ValueError, fastjsonschema.JsonSchemaDefinitionException) as e:
            raise ConfigError([f"{where}: request_schema: {e}"]) from None
        stream = spec["stream"]
        self.named_events = stream["framing"] == "named"
        self.stream_literals = {s.encode() for s in stream.get("literals", ())}
        # "event: X" ends the stream on an event named X; "data: Y" on an event whose data starts with Y
        self._end_names = {m[6:].strip() for m in stream["end_markers"] if m.startswith("event:")}
        self._end_data = tuple(m[5:].lstrip().encode() for m in stream["end_markers"] if m.startswith("data:"))
        self.sequence = stream.get("sequence")
        self.result = compile_expr(stream["result"], interpreter, f"{where}: stream.result") if "result" in stream else None
        self._failure = compile_expr(stream["failure"], interpreter, f"{where}: stream.failure") if "failure" in stream else None
        usage = stream.get("usage") or {}
        self.usage_asked = compile_expr(usage["asked"], interpreter, f"{where}: stream.usage.asked") if usage else None
        self.usage_request = compile_expr(usage["request"], interpreter, f"{where}: stream.usage.request") if usage else None
        self.usage_event = compile_expr(usage["event"], interpreter, f"{where}: stream.usage.event") if usage else None
        # {field: [dotted paths, summed]}: plain data, read on every answer without JMESPath
        self._usage = {field: [path.split(".") for path in (paths if isinstance(paths, list) else [paths])]
                       for field, paths in spec["usage"].items()}
        self.max_output = tuple(spec.get("max_output") or ())
        self._needs = [(capability, compile_expr(n["when"], interpreter, f"{where}: needs.{capability}"), n["param"])
                       for capability, n in (spec.get("needs") or {}).items()]
        limits = spec.get("ratelimit_headers")  # {kind: (limit, remaining, reset) header names}
        self.ratelimit_names = {kind: tuple(limits[part].format(kind=kind) for part in ("limit", "remaining", "reset"))
                                for kind in ("requests", "tokens")} if limits else {}
        self.ratelimit_reset = limits and limits["reset_as"]
        err = spec["error"]
        self._error_message = compile_expr(err["message"], interpreter, f"{where}: error.message")
        self._error_status = compile_expr(err["status"], interpreter, f"{where}: error.status")
        self._error_body = compile_expr(err["body"], interpreter, f"{where}: error.body")
        # a provider that pauses long turns: continued for clients of other dialects (arch/rules/resume.py)
        self.pause = Pause(spec["pause"], interpreter, where) if "pause" in spec else None

    def validate(self, body):
        """Raise a 400 naming the first offending field, in the request's own terms."""
        schemas.check(self.request_schema, body)

    def needs(self, body):
        """(capability, param) for each capability of rules/models.yaml this request needs."""
        return [(capability, param) for capability, when, param in self._needs if truthy(when(body))]

    def output_over(self, body, limit):
        """The output-token fields of `body` above `limit`."""
        return [f for f in self.max_output if _is_number(body.get(f)) and body[f] > limit]

    def render_error(self, status, message, param=None, request_id=None, kind=None):
        """(status, body) of an error in this dialect's envelope."""
        root = {"status": status, "message": message, "param": param, "request_id": request_id, "kind": kind}
        root["status"] = status = self._error_status(root)
        return status, self._error_body(root)

    def stream_failure(self, message, request_id=None, response=None):
        """The in-stream event that says a started stream failed (`response`: the answer so far)."""
        if self._failure is not None:
            return self._failure({"message": message, "response": response})
        return self.render_error(502, message, None, request_id)[1]

    def error_message(self, body):
        """The human message inside an error body this dialect produced."""
        try:
            return self._error_message(json.loads(body)) or None
        except (ValueError, TypeError, AttributeError):
            return None

    def usage(self, usage):
        """A usage object of this dialect as {input, output, cached} (input includes cached)."""
        if not isinstance(usage, dict):
            return None
        return {field: sum(_number_at(usage, path) for path in paths) for field, paths in self._usage.items()}

    def needs_usage_request(self, body):
        """A streaming request that will not get usage unless the gateway asks for it."""
        return self.usage_request is not None and body.get("stream") is True and not truthy(self.usage_asked(body))

    def ends(self, name, data):
        """Whether this event (a whole one, never a piece of content) ends the stream on purpose."""
        return name in self._end_names or data.startswith(self._end_data)

    def frame_raw(self, name, data):
        if self.named_events and name:
            return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
        return b"data: " + data + b"\n\n"

    def frame(self, event):
        if isinstance(event, str):
            return b"data: " + event.encode() + b"\n\n"
        data = jsonio.dumps(event)
        if self.named_events:
            return b"event: " + event.get("type", "message").encode() + b"\ndata: " + data + b"\n\n"
        return b"data: " + data + b"\n\n"


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_at(obj, path):
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if _is_number(obj) else 0


def _guard(when):
    """(path, value) when the rule can only match if the field at path is the string value:
    `e.type == 'x'`, alone or first in an `&&`; else None."""
    if not isinstance(when, str):
        return None
    node = jmespath.compile(when).parsed
    while node["type"] == "and_expression":
        node = node["children"][0]
    if node["type"] != "comparator" or node["value"] != "eq":
        return None
    left, right = node["children"]
    if right["type"] != "literal" or not isinstance(right["value"], str):
        return None
    fields = left["children"] if left["type"] == "subexpression" else [left]
    if not all(f["type"] == "field" for f in fields):
        return None
    return tuple(f["value"] for f in fields), right["value"]


def dispatch(rules, whens):
    """Rules indexed by the field most of them test (`e.type`, `e.kind`): an event is only
    checked against the rules that can match it, in their declared order. Same result as
    trying every rule in order: a rule guarded by another value cannot match."""
    guards = [_guard(w) for w in whens]
    paths = Counter(g[0] for g in guards if g)
    if not paths:
        return lambda root: rules
    path = paths.most_common(1)[0][0]
    values = {g[1] for g in guards if g and g[0] == path}
    others = [r for r, g in zip(rules, guards) if not (g and g[0] == path)]
    buckets = {v: [r for r, g in zip(rules, guards) if not (g and g[0] == path) or g[1] == v] for v in values}
    lookup = compile_path(path)

    def candidates(root):
        value = lookup(root)
        return buckets.get(value, others) if type(value) is str else others
    return candidates


class StreamProgram:
    """A declared stream state machine: initial state, start steps, optional
    `split` of each event into parts, `events` rules (first match runs), `eof` rules."""

    def __init__(self, spec, interpreter, where):
        procedures = {}
        for name, steps in (spec.get("procedures") or {}).items():
            procedures[name] = compile_steps(steps, interpreter, procedures, f"{where}.procedures.{name}")
        self.state = dict(spec.get("state") or {})
        self.start = compile_steps(spec.get("start"), interpreter, procedures, f"{where}.start")
        self.split = compile_expr(spec["split"], interpreter, f"{where}.split") if "split" in spec else None
        self.rules = self._rules(spec.get("events"), interpreter, procedures, f"{where}.events")
        self.eof = self._rules(spec.get("eof"), interpreter, procedures, f"{where}.eof")

    @staticmethod
    def _rules(rules, interpreter, procedures, where):
        """A function of the root ({e, s, c}) giving the rules that may match its event, in order."""
        compiled = [(compile_expr(r["when"], interpreter, f"{where}[{n}].when"),
                     compile_steps(r["do"], interpreter, procedures, f"{where}[{n}].do"))
                    for n, r in enumerate(rules or ())]
        return dispatch(compiled, [r["when"] for r in rules or ()])

    def new_state(self):
        # `set` replaces values and never mutates them, so a shallow copy isolates requests.
        return dict(self.state)


class Translation:
    def __init__(self, spec, where):
        interpreter = rule_interpreter(spec)
        self.client, self.provider = spec["client"], spec["provider"]
        derive = spec.get("derive") or {}
        self._derive = {part: [(name, compile_expr(text, interpreter, f"{where}: derive.{part}.{name}"))
                               for name, text in (derive.get(part) or {}).items()] for part in ("request", "response")}
        self.rejects = [(compile_expr(r["when"], interpreter, f"{where}: reject[{n}].when"), r["message"], r.get("param"))
                        for n, r in enumerate(spec.get("reject") or ())]
        self._request = compile_mapping(spec["request"], interpreter, f"{where}: request")
        self._response = compile_mapping(spec["response"], interpreter, f"{where}: response")
        self.stream = StreamProgram(spec["stream"], interpreter, f"{where}: stream")

    def request(self, body, facts=None):
        """The provider's request; expressions also see the target model's facts
        (rules/models.yaml) as `_model`."""
        try:
            root = self._derived("request", {**body, "_model": facts.view if facts is not None else {}})
            for when, message, param in self.rejects:
                if truthy(when(root)):
                    raise GatewayError(400, message, param)
            return self._request(root)
        except (TypeError, AttributeError, KeyError, ValueError, JMESPathError) as e:
            # a shape the schema let through but the mapping cannot read: the request's fault
            log.warning("cannot translate a %s request for %s: %r", self.client, self.provider, e, exc_info=True)
            raise GatewayError(400, f"the request cannot be translated for a {self.provider} model: {e}") from None

    def response(self, body, request, facts=None):
        """The client's answer; expressions also see the client's request as `_request`
        and the model's facts as `_model`."""
        root = {**body, "_request": request, "_model": facts.view if facts is not None else {}}
        try:
            return self._response(self._derived("response", root))
        except (TypeError, AttributeError, KeyError, ValueError, JMESPathError) as e:
            # a JSON object the mapping cannot read: the provider's fault
            log.warning("cannot translate a %s answer for a %s client: %r", self.provider, self.client, e)
            raise GatewayError(502, f"the {self.provider} provider's answer cannot be translated: {e}") from None

    def _derived(self, part, root):
        """`root` with the `derive.<part>` values added, each seeing those before it."""
        for name, fn in self._derive[part]:
            root[name] = fn(root)
        return root
