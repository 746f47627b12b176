"""Rule functions for the Responses dialect: the structural steps its translations
(`rules/dialects/responses_to_*.yaml`, and `*_to_responses.yaml` for models served only
by the Responses API) call by name.

A Responses request is a list of typed items (messages, function calls and their
outputs, reasoning) where Chat Completions and Anthropic have role-tagged turns;
its tools may be freeform (`custom`) or grouped (`namespace`), which the others
know only as plain functions. These functions regroup items into turns, flatten
tools into functions under names that can be mapped back, and build the
Responses output items (and stream parts) from what the provider answered, so
that a call the model makes reaches the client as the tool it declared.

Anthropic thinking keeps its signature: a reasoning item made from a thinking
block carries it in `encrypted_content`, and a reasoning item sent back with it
becomes the same thinking block again (`redacted_thinking` data is prefixed
with REDACTED).
"""
from jmespath import functions as _f

from arch.errors import GatewayError
from arch.rules.functions import (_image_source, _parse_arguments, new_id, openai_tool_name, original_tool_name,
                                  to_json)

REDACTED = "redacted:"
NAMESPACE_SEP = "__"
CUSTOM_INPUT = "input"  # the one string argument a custom (freeform) tool becomes


# --- tools ----------------------------------------------------------------------------------

def flat_tools(tools, provider):
    """The client's function, custom and namespace tools as plain functions
    [{name, description, parameters, strict}]; any other (built-in) tool is a 400."""
    out = []
    for n, tool in enumerate(tools or ()):
        kind = tool.get("type")
        if kind == "namespace":
            for inner in tool.get("tools") or ():
                out.append(_flat_tool(inner, f"{tool.get('name')}{NAMESPACE_SEP}{inner.get('name')}", provider, f"tools[{n}]"))
        else:
            out.append(_flat_tool(tool, tool.get("name"), provider, f"tools[{n}]"))
    return out


def _flat_tool(tool, name, provider, where):
    kind = tool.get("type")
    if kind == "function":
        params = tool.get("parameters") or {"type": "object", "properties": {}}
        return {"name": openai_tool_name(name), "description": tool.get("description"), "parameters": params,
                "strict": tool.get("strict")}
    if kind == "custom":
        hint = "Freeform input: the whole input goes in the string argument `input`."
        fmt = tool.get("format") or {}
        if fmt.get("type") == "grammar":
            hint += f" It must match this {fmt.get('syntax', '')} grammar:\n{fmt.get('definition', '')}"
        return {"name": openai_tool_name(name),
                "description": "\n\n".join(filter(None, [tool.get("description"), hint])),
                "parameters": {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string"}},
                               "required": [CUSTOM_INPUT], "additionalProperties": False},
                "strict": None}
    hint = " Codex CLI: set web_search = \"disabled\" in config.toml." if kind in WEB_SEARCH else ""
    raise GatewayError(400, f"tool type '{kind}' is a built-in OpenAI tool; {provider} models do not have it "
                            f"(use an OpenAI model, or a function tool).{hint}", where)


WEB_SEARCH = ("web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11")


def anthropic_web_search(tool, max_uses):
    """OpenAI's built-in web search as Anthropic's web search server tool; `max_uses` from
    the request's max_tool_calls (the only built-in tool that reaches Anthropic)."""
    if tool.get("external_web_access") is False:
        raise GatewayError(400, "web_search with external_web_access: false (cached results only) has no Anthropic "
                                "counterpart: Anthropic's web search is live. Allow live access (Codex CLI: "
                                "web_search = \"live\") or turn it off (web_search = \"disabled\").", "tools")
    out = {"type": "web_search_20250305", "name": "web_search"}
    if max_uses:
        out["max_uses"] = max_uses
    domains = (tool.get("filters") or {}).get("allowed_domains")
    if domains:
        out["allowed_domains"] = domains
    where = tool.get("user_location") or {}
    place = {k: where[k] for k in ("city", "region", "country", "timezone") if where.get(k)}
    if place:
        out["user_location"] = {"type": "approximate", **place}
    return out


def _tool_index(tools):
    """{name the provider sees: (client tool name, namespace or None, custom?)}."""
    index = {}
    for tool in tools or ():
        if tool.get("type") == "namespace":
            for inner in tool.get("tools") or ():
                flat = openai_tool_name(f"{tool.get('name')}{NAMESPACE_SEP}{inner.get('name')}")
                index[flat] = (inner.get("name"), tool.get("name"), inner.get("type") == "custom")
        elif tool.get("type") in ("function", "custom"):
            index[openai_tool_name(tool.get("name"))] = (tool.get("name"), None, tool.get("type") == "custom")
    return index


