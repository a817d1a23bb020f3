"""Tokenizer loading (local dir, hub id, GGUF) and chat-template resolution/rendering.

transformers is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

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
    {"conversation", "chat_template", "tokenize", "return_dict", "return_tensors",
     "add_generation_prompt", "continue_final_message"}
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
        out.append({**message, "content": content})
    return out


def render_chat_prompt(
    tokenizer: Any,
    messages: list[dict],
    chat_template: str,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict | None = None,
) -> str:
    """Render messages to prompt text with `chat_template` (as returned by resolve_chat_template)."""
    if not messages:
        raise ValueError("messages must not be empty")
    if continue_final_message:
        if messages[-1].get("role") != "assistant":
            raise ValueError("continue_final_message requires the last message to be from the assistant")
        add_generation_prompt = False  # the reply continues in place; no new assistant header
    extra = dict(chat_template_kwargs or {})
    if clash := _RESERVED_TEMPLATE_KWARGS & extra.keys():
        raise ValueError(f"chat_template_kwargs may not set {', '.join(sorted(clash))}")
    return tokenizer.apply_chat_template(
        _normalize_messages(messages),
        chat_template=chat_template,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        tokenize=False,
        **extra,
    )


def apply_chat_template(
    tokenizer: Any,
    messages: list[dict],
    chat_template: str,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict | None = None,
) -> list[int]:
    """Render messages and tokenize them into prompt token ids."""
    text = render_chat_prompt(
        tokenizer,
        messages,
        chat_template,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        chat_template_kwargs=chat_template_kwargs,
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
