"""Custom JMESPath functions that the rules YAML calls by name.

Plain JMESPath reshapes JSON well but cannot count, look up a key held in a
variable, or regroup a conversation (OpenAI `tool` messages into Anthropic
`tool_result` blocks). Those steps are small named functions here, registered
once per rules file, so that the YAML still reads as the whole mapping.
Each structural function is the single place its rule lives; docs/wire-formats.md says
what each mapping must do.
"""
import hashlib
import json
import re
import time
import uuid as _uuid

from jmespath import functions

from arch import jsonio
from arch.errors import GatewayError


def to_json(value):
    return jsonio.dumps(value).decode()


def _text_of(content, sep=""):
    """Text of a string or of a list of text parts/blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return sep.join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") in ("text", "refusal"))


def _parse_arguments(arguments):
    """Tool-call arguments (a JSON string, or an object from Ollama) as an object: Anthropic needs one."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --- OpenAI messages -> Anthropic --------------------------------------------

def _image_source(url):
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";")[0]
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _anthropic_blocks(content, where):
    """User/assistant content (string or parts) as Anthropic blocks, never an empty text block (docs/wire-formats.md, pitfall 11)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for n, part in enumerate(content or ()):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind) if kind == "refusal" else part.get("text")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url") or ""
            blocks.append({"type": "image", "source": _image_source(url)})
        elif kind == "file" and (part.get("file") or {}).get("file_data"):
            blocks.append({"type": "document", "source": _image_source(part["file"]["file_data"])})
        else:
            raise GatewayError(400, f"content part type '{kind}' cannot be sent to an Anthropic model", f"{where}.content[{n}]")
    return blocks


def _is_system(message):
    return message.get("role") in ("system", "developer")


def anthropic_system(messages):
    """Every system and developer message, wherever it stands, one block each (docs/wire-formats.md, pitfall 13)."""
    if all(map(_is_system, messages)):
        return None  # a system-only request: anthropic_messages makes its text the user turn
    texts = [_text_of(m.get("content")) for m in messages if _is_system(m)]
    return [{"type": "text", "text": t} for t in texts if t] or None


def anthropic_messages(messages):
    turns = []  # [role, blocks, plain_string_or_None]

    def add(role, blocks, plain=None):
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
            turns[-1][2] = None
        else:
            turns.append([role, blocks, plain])

    for n, m in enumerate(messages):
        role, where = m.get("role"), f"messages[{n}]"
        content = m.get("content")
        if _is_system(m):
            continue
        if role not in ("user", "assistant", "tool"):
            raise GatewayError(400, f"{where}.role: '{role}' cannot be sent to an Anthropic model", f"{where}.role")
        if m.get("function_call"):  # the deprecated form of tool_calls
            raise GatewayError(400, f"{where}.function_call cannot be sent to an Anthropic model: use tool_calls",
                               f"{where}.function_call")
        if role == "user":
            add("user", _anthropic_blocks(content, where), content if isinstance(content, str) and content else None)
        elif role == "assistant":
            blocks = _anthropic_blocks(content, where)
            if m.get("refusal"):
                blocks.append({"type": "text", "text": m["refusal"]})
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": _parse_arguments(fn.get("arguments"))})
            add("assistant", blocks)
        elif role == "tool":
            result = {"type": "tool_result", "tool_use_id": m.get("tool_call_id")}
            text = _text_of(content)
            if text:  # an empty text block would be a 400 upstream
                result["content"] = text
            add("user", [result])
    if not turns:  # system-only request: its text becomes the one user turn
        text = "\n".join(_text_of(m.get("content")) for m in messages)
        return [{"role": "user", "content": text or "."}]
    for turn in turns:  # tool_result blocks must open their user turn (docs/wire-formats.md, pitfall 12)
        turn[1].sort(key=lambda b: b.get("type") != "tool_result")
    return [{"role": role, "content": plain if plain is not None else blocks} for role, blocks, plain in turns]


# --- Anthropic messages -> OpenAI --------------------------------------------

_OPENAI_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def openai_tool_name(name):
    """A tool name OpenAI accepts (`^[a-zA-Z0-9_-]{1,64}$`; docs/wire-formats.md, pitfall 18): others are made so,
    the same way every time, so that `original_tool_name` can find them again."""
    if name is None or _OPENAI_TOOL_NAME.match(name):
        return name
    safe = re.sub(r"[^a-zA-Z0-9_-]", "_", name)
    if len(safe) <= 64:
        return safe
    return safe[:55] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]


def original_tool_name(name, tools):
    """The client's own name for a tool the provider knows by `openai_tool_name`."""
    for tool in tools or ():
        if isinstance(tool, dict) and openai_tool_name(tool.get("name")) == name:
            return tool.get("name")
    return name

