"""What routing rules read: the request, its headers, and facts computed from it.

A rule's `when` is JMESPath over a `Facts` object. It is a dict whose `get`
computes a fact the first time a rule reads it and keeps it, so a request
pays only for the facts its rules use (a rule on a header never counts
tokens). Compiled JMESPath reads fields with `get`, so it sees them all:

    model          the model the client asked for (null when it named none)
    body           the request body as sent
    headers        request headers, lower-case names
    dialect        the client's dialect: openai or anthropic
    stream         whether the client asked for a stream
    input_tokens   estimated input tokens (4 characters a token, images a fixed amount)
    has_images     an image anywhere in the messages
    has_tools      tool definitions offered
    has_thinking   extended thinking / reasoning effort asked for
    last_user_message  the text of the last user message ("" when none)
"""
from arch.rules.functions import IMAGE_TYPES, estimate_tokens


def _block_types(facts):
    """Every content block type in the messages (one pass, shared by the facts that need it)."""
    types = set()
    for message in _messages(facts.body):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            types.update(b.get("type") for b in content if isinstance(b, dict))
    return types


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


COMPUTE = {
    "model": lambda f: f.body.get("model"),
    "body": lambda f: f.body,
    "headers": lambda f: {k.lower(): v for k, v in f.request_headers.items()},
    "dialect": lambda f: f.dialect,
    "stream": lambda f: f.body.get("stream") is True,
    "input_tokens": lambda f: estimate_tokens(f.body),
    "has_images": lambda f: not IMAGE_TYPES.isdisjoint(f.get("block_types")),
    "has_tools": lambda f: bool(f.body.get("tools") or f.body.get("functions")),
    "has_thinking": lambda f: _has_thinking(f.body),
    "last_user_message": lambda f: last_user_message(f.body),
    "block_types": _block_types,
}


class Facts(dict):
    """The root a routing rule's `when` is evaluated on; facts appear as they are read."""

    __slots__ = ("body", "request_headers", "dialect")

    def __init__(self, body, headers, dialect):
        super().__init__()
        self.body, self.request_headers, self.dialect = body, headers, dialect

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            compute = COMPUTE.get(key)
            if compute is None:
                return default
            value = self[key] = compute(self)
            return value
