"""Tokenizer loading and chat templates (SmolLM2 GGUF tokenizer; no hub access)."""

from __future__ import annotations

import os

import pytest

from vllm_cli.tokenizer import (
    FALLBACK_CHAT_TEMPLATE,
    apply_chat_template,
    get_eos_token_ids,
    get_tokenizer,
    render_chat_prompt,
    resolve_chat_template,
)

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "日本語 and émoji 👍🏽?"},
]


def _ids(result) -> list[int]:
    # transformers 5 returns a BatchEncoding from tokenize=True; older versions a list.
    return list(result["input_ids"] if hasattr(result, "keys") else result)


@pytest.fixture
def no_template_tokenizer(smollm2_tokenizer, monkeypatch):
    """The SmolLM2 tokenizer posing as a base model without a chat template."""
    monkeypatch.setattr(smollm2_tokenizer, "chat_template", None)
    return smollm2_tokenizer


# --- get_tokenizer ---------------------------------------------------------------------------


def test_get_tokenizer_gguf(smollm2_tokenizer):
    assert smollm2_tokenizer.chat_template
    assert smollm2_tokenizer.decode(smollm2_tokenizer.encode("Hello world")) == "Hello world"


def test_get_tokenizer_from_saved_dir(smollm2_tokenizer, tmp_path):
    smollm2_tokenizer.save_pretrained(tmp_path)
    tok = get_tokenizer(str(tmp_path))
    text = "The café serves 日本語 👍"
    assert tok.encode(text) == smollm2_tokenizer.encode(text)
    assert tok.chat_template == smollm2_tokenizer.chat_template


def test_get_tokenizer_accepts_gguf_file_path(smollm2_gguf_path, monkeypatch, tmp_path):
    import transformers

    monkeypatch.setenv("VLLM_CLI_CACHE_DIR", str(tmp_path))  # an empty GGUF cache: load from the file

    seen = {}

    def fake_from_pretrained(path, **kwargs):
        seen.update(path=path, **kwargs)
        return "tok"

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    assert get_tokenizer(smollm2_gguf_path, revision="abc") == "tok"
    assert seen == {
        "path": os.path.dirname(smollm2_gguf_path),
        "gguf_file": os.path.basename(smollm2_gguf_path),
        "trust_remote_code": False,
        "revision": "abc",
    }


def test_get_tokenizer_missing_dir(tmp_path):
    with pytest.raises(OSError, match="no such directory") as e:
        get_tokenizer(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)


def test_get_tokenizer_missing_gguf_file(smollm2_gguf_path):
    with pytest.raises(OSError, match="no such file"):
        get_tokenizer(os.path.dirname(smollm2_gguf_path), gguf_file="missing.gguf")


def test_get_tokenizer_dir_without_tokenizer(tmp_path):
    (tmp_path / "README.md").write_text("empty")
    with pytest.raises(OSError, match="cannot load a tokenizer from") as e:
        get_tokenizer(str(tmp_path))
    assert "\n" not in str(e.value)


# --- resolve_chat_template -------------------------------------------------------------------


def test_resolve_uses_tokenizer_template(smollm2_tokenizer):
    text, desc = resolve_chat_template(smollm2_tokenizer, None)
    assert text == smollm2_tokenizer.chat_template
    assert desc == "the tokenizer's chat template"


def test_resolve_explicit_inline_wins(smollm2_tokenizer):
    inline = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert resolve_chat_template(smollm2_tokenizer, inline) == (inline, "inline chat template")


def test_resolve_explicit_file_wins(smollm2_tokenizer, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0]['content'] }}")
    text, desc = resolve_chat_template(smollm2_tokenizer, str(path))
    assert text == "{{ messages[0]['content'] }}"
    assert desc == f"chat template from {path}"


def test_resolve_missing_file(smollm2_tokenizer, tmp_path):
    missing = str(tmp_path / "missing.jinja")
    with pytest.raises(ValueError, match=f"chat template file not found: {missing}"):
        resolve_chat_template(smollm2_tokenizer, missing)


def test_resolve_invalid_jinja(smollm2_tokenizer):
    with pytest.raises(ValueError, match="invalid inline chat template"):
        resolve_chat_template(smollm2_tokenizer, "{% for m in messages %}")


def test_resolve_named_templates_use_default():
    class Tok:
        chat_template = {"tool_use": "{{ 'tools' }}", "default": "{{ 'default' }}"}

    assert resolve_chat_template(Tok(), None) == ("{{ 'default' }}", "the tokenizer's chat template")