# Replayed reasoning: OpenAI-compatible models take none back, and their answer does not depend on it.
_DROPPED_BLOCKS = ("thinking", "redacted_thinking")


def _openai_part(block, where):
    """One Anthropic block as an OpenAI content part; None for a block dropped on purpose,
    a 400 naming any other block type the OpenAI side has no place for."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise GatewayError(400, f"{where}: a text block needs its text, a string", where)
        return {"type": "text", "text": block["text"]}
    if kind in ("image", "document"):
        src = block.get("source") or {}
        if src.get("type") == "base64":
            url = f"data:{src.get('media_type')};base64,{src.get('data')}"
        elif src.get("type") == "url":
            url = src.get("url")
        elif src.get("type") == "text":
            return {"type": "text", "text": src.get("data", "")}
        else:
            raise GatewayError(400, f"{where}: {kind} source type '{src.get('type')}' cannot be sent to an OpenAI-compatible model", where)
        if kind == "image":
            return {"type": "image_url", "image_url": {"url": url}}
        return {"type": "file", "file": {"filename": block.get("title") or "document.pdf", "file_data": url}}
    if kind in _DROPPED_BLOCKS:
        return None
    raise GatewayError(400, f"{where}: content block type '{kind}' cannot be sent to an OpenAI-compatible model", where)


def _openai_content(parts):
    """A text-only turn as a plain string (what every compat server accepts), else parts."""
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def openai_messages(system, messages):
    out = []
    if system:
        out.append({"role": "system", "content": _text_of(system, "\n")})
    for n, m in enumerate(messages):
        role, content, where = m.get("role"), m.get("content"), f"messages[{n}]"
        if role not in ("user", "assistant", "system"):  # system: in place, as Claude Code sends it mid-conversation
            raise GatewayError(400, f"{where}.role: '{role}' cannot be sent to an OpenAI-compatible model", f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        blocks = content or []
        if role == "assistant":
            text, calls = [], []
            for k, b in enumerate(blocks):
                kind = b.get("type")
                if kind == "text":
                    text.append(b.get("text") or "")
                elif kind == "tool_use":
                    calls.append({"id": b.get("id"), "type": "function", "function": {
                        "name": openai_tool_name(b.get("name")), "arguments": to_json(b.get("input") or {})}})
                elif kind not in _DROPPED_BLOCKS:
                    here = f"{where}.content[{k}]"
                    raise GatewayError(400, f"{here}: content block type '{kind}' cannot be sent to an OpenAI-compatible model", here)
            msg = {"role": "assistant", "content": "".join(text) or None}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
            continue
        parts = []
        for k, b in enumerate(blocks):
            here = f"{where}.content[{k}]"
            if b.get("type") == "tool_result":  # tool messages first, each its own (docs/wire-formats.md, pitfall 12)
                inner = b.get("content")
                text = _text_of(inner, "\n")
                if isinstance(inner, list):  # images in a result move to the user message after it
                    parts.extend(p for p in (_openai_part(x, here) for x in inner) if p and p["type"] != "text")
                out.append({"role": "tool", "tool_call_id": b.get("tool_use_id"),
                            "content": f"Error: {text}" if b.get("is_error") else text})
            else:
                part = _openai_part(b, here)
                if part:
                    parts.append(part)
        if parts:
            out.append({"role": role, "content": _openai_content(parts)})
    return out


# --- OpenAI response message -> Anthropic content -----------------------------

def anthropic_content(message, tools=None):
    """An OpenAI answer's message as Anthropic blocks; `tools` (the client's) give tool names back."""
    message = message or {}
    blocks = []
    if message.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    text = _text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    if message.get("refusal"):
        blocks.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": call.get("id") or new_id("toolu_"),
                       "name": original_tool_name(fn.get("name"), tools), "input": _parse_arguments(fn.get("arguments"))})
    return blocks


IMAGE_TOKENS = 1600  # what Anthropic documents for a ~1.15 megapixel image
IMAGE_TYPES = frozenset(("image", "document", "image_url", "input_image", "input_file"))  # content blocks, any dialect


def estimate_tokens(body):
    """A local estimate of a request's input tokens (Anthropic, Chat or Responses), for providers
    that cannot count: one token per 4 characters of text (system, messages,
    tool definitions and tool inputs/results), plus IMAGE_TOKENS per image or
    document (an OpenAI `image_url` block too: its base64 is no text) and 3
    per message. Good to about 20% for English prose."""
    chars, extra = 0, 3 * len(body.get("messages") or ())

    def walk(value, key=None):
        nonlocal chars, extra
        if isinstance(value, str):
            if key not in ("type", "id", "tool_use_id", "media_type", "data"):
                chars += len(value)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            if value.get("type") in IMAGE_TYPES:
                extra += IMAGE_TOKENS
                return
            for k, v in value.items():
                walk(v, k)

    walk([body.get("system"), body.get("messages"), body.get("tools"), body.get("instructions"), body.get("input")])
    return chars // 4 + extra + 1


def new_id(prefix):
    return prefix + _uuid.uuid4().hex[:24]


def number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


class RuleFunctions(functions.Functions):
    """The function set of one rules file: `lookup` reads that file's `tables:`."""

    def __init__(self, tables=None):
        super().__init__()
        self.tables = {name: {str(k): v for k, v in table.items()} for name, table in (tables or {}).items()}

    # lookup(table, key[, default]): jmespath has no optional arguments, so `key` is variadic
    @functions.signature({"types": ["string"]}, {"types": [], "variadic": True})
    def _func_lookup(self, table, key, default=None):
        value = self.tables[table].get(key if isinstance(key, str) else to_json(key))
        return default if value is None else value

    @functions.signature({"types": ["string"]})
    def _func_trim(self, text):
        return text.strip()

    @functions.signature()
    def _func_now(self):
        return int(time.time())

    @functions.signature({"types": ["string"]})
    def _func_new_id(self, prefix):
        return new_id(prefix)

    @functions.signature({"types": ["string"]})
    def _func_sha256(self, text):
        """A stable stand-in for an identifier that must not (or cannot) go out as it is."""
        return hashlib.sha256(text.encode()).hexdigest()

    @functions.signature({"types": []}, {"types": []})
    def _func_add(self, a, b):
        return number(a) + number(b)

    @functions.signature({"types": []}, {"types": []})
    def _func_sub(self, a, b):
        return number(a) - number(b)

    @functions.signature({"types": ["object"]}, {"types": []}, {"types": []})
    def _func_put(self, obj, key, value):
        return {**obj, str(key): value}

    @functions.signature({"types": ["object", "null"]}, {"types": []})
    def _func_get(self, obj, key):
        return (obj or {}).get(str(key))

    @functions.signature({"types": []})
    def _func_to_json(self, value):
        return to_json(value)

    @functions.signature({"types": ["array"]})
    def _func_anthropic_system(self, messages):
        return anthropic_system(messages)

    @functions.signature({"types": ["array"]})
    def _func_anthropic_messages(self, messages):
        return anthropic_messages(messages)

    @functions.signature({"types": ["object", "null"]}, {"types": ["array", "null"]})
    def _func_anthropic_content(self, message, tools):
        return anthropic_content(message, tools)

    @functions.signature({"types": ["string", "null"]})
    def _func_openai_tool_name(self, name):
        return openai_tool_name(name)

    @functions.signature({"types": ["string", "null"]}, {"types": ["array", "null"]})
    def _func_original_tool_name(self, name, tools):
        return original_tool_name(name, tools)

    @functions.signature({"types": ["string", "array", "null"]}, {"types": ["array"]})
    def _func_openai_messages(self, system, messages):
        return openai_messages(system, messages)
