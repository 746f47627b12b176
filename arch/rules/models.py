"""Model facts from `rules/models.yaml`: context window, output limit, capabilities.

The table is turned into a lookup once, at load: exact ids in a dict, patterns
compiled and ordered most specific first. A request then costs one dict hit
(answers for ids first seen through a pattern are remembered, within a bound).
The facts are used in two ways: the handler lowers an output-token request
above the model's maximum and refuses what the model cannot do; translations
read them (as `_model` in their expressions) to choose how to map a request.
"""
import fnmatch
import re

from arch.errors import GatewayError

CAPABILITIES = ("vision", "tools", "reasoning", "structured_output", "responses_only")
_MEMO_LIMIT = 4096  # ids matched by a pattern that are remembered; model ids can come from clients


class ModelFacts:
    """What one model id can do. `view` is how rules expressions see it:
    {context_window, max_output_tokens, <capability>: true ...}."""

    __slots__ = ("model", "context_window", "max_output_tokens", "capabilities", "view")

    def __init__(self, model, spec):
        self.model = model
        self.context_window = spec.get("context_window")
        self.max_output_tokens = spec.get("max_output_tokens")
        self.capabilities = frozenset(spec.get("capabilities") or ())
        self.view = {"context_window": self.context_window, "max_output_tokens": self.max_output_tokens,
                     **{c: True for c in self.capabilities}}

    def admit(self, needs, model, dialect=None):
        """Raise a 400 naming the first capability the request needs that this model lacks
        (`dialect`: the one the request reaches the model in)."""
        if "responses_only" in self.capabilities and dialect != "responses":
            raise GatewayError(400, f"model '{model}' is served only by OpenAI's Responses API (/v1/responses), "
                                    "not by chat completions or messages", "model")
        for capability, param in needs:
            if capability not in self.capabilities:
                raise GatewayError(400, f"model '{model}' does not support {capability.replace('_', ' ')}"
                                        f" (rules/models.yaml), which this request uses", param)


class ModelTable:
    def __init__(self, spec):
        self.exact, patterns = {}, []
        for key, facts in (spec or {}).items():
            key = str(key)
            if any(c in key for c in "*?["):
                literal = len(re.sub(r"[*?]", "", key))
                patterns.append((-literal, key, re.compile(fnmatch.translate(key)).match, facts))
            else:
                self.exact[key] = ModelFacts(key, facts)
        self.patterns = [(match, ModelFacts(key, facts)) for _, key, match, facts in sorted(patterns)]
        self._memo = {}

    def get(self, model):
        """The facts for `model`, or None when nothing in the table matches it."""
        facts = self.exact.get(model)
        if facts is not None or not isinstance(model, str):
            return facts
        try:
            return self._memo[model]
        except KeyError:
            pass
        facts = next((f for match, f in self.patterns if match(model)), None)
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[model] = facts
        return facts
