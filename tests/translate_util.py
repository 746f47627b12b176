"""Helpers shared by the cross-dialect translation tests.

Raw HTTP to the gateway (so the exact SSE frames can be checked, not only what
the SDKs make of them) and small builders for Anthropic / OpenAI transcripts.
"""
from __future__ import annotations

import http.client
import json

from fakes import parse_sse, vector

CLAUDE = "claude-3-5-sonnet-20241022"   # served by anthropic_fake
GPT = "gpt-4o-mini"                     # served by openai_fake
LLAMA = "llama3.1"                      # served by ollama_fake

USER = [{"role": "user", "content": "Hi"}]


def raw_post(gateway, path, body, headers=None, timeout=10):
    """POST JSON to the gateway; (status, lowercased headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=timeout)
    hdrs = {"content-type": "application/json", "authorization": "Bearer test-key"}
    if path.startswith("/v1/messages"):
        hdrs.update({"x-api-key": "test-key", "anthropic-version": "2023-06-01"})
    conn.request("POST", path, body=json.dumps(body).encode(), headers={**hdrs, **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def openai_frames(data: bytes):
    """The payloads of an OpenAI (data-only) stream: dicts, or the string '[DONE]'.
    Fails if any frame is named (OpenAI streams have no `event:` lines)."""
    out = []
    for name, text in parse_sse(data):
        assert name is None, f"OpenAI stream frame with an event name: {name!r}"
        out.append(text if text == "[DONE]" else json.loads(text))
    return out


def anthropic_events(data: bytes):
    """The events of an Anthropic stream as dicts; each frame's `event:` must equal data.type."""
    out = []
    for name, text in parse_sse(data):
        obj = json.loads(text)
        assert name == obj.get("type"), f"event name {name!r} != data.type {obj.get('type')!r}"
        out.append(obj)
    return out


# --- transcripts ---------------------------------------------------------------------------

def anth_sse(events) -> str:
    """An Anthropic SSE transcript from event dicts."""
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


def oai_sse(chunks, done=True) -> str:
    """An OpenAI SSE transcript from chunk dicts (+ [DONE])."""
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + ("data: [DONE]\n\n" if done else "")


def anth_text_stream(text_pieces, stop_reason="end_turn", usage_start=None, usage_delta=None, msg_id="msg_t1"):
    """A minimal, well-formed Anthropic text stream."""
    usage_start = usage_start or {"input_tokens": 10, "output_tokens": 1}
    usage_delta = usage_delta or {"output_tokens": len(text_pieces)}
    return anth_sse([
        {"type": "message_start", "message": {"id": msg_id, "type": "message", "role": "assistant", "content": [],
                                              "model": CLAUDE, "stop_reason": None, "stop_sequence": None,
                                              "usage": usage_start}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in text_pieces),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": usage_delta},
        {"type": "message_stop"},
    ])


def oai_chunk(delta=None, finish=None, cid="chatcmpl-t1", usage=False, choices=True):
    c = {"id": cid, "object": "chat.completion.chunk", "created": 1727346168, "model": "gpt-4o-2024-08-06"}
    c["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}] if choices else []
    if usage is not False:
        c["usage"] = usage
    return c


def oai_text_stream(text_pieces, finish="stop", usage=None, cid="chatcmpl-t1"):
    usage = usage or {"prompt_tokens": 10, "completion_tokens": len(text_pieces), "total_tokens": 10 + len(text_pieces)}
    return oai_sse([
        oai_chunk({"role": "assistant", "content": "", "refusal": None}, cid=cid),
        *(oai_chunk({"content": p}, cid=cid) for p in text_pieces),
        oai_chunk({}, finish, cid=cid),
        oai_chunk(cid=cid, usage=usage, choices=False),
    ])


def anth_message(content, stop_reason="end_turn", usage=None, msg_id="msg_t1"):
    return {"id": msg_id, "type": "message", "role": "assistant", "model": CLAUDE, "content": content,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 5}}


def oai_completion(message, finish="stop", usage=None, cid="chatcmpl-t1"):
    return {"id": cid, "object": "chat.completion", "created": 1727346142, "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None, **message},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def vector_text(name) -> str:
    """All text_delta / delta.content text of a stream vector, joined."""
    text = []
    for _, data in parse_sse(vector(name).encode()):
        if data == "[DONE]":
            continue
        obj = json.loads(data)
        if obj.get("type") == "content_block_delta" and obj["delta"].get("type") == "text_delta":
            text.append(obj["delta"]["text"])
        for ch in obj.get("choices") or ():
            if ch["delta"].get("content"):
                text.append(ch["delta"]["content"])
    return "".join(text)
