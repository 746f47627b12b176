"""The built-in `mock` provider: answers in-process, with no network and no key.

It speaks the OpenAI dialect only, exactly as an OpenAI-compatible server would
(same bytes, same streaming frames), so an Anthropic client reaches it through
the same translation rules as a real OpenAI provider: what a user tests
against the mock is the path their real traffic takes.

Answers are deterministic (the same request gives the same answer):
- a request with `tools`, whose last message is not a tool result, calls the
  first tool (or the one `tool_choice` names) with arguments built from its
  JSON Schema;
- `response_format` json_schema / json_object gets a JSON answer that fits;
- anything else gets `Mock answer from <model>: you said "<last user text>"`.

Latency and errors come from the config entry (`mock_latency`, `mock_chunk_delay`,
`mock_error`, `mock_error_rate`), which `rules/providers/mock.yaml` puts in the
query string of its URL, so each configured mock model can behave differently.
"""
import asyncio
import hashlib
import json
import random
from time import monotonic, time
from urllib.parse import parse_qsl, urlsplit

from arch.config import parse_duration

MAX_ECHO = 200        # characters of the user's text repeated in the answer
MAX_DEPTH = 6         # how deep an example object for a JSON Schema may nest
ERRORS = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
          404: "invalid_request_error", 429: "rate_limit_exceeded"}


async def respond(call, target, body):
    """Answer one request into `call` (its on_head/on_data), as a provider would."""
    settings = dict(parse_qsl(urlsplit(target).query))
    await _pause(call, parse_duration(settings.get("latency") or 0))
    error = int(settings.get("error") or 0)
    rate = float(settings.get("error_rate") or 0)
    if not error and rate and random.uniform(0, 100) < rate:
        error = 503
    try:
        request = json.loads(body)
    except ValueError:
        request = None
    if error or not isinstance(request, dict):
        status = error or 400
        message = f"mock error {status} (configured)" if error else "the request body is not JSON"
        kind = ERRORS.get(status, "server_error")
        payload = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        headers = {"content-type": "application/json", **({"retry-after": "1"} if status == 429 else {})}
        return _emit(call, status, headers, [json.dumps(payload).encode()])
    answer = _answer(request)
    if request.get("stream") is True:
        frames = _stream_frames(request, answer)
        _emit(call, 200, {"content-type": "text/event-stream"}, frames[:1])
        delay = parse_duration(settings.get("chunk_delay") or 0)
        for frame in frames[1:]:
            await _pause(call, delay)
            call._last = monotonic()
            call.on_data(frame)
        return
    _emit(call, 200, {"content-type": "application/json"}, [json.dumps(_completion(request, answer)).encode()])


def _emit(call, status, headers, chunks):
    call.status, call._last = status, monotonic()
    call.on_head(status, headers)
    for chunk in chunks:
        call.on_data(chunk)


async def _pause(call, seconds):
    """Sleep, but give up as soon as the call is cancelled (client gone, timeout)."""
    end = monotonic() + seconds
    while not call.failure and monotonic() < end:
        await asyncio.sleep(min(0.05, end - monotonic()))
    if call.failure:
        raise call.failure


def _answer(request):
    """(text, tool call or None) for a request, deterministically."""
    messages = request.get("messages") if isinstance(request.get("messages"), list) else []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    tools = [t for t in request.get("tools") or () if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    choice = request.get("tool_choice")
    if tools and last.get("role") != "tool" and choice != "none":
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        tool = next((t for t in tools if t["function"].get("name") == named), tools[0])["function"]
        arguments = json.dumps(_example(tool.get("parameters") or {}, 0))
        call_id = "call_mock_" + hashlib.sha256(arguments.encode() + str(len(messages)).encode()).hexdigest()[:16]
        return None, {"id": call_id, "type": "function", "function": {"name": tool.get("name"), "arguments": arguments}}
    fmt = request.get("response_format") if isinstance(request.get("response_format"), dict) else {}
    if fmt.get("type") == "json_schema":
        return json.dumps(_example((fmt.get("json_schema") or {}).get("schema") or {}, 0)), None
    if fmt.get("type") == "json_object":
        return json.dumps({"answer": _said(last)}), None
    if last.get("role") == "tool":
        return f"Mock answer from {request.get('model')}: the tool said \"{_said(last)}\"", None
    return f"Mock answer from {request.get('model')}: you said \"{_said(last)}\"", None


def _said(message):
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content[:MAX_ECHO] if isinstance(content, str) else ""


def _example(schema, depth):
    """A small value that fits a JSON Schema (types, enum, const, required properties)."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _example(schema[key][0], depth + 1)
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object" or isinstance(schema.get("properties"), dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: _example(sub, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        return [_example(schema.get("items"), depth + 1)] if schema.get("minItems") else []
    return {"string": "mock", "integer": 1, "number": 1.5, "boolean": True}.get(kind)


def _usage(request, pieces):
    prompt = len(json.dumps(request.get("messages"))) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": pieces, "total_tokens": prompt + pieces,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


def _head(request):
    digest = hashlib.sha256(json.dumps(request.get("messages"), sort_keys=True).encode()).hexdigest()[:24]
    return {"id": f"chatcmpl-mock{digest}", "created": int(time()), "model": request.get("model"),
            "system_fingerprint": "fp_mock"}


def _completion(request, answer):
    text, tool = answer
    message = {"role": "assistant", "content": text, "refusal": None, **({"tool_calls": [tool]} if tool else {})}
    pieces = len((text or (tool and tool["function"]["arguments"]) or "").split())
    return {**_head(request), "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if tool else "stop"}],
            "usage": _usage(request, pieces)}


def _stream_frames(request, answer):
    """The SSE frames of the answer, word by word, as OpenAI streams them."""
    text, tool = answer
    head = {**_head(request), "object": "chat.completion.chunk"}
    with_usage = bool((request.get("stream_options") or {}).get("include_usage")) \
        if isinstance(request.get("stream_options"), dict) else False

    def chunk(delta, finish=None):
        c = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**c, "usage": None} if with_usage else c

    chunks = [chunk({"role": "assistant", "content": None if tool else "", "refusal": None})]
    if tool:
        arguments = tool["function"]["arguments"]
        half = len(arguments) // 2
        chunks.append(chunk({"tool_calls": [{"index": 0, "id": tool["id"], "type": "function",
                                             "function": {"name": tool["function"]["name"], "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                   for part in (arguments[:half], arguments[half:]) if part]
        pieces = 2
    else:
        words = text.split(" ")
        chunks += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        pieces = len(words)
    chunks.append(chunk({}, "tool_calls" if tool else "stop"))
    if with_usage:
        chunks.append({**head, "choices": [], "usage": _usage(request, pieces)})
    return [b"data: %s\n\n" % json.dumps(c).encode() for c in chunks] + [b"data: [DONE]\n\n"]