def provider_tool_name(name, namespace=None):
    return openai_tool_name(f"{namespace}{NAMESPACE_SEP}{name}" if namespace else name)


def tool_choice_name(choice):
    """The provider's name for a tool the client forces ({type: function|custom, name}), else None."""
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        return provider_tool_name(choice.get("name"), choice.get("namespace"))
    if isinstance(choice, dict) and choice.get("type") != "allowed_tools":
        raise GatewayError(400, f"tool_choice type '{choice.get('type')}' names a built-in OpenAI tool", "tool_choice")
    return None


def call_item(call_id, name, arguments, tools, status="completed"):
    """A tool call the provider made, as the client's item: a `custom_tool_call` with its
    raw input for a custom tool, else a `function_call` (with its namespace, if any)."""
    client_name, namespace, custom = _tool_index(tools).get(name, (name, None, False))
    if custom:
        raw = _parse_arguments(arguments).get(CUSTOM_INPUT)
        item = {"id": new_id("ctc_"), "type": "custom_tool_call", "status": status, "call_id": call_id,
                "name": client_name, "input": raw if isinstance(raw, str) else ""}
    else:
        if not isinstance(arguments, str):
            arguments = to_json(arguments or {})
        item = {"id": new_id("fc_"), "type": "function_call", "status": status, "call_id": call_id,
                "name": client_name, "arguments": arguments}
    if namespace:
        item["namespace"] = namespace
    return item


# --- request: items -> turns ----------------------------------------------------------------