def test_resolve_fallback(no_template_tokenizer):
    text, desc = resolve_chat_template(no_template_tokenizer, None)
    assert text == FALLBACK_CHAT_TEMPLATE
    assert desc == "the fallback ChatML template (the model has none)"


def test_fallback_template_renders_chatml(no_template_tokenizer):
    template, _ = resolve_chat_template(no_template_tokenizer, None)
    messages = MESSAGES[:3]
    expected = (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    assert render_chat_prompt(no_template_tokenizer, messages, template, add_generation_prompt=False) == expected
    assert render_chat_prompt(no_template_tokenizer, messages, template) == expected + "<|im_start|>assistant\n"


# --- apply_chat_template / render_chat_prompt ------------------------------------------------


@pytest.mark.parametrize("messages", [MESSAGES, MESSAGES[1:2]])
def test_apply_matches_transformers(smollm2_tokenizer, messages):
    template, _ = resolve_chat_template(smollm2_tokenizer, None)
    ours = apply_chat_template(smollm2_tokenizer, messages, template)
    theirs = _ids(smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    assert ours == theirs
    assert ours[:2] != [smollm2_tokenizer.bos_token_id] * 2  # the template's bos is not added twice


def test_render_matches_apply(smollm2_tokenizer):
    template, _ = resolve_chat_template(smollm2_tokenizer, None)
    text = render_chat_prompt(smollm2_tokenizer, MESSAGES, template)
    assert text.endswith("<|im_start|>assistant\n")
    ids = apply_chat_template(smollm2_tokenizer, MESSAGES, template)
    assert smollm2_tokenizer.decode(ids) == text


def test_continue_final_message(smollm2_tokenizer):
    template, _ = resolve_chat_template(smollm2_tokenizer, None)
    messages = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "One, two,"}]
    text = render_chat_prompt(smollm2_tokenizer, messages, template, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\nOne, two,")
    ids = apply_chat_template(smollm2_tokenizer, messages, template, continue_final_message=True)
    assert smollm2_tokenizer.decode(ids) == text


def test_continue_final_message_requires_assistant(smollm2_tokenizer):
    template, _ = resolve_chat_template(smollm2_tokenizer, None)
    with pytest.raises(ValueError, match="last message to be from the assistant"):
        apply_chat_template(smollm2_tokenizer, MESSAGES, template, continue_final_message=True)


def test_content_parts_are_joined(smollm2_tokenizer):
    template, _ = resolve_chat_template(smollm2_tokenizer, None)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}]
    plain = [{"role": "user", "content": "Hi\nthere"}]
    assert render_chat_prompt(smollm2_tokenizer, parts, template) == render_chat_prompt(
        smollm2_tokenizer, plain, template
    )


def test_content_parts_reject_other_types(smollm2_tokenizer):
    template, _ = resolve_chat_template(smollm2_tokenizer, None)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(ValueError, match="unsupported content part type 'image_url'"):
        apply_chat_template(smollm2_tokenizer, messages, template)


def test_chat_template_kwargs(smollm2_tokenizer):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ suffix }}"
    text = render_chat_prompt(
        smollm2_tokenizer, MESSAGES[1:2], template, chat_template_kwargs={"suffix": "!!"}
    )
    assert text == "Hi there!!!"
    with pytest.raises(ValueError, match="may not set tokenize"):
        render_chat_prompt(smollm2_tokenizer, MESSAGES, template, chat_template_kwargs={"tokenize": True})


def test_empty_messages(smollm2_tokenizer):
    with pytest.raises(ValueError, match="must not be empty"):
        apply_chat_template(smollm2_tokenizer, [], FALLBACK_CHAT_TEMPLATE)


# --- get_eos_token_ids -----------------------------------------------------------------------


def test_eos_token_ids(smollm2_tokenizer):
    from transformers import GenerationConfig, LlamaConfig

    eos = smollm2_tokenizer.eos_token_id
    assert get_eos_token_ids(smollm2_tokenizer) == {eos}
    assert get_eos_token_ids(smollm2_tokenizer, LlamaConfig(eos_token_id=7)) == {eos, 7}
    assert get_eos_token_ids(smollm2_tokenizer, {"eos_token_id": [8, 9]}) == {eos, 8, 9}
    both = [LlamaConfig(eos_token_id=None), GenerationConfig(eos_token_id=[eos, 0])]
    assert get_eos_token_ids(smollm2_tokenizer, both) == {eos, 0}
