"""What routing rules read: the request, its headers, and facts computed from it.

A rule's `when` is JMESPath over a plain dict of these. The costly ones
(counting tokens, looking for images) are computed only when some rule of
the list being evaluated names them, which is known at load (`reads`):

    model          the model the client asked for (null when it named none)
    body           the request body as sent
    headers        request headers, by lower-case name
    dialect        the client's dialect: openai or anthropic
    stream         whether the client asked for a stream
    input_tokens   estimated input tokens (4 characters a token, images a fixed amount)
    has_images     an image anywhere in the messages
    has_tools      tool definitions offered
    has_thinking   extended thinking / reasoning effort asked for
    last_user_message  the text of the last user message ("" when none)
    model_facts    what rules/models.yaml says of the requested model ({context_window,
                   max_output_tokens, vision: true, tools: true, ...}; null when it says nothing)
"""
import jmespath

from arch.rules.functions import IMAGE_TYPES, estimate_tokens


def _has_images(body):
    for message in _messages(body):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") in IMAGE_TYPES for b in content):
            return True
    return False


def _messages(body):
    messages = body.get("messages")
    return messages if isinstance(messages, list) else ()


def _has_thinking(body):
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        return thinking.get("type") not in (None, "disabled")
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort") or (reasoning.get("effort") if isinstance(reasoning, dict) else None)
    return effort not in (None, "none", "minimal")


def last_user_message(body):
    """The text of the last user message: what a router decides on (a tool result is no new question)."""
    for message in reversed(_messages(body)):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            text = " ".join(b["text"] for b in content
                            if isinstance(b, dict) and b.get("type") in ("text", "input_text")
                            and isinstance(b.get("text"), str))
            if text or not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
                return text
    return ""


COMPUTED = {
    "input_tokens": estimate_tokens,
    "has_images": _has_images,
    "has_tools": lambda body: bool(body.get("tools") or body.get("functions")),
    "has_thinking": _has_thinking,
    "last_user_message": last_user_message,
    "model_facts": None,  # needs the routes and the model table: given to `facts` by the router
}


class _Headers(dict):
    """The request headers as a rule reads them (`headers."x-tier"`), by any case of name,
    without copying them all."""

    __slots__ = ("source",)

    def __init__(self, source):
        super().__init__()
        self.source = source

    def get(self, key, default=None):
        return self.source.get(key, default)


def reads(expression):
    """The computed facts a `when` names (any field of that name: a superset, found at load)."""
    if not isinstance(expression, str):
        return set()
    names, stack = set(), [jmespath.compile(expression).parsed]
    while stack:
        node = stack.pop()
        if node.get("type") == "field" and node.get("value") in COMPUTED:
            names.add(node["value"])
        stack.extend(c for c in node.get("children", ()) if isinstance(c, dict))
    return names


def facts(body, headers, dialect, computed=(), model_facts=None):
    """The root a rule list is evaluated on, with the computed facts it reads."""
    out = {"model": body.get("model"), "body": body, "headers": _Headers(headers), "dialect": dialect,
           "stream": body.get("stream") is True}
    add(out, body, computed, model_facts)
    return out


def add(out, body, computed, model_facts):
    for name in computed:
        if name not in out:
            out[name] = model_facts(out["model"]) if name == "model_facts" else COMPUTED[name](body)