def input_items(value):
    """`input` as a list of items (a string is one user message); an item without a type is
    a message, or a reference when it has only an id (the openai SDK's `ItemReference`)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [item if "type" in item else {**item, "type": "item_reference" if item.keys() == {"id"} else "message"}
            for item in value]


def _text(content):
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or p.get("refusal") or "" for p in content or ()
                   if p.get("type") in ("input_text", "output_text", "text", "refusal"))


def _output_text(output):
    """A tool output (a string, or input_text/input_image parts) as text."""
    return output if isinstance(output, str) else _text(output)


def _unsupported(item, n, provider):
    raise GatewayError(400, f"input item type '{item.get('type')}' cannot be sent to {provider} models", f"input[{n}]")


def _chat_part(part, where):
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "input_image" and part.get("image_url"):
        image = {"url": part["image_url"]}
        if part.get("detail") and part["detail"] != "auto":
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and (part.get("file_data") or part.get("file_id")):
        file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k)}
        return {"type": "file", "file": file}
    raise GatewayError(400, f"content part type '{kind}' cannot be sent to OpenAI-compatible models"
                            " (images by URL or data URL, files as file_data)", where)


def chat_messages(instructions, items):
    """Responses input items as Chat Completions messages."""
    out = [{"role": "system", "content": instructions}] if instructions else []
    assistant = None  # the assistant message that function calls join

    for n, item in enumerate(input_items(items)):
        kind, where = item.get("type"), f"input[{n}]"
        if kind == "message":
            role, content = item.get("role"), item.get("content")
            if role == "assistant":
                assistant = {"role": "assistant", "content": _text(content) or None}
                out.append(assistant)
                continue
            assistant = None
            if isinstance(content, str):
                out.append({"role": role, "content": content})
            elif role in ("system", "developer"):
                out.append({"role": role, "content": _text(content)})
            else:
                parts = [_chat_part(p, f"{where}.content[{k}]") for k, p in enumerate(content or ())]
                text_only = all(p["type"] == "text" for p in parts)
                out.append({"role": role, "content": "".join(p["text"] for p in parts) if text_only else parts})
        elif kind in ("function_call", "custom_tool_call"):
            args = item.get("arguments") if kind == "function_call" else to_json({CUSTOM_INPUT: item.get("input") or ""})
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": provider_tool_name(item.get("name"), item.get("namespace")),
                                 "arguments": args or "{}"}}
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
                out.append(assistant)
            assistant.setdefault("tool_calls", []).append(call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            assistant = None
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": _output_text(item.get("output"))})
        elif kind == "reasoning":
            continue  # a provider's own reasoning; Chat Completions has no way to send it back
        else:
            _unsupported(item, n, "OpenAI-compatible")
    return out


def _anthropic_part(part, where):
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text")} if part.get("text") else None
    if kind == "input_image" and part.get("image_url"):
        return {"type": "image", "source": _image_source(part["image_url"])}
    if kind == "input_file" and part.get("file_data"):
        data = part["file_data"]
        source = _image_source(data) if data.startswith("data:") else {"type": "base64", "media_type": "application/pdf", "data": data}
        return {"type": "document", "source": source}
    raise GatewayError(400, f"content part type '{kind}' cannot be sent to Anthropic models"
                            " (images by URL or data URL, files as file_data)", where)


def anthropic_system(instructions, items):
    """Instructions and every system/developer message, one text block each."""
    texts = [instructions] if instructions else []
    texts += [_text(i.get("content")) for i in input_items(items)
              if i.get("type") == "message" and i.get("role") in ("system", "developer")]
    return [{"type": "text", "text": t} for t in texts if t] or None


def anthropic_messages(items):
    """Responses input items as Anthropic turns: calls become tool_use, outputs
    tool_result (first in their user turn), signed reasoning thinking again."""
    turns = []

    def add(role, blocks):
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})

    for n, item in enumerate(input_items(items)):
        kind, where = item.get("type"), f"input[{n}]"
        if kind == "message":
            role, content = item.get("role"), item.get("content")
            if role in ("system", "developer"):
                continue
            if isinstance(content, str):
                blocks = [{"type": "text", "text": content}] if content else []
            else:
                blocks = [b for k, p in enumerate(content or ()) if (b := _anthropic_part(p, f"{where}.content[{k}]"))]
            add("assistant" if role == "assistant" else "user", blocks)
        elif kind in ("function_call", "custom_tool_call"):
            value = _parse_arguments(item.get("arguments")) if kind == "function_call" else {CUSTOM_INPUT: item.get("input") or ""}
            add("assistant", [{"type": "tool_use", "id": item.get("call_id"),
                               "name": provider_tool_name(item.get("name"), item.get("namespace")), "input": value}])
        elif kind in ("function_call_output", "custom_tool_call_output"):
            result = {"type": "tool_result", "tool_use_id": item.get("call_id")}
            text = _output_text(item.get("output"))
            if text:
                result["content"] = text
            add("user", [result])
        elif kind == "web_search_call":
            continue  # Anthropic's results are not in it; the answer that followed keeps what was found
        elif kind == "reasoning":
            sealed = item.get("encrypted_content")
            if not isinstance(sealed, str):
                continue  # reasoning from another provider: Anthropic accepts only its own, signed
            if sealed.startswith(REDACTED):
                add("assistant", [{"type": "redacted_thinking", "data": sealed[len(REDACTED):]}])
            else:
                thought = "".join(s.get("text") or "" for s in item.get("summary") or ())
                add("assistant", [{"type": "thinking", "thinking": thought, "signature": sealed}])
        else:
            _unsupported(item, n, "Anthropic")
    for turn in turns:
        turn["content"].sort(key=lambda b: b.get("type") != "tool_result")
    return turns or [{"role": "user", "content": "."}]


# --- response: provider answer -> output items ---------------------------------------------

def _message_item(text, annotations=()):
    content = [{"type": "output_text", "text": text, "annotations": list(annotations), "logprobs": []}] if text else []
    return {"id": new_id("msg_"), "type": "message", "status": "completed", "role": "assistant", "content": content}


def _url_citations(citations, start, end):
    """Anthropic's web search citations of the text from `start` to `end` as url_citation annotations."""
    return [{"type": "url_citation", "start_index": start, "end_index": end, "url": c.get("url"),
             "title": c.get("title") or ""} for c in citations or () if c.get("type") == "web_search_result_location"]


def _search_item(arguments, found, item_id=None):
    """A web_search_call item of an Anthropic search (its query) and its results (`found`:
    the result list, an error object, or None when none came)."""
    query = _parse_arguments(arguments).get("query")
    action = {"type": "search", "query": query or "", "sources": []}
    status = "incomplete" if found is None else "completed"
    if isinstance(found, list):
        action["sources"] = [{"type": "url", "url": r.get("url")} for r in found if r.get("type") == "web_search_result"]
    elif found is not None:
        status = "failed"
    return {"id": item_id or new_id("ws_"), "type": "web_search_call", "status": status, "action": action}


