"""Preference-aligned routing: a router model reads the conversation and the
routes' descriptions and names the route; the route's models answer.

The router is any configured model, prompted in Arch-Router's format (the
routes and the conversation as JSON inside XML tags; the answer is
`{"route": "<name>"}`), so a local Arch-Router on Ollama or any chat model
serves. Whatever goes wrong with it (timeout, error, an answer that is not
that JSON, a route nobody declared, or "other") sends the request to the
default target: routing never fails a request.

Only the conversation up to its last real user message is shown, so the
steps of a tool loop (tool results, which are no new question) keep the
model the turn started on; decisions are cached per conversation prefix.
"""
import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass

from arch.upstream.client import Call, Timeouts, UpstreamError

CACHE_SIZE = 10_000
MAX_MESSAGES = 16      # the last messages shown to the router
MAX_CHARS = 2000       # of each one
PROMPT = """
You are a helpful assistant designed to find the best suited route.
You are provided with route description within <routes></routes> XML tags:
<routes>

{routes}

</routes>

<conversation>

{conversation}

</conversation>

Your task is to decide which route is best suit with user intent on the conversation in <conversation></conversation> XML tags.  Follow the instruction:
1. If the latest intent from user is irrelevant or user intent is full filled, response with other route {{"route": "other"}}.
2. You must analyze the route descriptions and find the best match route for user latest intent.
3. You only response the name of the route that best matches the user's request, use the exact name in the <routes></routes>.

Based on your analysis, provide your response in the following JSON formats if you decide to match any route:
{{"route": "route_name"}}
"""
_ROUTE = re.compile(r'\{\s*"route"\s*:\s*"([^"]{1,200})"\s*\}')


@dataclass(frozen=True)
class Preference:
    name: str
    description: str
    models: tuple   # names, in the configured order
    prefer: str     # cheapest | fastest | none


def question_end(messages):
    """Index after the last user message that asks something (a message of only tool
    results continues a turn, it does not start one); 0 when there is none."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, list) and content and all(
                isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            continue
        return i + 1
    return 0


def _text(content):
    if isinstance(content, str):
        return content[:MAX_CHARS]
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content
                        if isinstance(b, dict) and isinstance(b.get("text"), str))[:MAX_CHARS]
    return ""


def conversation(messages):
    """What the router sees: user and assistant text up to the last question, bounded."""
    shown = [{"role": m["role"], "content": _text(m.get("content"))}
             for m in messages[:question_end(messages)][-MAX_MESSAGES:]
             if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    return [m for m in shown if m["content"]]


def prompt(preferences, messages):
    routes = [{"name": p.name, "description": p.description} for p in preferences]
    return PROMPT.format(routes=json.dumps(routes, ensure_ascii=False),
                         conversation=json.dumps(conversation(messages), ensure_ascii=False))


def parse_route(text):
    """The route the router named, or None."""
    if not isinstance(text, str):
        return None
    m = _ROUTE.search(text)
    return m.group(1) if m else None


class Cache:
    """Conversation prefix -> route name, the oldest forgotten first."""

    def __init__(self, size=CACHE_SIZE):
        self.size, self.items = size, OrderedDict()

    @staticmethod
    def key(body):
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        prefix = [body.get("system"), messages[:question_end(messages)]]
        return hashlib.blake2b(json.dumps(prefix, sort_keys=True, default=str).encode(), digest_size=16).digest()

    def get(self, key):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key, value):
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)


async def ask(pool, target, translation, preferences, body, timeout, request_id):
    """The router model's answer: (route name or None, why not). Never raises."""
    question = {"model": target.model, "messages": [{"role": "user", "content": prompt(preferences,
                                                                                         body.get("messages") or [])}],
                "max_tokens": 64, "temperature": 0, "stream": False}
    sent = translation.request(question) if translation else question
    sent["model"] = target.model
    chunks = []
    limits = target.policy.limits
    call = Call(lambda status, headers: None, chunks.append, limits.body)
    headers = {"Content-Type": "application/json", "x-request-id": request_id, **target.headers}
    try:
        await pool.send(call, "POST", target.url, headers, json.dumps(sent).encode(),
                        Timeouts(connect=timeout, first_byte=timeout, idle=timeout, total=timeout), limits)
    except UpstreamError as e:
        return None, f"router {e.kind}"
    if not 200 <= (call.status or 0) < 300:
        return None, f"router HTTP {call.status}"
    try:
        answer = json.loads(b"".join(chunks))
        if translation:
            answer = translation.response(answer, question)
        text = answer["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, "router answer unreadable"
    route = parse_route(text)
    return (route, None) if route else (None, "router answer unparseable")
