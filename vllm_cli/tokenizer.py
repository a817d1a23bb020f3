"""Tokenizer loading (local dir, hub id, GGUF) and chat-template resolution/rendering.

transformers is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import jinja2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# ChatML, for base models that ship no template (e.g. MPT-7B). Such models were not trained on
# "<|im_end|>", so callers should also use it as a stop string when this template is in use.
FALLBACK_CHAT_TEMPLATE: str = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

FALLBACK_STOP_STRINGS = ("<|im_end|>",)


def chat_stop_strings(chat_template: str) -> list[str]:
    """Stop strings a chat request needs on top of its own: the fallback template's end marker,
    which a base model never learned to emit as EOS."""
    return list(FALLBACK_STOP_STRINGS) if chat_template == FALLBACK_CHAT_TEMPLATE else []


# Arguments apply_chat_template owns; chat_template_kwargs may not override them.
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "chat_template",
        "tokenize",
        "return_dict",
        "return_tensors",
        "add_generation_prompt",
        "continue_final_message",
    }
)


def _looks_like_local_path(path: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist is a missing local path,
    # which must fail fast instead of going through the hub's network retries.
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


def get_tokenizer(
    path: str,
    gguf_file: str | None = None,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local dir, a hub id (cache only when offline) or a GGUF file.

    `path` may also be the .gguf file itself. Raises OSError with a one-line message on failure.
    """
    path = os.path.expanduser(path)
    if gguf_file is None and path.endswith(".gguf") and os.path.isfile(path):
        path, gguf_file = os.path.split(os.path.abspath(path))
    where = f"{path!r}" + (f" (gguf file {gguf_file!r})" if gguf_file else "")
    if not os.path.exists(path) and _looks_like_local_path(path):
        raise OSError(f"cannot load a tokenizer from {where}: no such directory")
    if gguf_file and os.path.isdir(path) and not os.path.isfile(os.path.join(path, gguf_file)):
        raise OSError(f"cannot load a tokenizer from {where}: no such file")

    # transformers only when a tokenizer is loaded: the chat-template half of this module is used by
    # front ends that never load one (and must stay cheap to import).
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        if gguf_file is not None and os.path.isfile(os.path.join(path, gguf_file)):
            # A local .gguf: its converted tokenizer is cached on disk (converting the vocab takes seconds).
            # Imported here: GGUF support brings torch, which no other tokenizer needs.
            from vllm_cli.model_executor.gguf import load_gguf_tokenizer

            return load_gguf_tokenizer(path, gguf_file, **kwargs)
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as e:  # transformers raises many types; the caller wants one readable line
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OSError(f"cannot load a tokenizer from {where}: {reason}") from e


def resolve_chat_template(tokenizer: Any, chat_template: str | None) -> tuple[str, str]:
    """Pick the template text: explicit arg (file path or inline jinja) > tokenizer's > ChatML fallback.

    Returns (template_text, human-readable description of where it came from).
    """
    if chat_template is not None:
        if "{%" in chat_template or "{{" in chat_template:
            text, desc = chat_template, "inline chat template"
        else:
            file = os.path.expanduser(chat_template)
            if not os.path.isfile(file):
                raise ValueError(f"chat template file not found: {chat_template}")
            with open(file, encoding="utf-8") as f:
                text, desc = f.read(), f"chat template from {chat_template}"
    else:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # named templates (e.g. "default", "tool_use")
            own = own.get("default") or next(iter(own.values()), None)
        if own:
            text, desc = own, "the tokenizer's chat template"
        else:
            text, desc = FALLBACK_CHAT_TEMPLATE, "the fallback ChatML template (the model has none)"
    _check_syntax(text, desc)
    return text, desc


def _check_syntax(template: str, desc: str) -> None:
    # Fail at start-up with a clear message rather than on the first request.
    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"invalid {desc}: {e.message} (line {e.lineno})") from e