def _reasoning_item(text, sealed=None):
    item = {"id": new_id("rs_"), "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}] if text else []}
    if sealed:
        item["encrypted_content"] = sealed
    return item


def output_from_chat(message, tools):
    """A chat.completion message as Responses output items."""
    message = message or {}
    out = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out.append(_reasoning_item(reasoning))
    text = message.get("content")
    text = text if isinstance(text, str) else _text(text)
    if text or message.get("refusal"):
        item = _message_item(text)
        if message.get("refusal"):
            item["content"].append({"type": "refusal", "refusal": message["refusal"]})
        out.append(item)
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        out.append(call_item(call.get("id") or new_id("call_"), fn.get("name"), fn.get("arguments"), tools))
    return out


def output_from_anthropic(content, tools):
    """Anthropic content blocks as Responses output items (thinking keeps its signature):
    consecutive text blocks one message, their web search citations its annotations; a
    web search and its results one web_search_call."""
    out, texts, notes, searches = [], [], [], {}

    def flush():
        if texts:
            out.append(_message_item("".join(texts), notes))
            texts.clear()
            notes.clear()

    for block in content or ():
        kind = block.get("type")
        if kind == "text":
            start = sum(map(len, texts))
            texts.append(block.get("text") or "")
            notes.extend(_url_citations(block.get("citations"), start, start + len(texts[-1])))
            continue
        flush()
        if kind == "server_tool_use" and block.get("name") == "web_search":
            searches[block.get("id")] = len(out)
            out.append(_search_item(block.get("input"), None))
        elif kind == "web_search_tool_result" and block.get("tool_use_id") in searches:
            n = searches[block["tool_use_id"]]
            out[n] = _search_item({"query": out[n]["action"]["query"]}, block.get("content"), out[n]["id"])
        elif kind == "thinking":
            out.append(_reasoning_item(block.get("thinking"), block.get("signature")))
        elif kind == "redacted_thinking":
            out.append(_reasoning_item("", REDACTED + (block.get("data") or "")))
        elif kind == "tool_use":
            out.append(call_item(block.get("id"), block.get("name"), block.get("input"), tools))
    flush()
    return out


def echo(request):
    """The request parameters a Response object repeats back to the client."""
    text = request.get("text") or {}
    return {
        "object": "response", "error": None, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"), "metadata": request.get("metadata") or {},
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": (request.get("reasoning") or {}).get("effort"),
                      "summary": (request.get("reasoning") or {}).get("summary")},
        "store": request.get("store") is not False, "temperature": request.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}, **({"verbosity": text["verbosity"]} if text.get("verbosity") else {})},
        "tool_choice": request.get("tool_choice") or "auto", "tools": request.get("tools") or [],
        "top_p": request.get("top_p"), "truncation": request.get("truncation") or "disabled",
        "user": request.get("user"), "prompt_cache_key": request.get("prompt_cache_key"),
        "service_tier": request.get("service_tier") or "default",
    }


# --- stream: provider events -> parts the shared stream program reads -----------------------
# A part is {k: reasoning|signature|text|call|args|close|finish|usage|done|error, ...}.

