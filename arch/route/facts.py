"""What routing rules read: the request, its headers, and facts computed from it.

A rule's `when` is JMESPath over a plain dict of these. The computed ones are
computed only when a rule that names them is reached (which rules name which
is known at load, from their syntax trees: `reads`), once per request:

    model          the model the client asked for (null when it named none)
    body           the request body as sent
    headers        request headers, by lower-case name
    dialect        the client's dialect: openai or anthropic
    stream         whether the client asked for a stream
    input_tokens   estimated input tokens: the body's bytes / 4, each image or document counted
                   as IMAGE_TOKENS instead of its bytes. No walk over the text; JSON's keys and
                   quotes count as text, so it errs high, towards the long-context model: a few
                   hundred tokens for a small request, 10-30% above `estimate_tokens` (the text
                   alone) for the large ones a threshold is about
    has_images     an image or document anywhere in the messages (tool results included)
    has_tools      tool definitions offered
    has_thinking   extended thinking / reasoning effort asked for
    last_user_message  the text of the last user message ("" when none)
    model_facts    what rules/models.yaml says of the requested model ({context_window,
                   max_output_tokens, vision: true, tools: true, ...}; null when it says nothing)
"""
from arch.rules.functions import IMAGE_TOKENS, IMAGE_TYPES


_LOOK = IMAGE_TYPES | {"tool_result"}


def _images(body):
    """(images and documents in the messages, the characters of their strings): a walk over the
    content blocks of the messages an image can be in (not an assistant's), and into a tool
    result's blocks (a screenshot a tool returned)."""
    count = chars = 0
    for message in _messages(body):
        if message.__class__ is not dict or (content := message.get("content")).__class__ is not list \
                or message.get("role") == "assistant":
            continue  # plain text, the common case
        for block in content:
            if block.__class__ is dict and block.get("type") in _LOOK:
                if block["type"] != "tool_result":
                    count, chars = count + 1, chars + _chars(block)
                elif (inner := block.get("content")).__class__ is list:
                    for part in inner:
                        if part.__class__ is dict and part.get("type") in IMAGE_TYPES:
                            count, chars = count + 1, chars + _chars(part)
    return count, chars


def _chars(value):
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(map(_chars, value.values()))
    return sum(map(_chars, value)) if isinstance(value, list) else 0


def _input_tokens(root, raw):
    count, chars = _images(root["body"])
    root.setdefault("has_images", count > 0)  # the same walk answers both
    return max(len(raw) - chars, 0) // 4 + count * IMAGE_TOKENS


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


COMPUTED = {  # name -> function of (the root, the raw body bytes)
    "input_tokens": _input_tokens,
    "has_images": lambda root, raw: _images(root["body"])[0] > 0,
    "has_tools": lambda root, raw: bool(root["body"].get("tools") or root["body"].get("functions")),
    "has_thinking": lambda root, raw: _has_thinking(root["body"]),
    "last_user_message": lambda root, raw: last_user_message(root["body"]),
    "model_facts": None,  # needs the routes and the model table: the router's (`Router._model_facts`)
}
_MISSING = object()


def computed(root, raw, name, compute):
    """A computed fact of this request, computed on its first use and kept in the root (where
    other rule lists of the same request, and nodes compiled by `arch/rules/jmes.py`, find it)."""
    value = root.get(name, _MISSING)
    if value is _MISSING:
        value = root[name] = compute(root, raw)
    return value


class _Headers(dict):
    """The request headers as a rule reads them (`headers."x-tier"`), by any case of name,
    without copying them all."""

    __slots__ = ("source",)

    def __init__(self, source):
        super().__init__()
        self.source = source

    def get(self, key, default=None):
        return self.source.get(key, default)


def header(headers, name):
    """A request header's value (several joined by commas, as `headers.get` gives them) or
    None: through `get_list`, since Tornado's `get` raises and catches a KeyError inside
    for a header that is absent, the usual case for a rule's header."""
    values = headers.get_list(name)
    return ",".join(values) if values else None


def reads(tree):
    """The computed facts a `when` names, from its JMESPath syntax tree (any field of that
    name: a superset, found at load)."""
    names, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if node.get("type") == "field" and node.get("value") in COMPUTED:
            names.add(node["value"])
        stack.extend(c for c in node.get("children", ()) if isinstance(c, dict))
    return names


def facts(body, headers, dialect):
    """The root a rule list is evaluated on; computed facts are added as rules reach them."""
    return {"model": body.get("model"), "body": body, "headers": _Headers(headers), "dialect": dialect,
            "stream": body.get("stream") is True}