def _normalize_messages(messages: list[dict]) -> list[dict]:
    """Flatten content parts into plain strings; templates expect `content` to be a str."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if content is None:
            content = ""  # e.g. an assistant message that only carried tool calls
        elif isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(
                        f"messages[{i}].content: unsupported content part type {kind!r}"
                        " (only 'text' parts are supported)"
                    )
                texts.append(part.get("text") or "")
            content = "\n".join(texts)
        elif not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of content parts")
        message = {**message, "content": content}
        if message.get("tool_calls"):
            message["tool_calls"] = [_with_arguments_object(c) for c in message["tool_calls"]]
        out.append(message)
    return out


def _with_arguments_object(call: dict) -> dict:
    """Templates read a call's arguments as an object (`arguments | tojson`); OpenAI sends JSON text.
    vLLM hands templates the object too. Text that is not JSON stays as it is."""
    function = call.get("function")
    if not (isinstance(function, dict) and isinstance(function.get("arguments"), str)):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


# How tools, calls and results are written into the messages for a template that cannot render them
# itself (Hermes' tags: what the hermes tool parser reads back).
_TOOLS_TEXT = (
    "You can call the following tools. Their definitions, as JSON, one per line:\n<tools>\n{tools}\n</tools>\n"
    "To call a tool, answer with one <tool_call></tool_call> block per call, each holding a JSON object "
    'with the keys "name" and "arguments":\n<tool_call>\n{{"name": "...", "arguments": {{...}}}}\n</tool_call>'
)


def _tool_call_text(call: dict) -> str:
    function = call.get("function") or {}
    body = {"name": function.get("name"), "arguments": function.get("arguments")}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def _tools_as_text(messages: list[dict], tools: list[dict]) -> list[dict]:
    """The tool definitions as text at the end of the system message (a new one if there is none)."""
    text = _TOOLS_TEXT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}" if first["content"] else text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _tool_calls_as_text(messages: list[dict]) -> list[dict]:
    """Assistant tool calls as text after the message's content."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = "\n".join(_tool_call_text(c) for c in m["tool_calls"])
            m = {k: v for k, v in m.items() if k != "tool_calls"}
            m["content"] = f"{m['content']}\n{calls}" if m["content"] else calls
        out.append(m)
    return out


def _tool_results_as_text(messages: list[dict]) -> list[dict]:
    """Tool messages as user messages holding <tool_response> blocks."""
    return [
        {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        if m.get("role") == "tool"
        else m
        for m in messages
    ]


def render_chat_prompt(
    tokenizer: Any,
    messages: list[dict],
    chat_template: str,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict | None = None,
    tools: list[dict] | None = None,
) -> str:
    """Render messages to prompt text with `chat_template` (as returned by resolve_chat_template).

    `tools` (OpenAI's function tool definitions) go to the template as `tools=`; assistant messages
    may carry `tool_calls` and tool messages `tool_call_id`. Many templates (SmolLM2's among them)
    render none of these, and would drop them without a word: then they are written into the
    messages as text instead, in Hermes' tags (tools in the system message, calls after the
    assistant's content, results as <tool_response> user messages), so the model still sees them.
    Whether the template renders them is judged from its source (it names `tools` / `tool_calls`)
    and, for tool results, from the rendered prompt (each result's text must appear in it).
    """
    if not messages:
        raise ValueError("messages must not be empty")
    if continue_final_message:
        if messages[-1].get("role") != "assistant":
            raise ValueError("continue_final_message requires the last message to be from the assistant")
        add_generation_prompt = False  # the reply continues in place; no new assistant header
    extra = dict(chat_template_kwargs or {})
    if clash := _RESERVED_TEMPLATE_KWARGS & extra.keys():
        raise ValueError(f"chat_template_kwargs may not set {', '.join(sorted(clash))}")
    messages = _normalize_messages(messages)
    if tools and "tools" not in chat_template:
        messages, tools = _tools_as_text(messages, tools), None
    if "tool_calls" not in chat_template and any(m.get("tool_calls") for m in messages):
        messages = _tool_calls_as_text(messages)

    def render(msgs: list[dict]) -> str:
        return tokenizer.apply_chat_template(
            msgs,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            tools=tools or None,
            **extra,
        )

    results = [m["content"] for m in messages if m.get("role") == "tool"]
    if not results:
        return render(messages)
    try:
        text = render(messages)
    except Exception:  # e.g. a template that allows only user/assistant roles
        return render(_tool_results_as_text(messages))
    if all(r in text for r in results):
        return text
    return render(_tool_results_as_text(messages))


def apply_chat_template(
    tokenizer: Any,
    messages: list[dict],
    chat_template: str,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict | None = None,
    tools: list[dict] | None = None,
) -> list[int]:
    """Render messages (and tools: see render_chat_prompt) and tokenize them into prompt token ids."""
    text = render_chat_prompt(
        tokenizer,
        messages,
        chat_template,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        chat_template_kwargs=chat_template_kwargs,
        tools=tools,
    )
    # The template already emits bos/special tokens as text; adding them again would double them.
    return list(tokenizer.encode(text, add_special_tokens=False))


def _as_ids(value: Any) -> Iterable[int]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return (int(v) for v in value)


def get_eos_token_ids(tokenizer: Any, hf_config: Any = None) -> set[int]:
    """The tokenizer's eos id plus `eos_token_id` (int or list) of hf_config.

    hf_config may be a PretrainedConfig, a GenerationConfig, a dict, or a list/tuple of these.
    """
    ids = set(_as_ids(getattr(tokenizer, "eos_token_id", None)))
    configs = hf_config if isinstance(hf_config, (list, tuple)) else (hf_config,)
    for config in configs:
        if config is None:
            continue
        value = config.get("eos_token_id") if isinstance(config, dict) else getattr(config, "eos_token_id", None)
        ids.update(_as_ids(value))
    return ids