CHAT_FINISH = {"length": "length", "content_filter": "filter"}
ANTHROPIC_FINISH = {"max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "filter"}


def chat_stream_parts(event):
    if event == "[DONE]":
        return [{"k": "done"}]
    if not isinstance(event, dict):
        return []
    if event.get("error"):
        error = event["error"]
        return [{"k": "error", "message": error.get("message") if isinstance(error, dict) else str(error)}]
    parts = []
    for choice in (event.get("choices") or ())[:1]:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            parts.append({"k": "reasoning", "text": reasoning})
        for field, k in (("content", "text"), ("refusal", "refusal")):
            if isinstance(delta.get(field), str) and delta[field]:
                parts.append({"k": k, "text": delta[field]})
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") or {}
            key = call.get("index", 0)
            if call.get("id") or fn.get("name"):
                parts.append({"k": "call", "key": key, "id": call.get("id") or new_id("call_"), "name": fn.get("name")})
            if fn.get("arguments"):
                args = fn["arguments"]
                parts.append({"k": "args", "key": key, "text": args if isinstance(args, str) else to_json(args)})
        if choice.get("finish_reason"):
            parts.append({"k": "finish", "reason": CHAT_FINISH.get(choice["finish_reason"], "stop")})
    if isinstance(event.get("usage"), dict):
        parts.append({"k": "usage", "raw": event["usage"]})
    return parts


def anthropic_stream_parts(event):
    kind = event.get("type") if isinstance(event, dict) else None
    if kind == "message_start":
        return [{"k": "usage", "raw": (event.get("message") or {}).get("usage") or {}}]
    if kind == "content_block_start":
        block, key = event.get("content_block") or {}, event.get("index")
        btype = block.get("type")
        if btype == "thinking":
            return [{"k": "reasoning", "text": block.get("thinking") or ""}]
        if btype == "redacted_thinking":
            return [{"k": "reasoning", "text": ""}, {"k": "signature", "sig": REDACTED + (block.get("data") or "")}]
        if btype == "text":
            return [{"k": "text", "text": block.get("text") or "", "block": True}]
        if btype == "server_tool_use" and block.get("name") == "web_search":
            parts = [{"k": "search", "key": key}]
            if block.get("input"):
                parts.append({"k": "args", "key": key, "text": to_json(block["input"])})
            return parts
        if btype == "web_search_tool_result":
            return [{"k": "found", "content": block.get("content")}]
        if btype == "tool_use":
            parts = [{"k": "call", "key": key, "id": block.get("id"), "name": block.get("name")}]
            if block.get("input"):  # some compatible servers give the whole input here, no deltas
                parts.append({"k": "args", "key": key, "text": to_json(block["input"])})
            return parts
        return []
    if kind == "content_block_delta":
        delta = event.get("delta") or {}
        dtype = delta.get("type")
        if dtype == "text_delta":
            return [{"k": "text", "text": delta.get("text") or ""}]
        if dtype == "thinking_delta":
            return [{"k": "reasoning", "text": delta.get("thinking") or ""}]
        if dtype == "citations_delta":
            return [{"k": "cite", "citation": delta.get("citation") or {}}]
        if dtype == "signature_delta":
            return [{"k": "signature", "sig": delta.get("signature")}]
        if dtype == "input_json_delta" and delta.get("partial_json"):
            return [{"k": "args", "key": event.get("index"), "text": delta["partial_json"]}]
        return []
    if kind == "content_block_stop":
        return [{"k": "close"}]
    if kind == "message_delta":
        reason = (event.get("delta") or {}).get("stop_reason")
        return [{"k": "usage", "raw": event.get("usage") or {}},
                {"k": "finish", "reason": ANTHROPIC_FINISH.get(reason, "stop")}]
    if kind == "message_stop":
        return [{"k": "done"}]
    if kind == "error":
        return [{"k": "error", "message": (event.get("error") or {}).get("message") or "the provider failed"}]
    return []


def open_item(part, tools):
    """The output item a part starts (as announced in output_item.added), with what
    the stream program accumulates into it: `text`, `args`, `sig`."""
    kind = part["k"]
    if kind == "reasoning":
        item = {"id": new_id("rs_"), "type": "reasoning", "summary": []}
    elif kind in ("text", "refusal"):
        item = {"id": new_id("msg_"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    elif kind == "search":
        item = {"id": new_id("ws_"), "type": "web_search_call", "status": "in_progress", "action": {"type": "search"}}
    else:
        item = call_item(part.get("id"), part.get("name"), "", tools, status="in_progress")
    return {"kind": kind, "key": part.get("key"), "item": item, "text": "", "args": "", "sig": None,
            "from": 0, "cites": [], "notes": [], "found": None}


def cited(opened):
    """The open message with the citations of its text block that just ended (the text from
    where that block began to here)."""
    notes = _url_citations(opened["cites"], opened["from"], len(opened["text"]))
    return {**opened, "notes": [*opened["notes"], *notes], "cites": []}


def annotation_events(opened, output_index, before):
    """response.output_text.annotation.added for each annotation of the open message after
    the first `before` (those its last text block added)."""
    return [{"type": "response.output_text.annotation.added", "item_id": opened["item"]["id"],
             "output_index": output_index, "content_index": 0, "annotation_index": n, "annotation": note}
            for n, note in enumerate(opened["notes"]) if n >= before]


def close_item(opened, tools):
    """The finished item of an open one."""
    item, kind = opened["item"], opened["kind"]
    if kind == "reasoning":
        return {**_reasoning_item(opened["text"], opened["sig"]), "id": item["id"]}
    if kind == "text":
        return {**_message_item(opened["text"], opened["notes"]), "id": item["id"]}
    if kind == "refusal":
        return {**_message_item(""), "id": item["id"], "content": [{"type": "refusal", "refusal": opened["text"]}]}
    if kind == "search":
        return _search_item(opened["args"], opened["found"], item["id"])
    done = call_item(item["call_id"], provider_tool_name(item["name"], item.get("namespace")), opened["args"], tools)
    return {**done, "id": item["id"]}


# --- the reverse: Chat Completions clients of models served only by the Responses API ------

def _input_part(part, where):
    kind = part.get("type")
    if kind == "text":
        return {"type": "input_text", "text": part.get("text") or ""}
    if kind == "image_url":
        image = part.get("image_url") or {}
        return {"type": "input_image", "image_url": image.get("url"), "detail": image.get("detail") or "auto"}
    if kind == "file":
        return {"type": "input_file", **{k: v for k, v in (part.get("file") or {}).items()
                                         if k in ("file_data", "file_id", "filename")}}
    raise GatewayError(400, f"content part type '{kind}' cannot be sent to a Responses-only model", where)


def items_from_chat(messages):
    """Chat Completions messages as Responses input items (calls and results by id)."""
    items = []
    for n, m in enumerate(messages):
        role, content, where = m.get("role"), m.get("content"), f"messages[{n}]"
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": m.get("tool_call_id"),
                          "output": content if isinstance(content, str) else _text(
                              [{**p, "type": "input_text"} for p in content or () if p.get("type") == "text"])})
        elif role == "assistant":
            text = content if isinstance(content, str) else "".join(
                p.get("text") or "" for p in content or () if p.get("type") == "text")
            if text:
                items.append({"type": "message", "role": "assistant", "content": text})
            for call in m.get("tool_calls") or ():
                fn = call.get("function") or {}
                args = fn.get("arguments")
                items.append({"type": "function_call", "call_id": call.get("id"), "name": fn.get("name"),
                              "arguments": args if isinstance(args, str) else to_json(args or {})})
        else:
            parts = content if isinstance(content, str) else [
                _input_part(p, f"{where}.content[{k}]") for k, p in enumerate(content or ())]
            items.append({"type": "message", "role": "developer" if role == "system" else role, "content": parts})
    return items


def chat_message_from_output(output):
    """A Response's output items as one chat.completion message."""
    text = "".join(p.get("text") or "" for item in output or () if item.get("type") == "message"
                   for p in item.get("content") or () if p.get("type") == "output_text")
    reasoning = "".join(p.get("text") or "" for item in output or () if item.get("type") == "reasoning"
                        for p in item.get("summary") or ())
    calls = [{"id": item.get("call_id"), "type": "function",
              "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
             for item in output or () if item.get("type") == "function_call"]
    message = {"role": "assistant", "content": text or None, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message


# --- the reverse: Anthropic clients of models served only by the Responses API -------------
# A reasoning item goes to an Anthropic client as a thinking block whose signature carries the
# item's id and encrypted_content, so that the block sent back is the same item again (the
# Responses API needs both to continue a conversation it did not store). Thinking blocks
# signed by anyone else (Anthropic's own) are dropped: OpenAI cannot read them.

OPENAI_SEAL = "openai:"
SUMMARY_SEP = "\n\n"  # between a reasoning item's summary parts in one thinking text


def reasoning_signature(item):
    """A reasoning item's id and sealed reasoning, as a thinking block's signature."""
    return f"{OPENAI_SEAL}{item.get('id') or ''}:{item.get('encrypted_content') or ''}"


def _reasoning_from_thinking(block):
    """The reasoning item a thinking block came from; None if it did not come from one
    (or carries no encrypted reasoning, which OpenAI would refuse without a stored response)."""
    signature = block.get("signature")
    if not isinstance(signature, str) or not signature.startswith(OPENAI_SEAL):
        return None
    rid, _, sealed = signature[len(OPENAI_SEAL):].partition(":")
    if not rid or not sealed:
        return None
    thought = block.get("thinking") or ""
    return {"type": "reasoning", "id": rid, "encrypted_content": sealed,
            "summary": [{"type": "summary_text", "text": thought}] if thought else []}


def _input_block(block, where):
    """An Anthropic text, image or document block as a Responses input part."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return {"type": "input_text", "text": block.get("text") or ""}
    if kind in ("image", "document"):
        src = block.get("source") or {}
        stype = src.get("type")
        if kind == "document" and stype == "text":
            return {"type": "input_text", "text": src.get("data") or ""}
        if stype in ("base64", "url"):
            url = src.get("url") if stype == "url" else f"data:{src.get('media_type')};base64,{src.get('data')}"
            if kind == "image":
                return {"type": "input_image", "image_url": url, "detail": "auto"}
            if stype == "url":
                return {"type": "input_file", "file_url": url}
            return {"type": "input_file", "file_data": url, "filename": block.get("title") or "document.pdf"}
        raise GatewayError(400, f"{where}: {kind} source type '{stype}' cannot be sent to a Responses-only model", where)
    raise GatewayError(400, f"{where}: content block type '{kind}' cannot be sent to a Responses-only model", where)


def items_from_anthropic(messages):
    """Anthropic turns as Responses input items: tool_use blocks become function_call items
    and tool_result blocks function_call_output items (by the same ids), thinking blocks the
    reasoning items they came from."""
    items = []
    for n, m in enumerate(messages):
        role, content, where = m.get("role"), m.get("content"), f"messages[{n}]"
        if role == "system":  # in place, as Claude Code sends it mid-conversation
            role = "developer"
        if isinstance(content, str):
            items.append({"type": "message", "role": role, "content": content})
            continue
        parts = []

        def flush():
            if parts:
                if role == "assistant":
                    items.append({"type": "message", "role": role, "content": "".join(p["text"] for p in parts)})
                else:
                    items.append({"type": "message", "role": role, "content": list(parts)})
                parts.clear()

        for k, block in enumerate(content or ()):
            kind, here = block.get("type"), f"{where}.content[{k}]"
            if role == "assistant" and kind == "tool_use":
                flush()
                items.append({"type": "function_call", "call_id": block.get("id"),
                              "name": openai_tool_name(block.get("name")), "arguments": to_json(block.get("input") or {})})
            elif role == "assistant" and kind in ("server_tool_use", "web_search_tool_result"):
                flush()  # a past web search: OpenAI takes none back; the answer after it stands
            elif role == "assistant" and kind in ("thinking", "redacted_thinking"):
                flush()
                reasoning = _reasoning_from_thinking(block)
                if reasoning is not None:
                    items.append(reasoning)
            elif role == "assistant" and kind != "text":
                raise GatewayError(400, f"{here}: content block type '{kind}' cannot be sent to a Responses-only model", here)
            elif kind == "tool_result":
                flush()
                items.append({"type": "function_call_output", "call_id": block.get("tool_use_id"),
                              "output": _tool_output(block, here)})
            else:
                parts.append(_input_block(block, here))
        flush()
    return items


def _tool_output(block, where):
    """A tool_result's content as a function_call_output's output: text, or parts with images."""
    inner = block.get("content")
    parts = [{"type": "input_text", "text": inner}] if isinstance(inner, str) else [
        _input_block(b, f"{where}.content[{k}]") for k, b in enumerate(inner or ())]
    error = block.get("is_error")  # the Responses API has no error flag: the model reads it
    if all(p["type"] == "input_text" for p in parts):
        text = "\n".join(p["text"] for p in parts)
        return f"Error: {text}" if error else text
    return [{"type": "input_text", "text": "Error:"}, *parts] if error else parts


def anthropic_from_output(output, tools, thinking):
    """A Response's output items as Anthropic content blocks: reasoning as signed thinking
    (when the client asked for thinking), text and refusals as text, calls as tool_use."""
    blocks = []
    for item in output or ():
        kind = item.get("type")
        if kind == "reasoning" and thinking:
            blocks.append({"type": "thinking", "signature": reasoning_signature(item), "thinking": SUMMARY_SEP.join(
                p.get("text") or "" for p in item.get("summary") or ())})
        elif kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    blocks += _cited_blocks(part.get("text") or "", part.get("annotations"))
                elif part.get("refusal"):
                    blocks.append({"type": "text", "text": part["refusal"]})
        elif kind == "function_call":
            blocks.append({"type": "tool_use", "id": item.get("call_id"),
                           "name": original_tool_name(item.get("name"), tools),
                           "input": _parse_arguments(item.get("arguments"))})
        elif kind == "web_search_call":
            blocks += search_blocks(item)
    return blocks


def search_blocks(item):
    """A web search OpenAI ran, as the two blocks Anthropic's web search makes: the search
    (server_tool_use) and its results (each source URL; OpenAI gives no title or sealed content)."""
    action = item.get("action") or {}
    if action.get("type") != "search":
        return []  # opening or searching a page: Anthropic's web search has no such step
    tool_id = "srvtoolu_" + str(item.get("id"))
    query = action.get("query") or " ".join(action.get("queries") or ())
    results = [{"type": "web_search_result", "url": s.get("url"), "title": s.get("url"), "encrypted_content": "",
                "page_age": None} for s in action.get("sources") or ()]
    return [{"type": "server_tool_use", "id": tool_id, "name": "web_search", "input": {"query": query}},
            {"type": "web_search_tool_result", "tool_use_id": tool_id, "content": results}]


def anthropic_citation(note, text):
    """A url_citation of `text` as Anthropic's web search citation."""
    return {"type": "web_search_result_location", "url": note.get("url"), "title": note.get("title"),
            "encrypted_index": "", "cited_text": text[note.get("start_index") or 0:note.get("end_index") or 0]}


def _cited_blocks(text, annotations):
    """Text with url_citation annotations as Anthropic text blocks: each cited span its own
    block with its citations, as Anthropic's web search answers."""
    notes = sorted((a for a in annotations or () if a.get("type") == "url_citation"),
                   key=lambda a: (a.get("start_index") or 0, a.get("end_index") or 0))
    blocks, at = [], 0
    for note in notes:
        start, end = note.get("start_index") or 0, note.get("end_index") or 0
        if start < at:  # the same span (or one overlapping it): cited by the block already made
            if blocks and "citations" in blocks[-1]:
                blocks[-1]["citations"].append(anthropic_citation(note, text))
            continue
        if start > at:
            blocks.append({"type": "text", "text": text[at:start]})
        blocks.append({"type": "text", "text": text[start:end], "citations": [anthropic_citation(note, text)]})
        at = end
    if at < len(text) or not blocks:
        blocks.append({"type": "text", "text": text[at:]})
    return [b for b in blocks if b["text"]]


class ResponsesFunctions:
    """The functions above as JMESPath functions (mixed into every rules file's function set)."""

    @_f.signature({"types": ["array", "null"]}, {"types": ["string"]})
    def _func_flat_tools(self, tools, provider):
        return flat_tools(tools, provider)

    @_f.signature({"types": []})
    def _func_tool_choice_name(self, choice):
        return tool_choice_name(choice)

    @_f.signature({"types": ["string", "array", "null"]})
    def _func_input_items(self, value):
        return input_items(value)

    @_f.signature({"types": ["string", "null"]}, {"types": ["string", "array", "null"]})
    def _func_chat_messages(self, instructions, items):
        return chat_messages(instructions, items)

    @_f.signature({"types": ["string", "null"]}, {"types": ["string", "array", "null"]})
    def _func_responses_system(self, instructions, items):
        return anthropic_system(instructions, items)

    @_f.signature({"types": ["string", "array", "null"]})
    def _func_responses_turns(self, items):
        return anthropic_messages(items)

    @_f.signature({"types": ["object", "null"]}, {"types": ["array", "null"]})
    def _func_output_from_chat(self, message, tools):
        return output_from_chat(message, tools)

    @_f.signature({"types": ["array", "null"]}, {"types": ["array", "null"]})
    def _func_output_from_anthropic(self, content, tools):
        return output_from_anthropic(content, tools)

    @_f.signature({"types": ["object"]})
    def _func_echo(self, request):
        return echo(request)

    @_f.signature({"types": []})
    def _func_chat_stream_parts(self, event):
        return chat_stream_parts(event)

    @_f.signature({"types": []})
    def _func_anthropic_stream_parts(self, event):
        return anthropic_stream_parts(event)

    @_f.signature({"types": ["object"]}, {"types": ["array", "null"]})
    def _func_open_item(self, part, tools):
        return open_item(part, tools)

    @_f.signature({"types": ["object"]}, {"types": ["array", "null"]})
    def _func_close_item(self, opened, tools):
        return close_item(opened, tools)

    @_f.signature({"types": ["array"]}, {"types": []})
    def _func_append(self, items, item):
        return [*items, item]

    @_f.signature({"types": ["object"]})
    def _func_cited(self, opened):
        return cited(opened)

    @_f.signature({"types": ["object"]}, {"types": ["number"]}, {"types": ["number"]})
    def _func_annotation_events(self, opened, output_index, before):
        return annotation_events(opened, output_index, before)

    @_f.signature({"types": ["object"]}, {"types": ["number", "null"]})
    def _func_anthropic_web_search(self, tool, max_uses):
        return anthropic_web_search(tool, max_uses)

    @_f.signature({"types": ["array"]})
    def _func_items_from_chat(self, messages):
        return items_from_chat(messages)

    @_f.signature({"types": ["array", "null"]})
    def _func_chat_message_from_output(self, output):
        return chat_message_from_output(output)

    @_f.signature({"types": ["array"]})
    def _func_items_from_anthropic(self, messages):
        return items_from_anthropic(messages)

    @_f.signature({"types": ["array", "null"]}, {"types": ["array", "null"]}, {"types": []})
    def _func_anthropic_from_output(self, output, tools, thinking):
        return anthropic_from_output(output, tools, thinking)

    @_f.signature({"types": ["object"]})
    def _func_reasoning_signature(self, item):
        return reasoning_signature(item)

    @_f.signature({"types": ["object"]})
    def _func_search_blocks(self, item):
        return search_blocks(item)

    @_f.signature({"types": ["object"]}, {"types": ["string"]})
    def _func_anthropic_citation(self, note, text):
        return anthropic_citation(note, text)
