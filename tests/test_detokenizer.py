"""IncrementalDetokenizer: streamed text equals the full decode, no U+FFFD, stop strings."""

from __future__ import annotations

import pytest

from vllm_cli.engine.detokenizer import _PROMPT_CONTEXT, IncrementalDetokenizer
from vllm_cli.sampling_params import SamplingParams

TEXTS = [
    "Hello, world!",
    "  leading spaces and\nnew\n\nlines\t tabs ",
    "àèìòù café naïve",
    "日本語のテキスト",
    "emoji 👍🏽🙂 and 👨‍👩‍👧 family",
    "mixed: 日本 👍 àè\n  ok ∑ x² ≤ 10",
]


def stream(tok, ids, params=None, prompt=()):
    """Feed ids one at a time like the engine does; return (detokenizer, deltas, stop, tokens used)."""
    det = IncrementalDetokenizer(tok, list(prompt), params or SamplingParams())
    deltas, stop, used = [], None, 0
    for used, token_id in enumerate(ids, 1):
        stop = det.add_token(token_id)
        deltas.append(det.get_delta(finished=stop is not None))
        # Whatever was streamed so far must survive into the final text (never retracted).
        assert det.output_text.startswith("".join(deltas))
        if stop is not None:
            break
    else:
        deltas.append(det.get_delta(finished=True))
    assert "".join(deltas) == det.output_text
    assert det.get_delta(finished=True) == ""
    return det, deltas, stop, used


@pytest.fixture(scope="session")
def llama_like_tokenizer():
    """A tiny SentencePiece-style tokenizer (Metaspace, byte fallback, leading-space strip) built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "▁abcdefghijklmnopqrstuvwxyzHTàé.,!?\n":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he")]
    vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(params=["smollm2", "llama_like"])
def tok(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


# --- incremental text ------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_stream_equals_full_decode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    det, deltas, _, _ = stream(tok, ids)
    assert det.output_text == tok.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d) > 1  # it really streams


@pytest.mark.parametrize("text", TEXTS)
def test_stream_after_prompt(tok, text):
    prompt = tok.encode("Some prompt é 日", add_special_tokens=False)
    ids = tok.encode(" " + text, add_special_tokens=False)
    det, deltas, _, _ = stream(tok, ids, prompt=prompt)
    full, head = tok.decode(prompt + ids), tok.decode(prompt)
    assert det.output_text == full[len(head) :]  # keeps the leading space a lone decode would strip
    assert not any("\ufffd" in d for d in deltas)


def test_skip_special_tokens(smollm2_tokenizer):
    tok = smollm2_tokenizer
    hi, nihon = (tok.encode(t, add_special_tokens=False) for t in ("Hi", " 日本"))
    ids = hi + [tok.eos_token_id] + nihon
    assert stream(tok, ids)[0].output_text == "Hi 日本"
    kept = stream(tok, ids, SamplingParams(skip_special_tokens=False))[0]
    assert kept.output_text == f"Hi{tok.eos_token} 日本"


def test_invalid_bytes_are_flushed(llama_like_tokenizer):
    tok = llama_like_tokenizer
    lone = tok.convert_tokens_to_ids("<0xE6>")  # a 3-byte lead byte that never gets completed
    ids = tok.encode("ab", add_special_tokens=False) + [lone]
    det, deltas, _, _ = stream(tok, ids)
    assert det.output_text == tok.decode(ids) == "ab\ufffd"
    # A long run of garbage (random-weight models) is emitted rather than buffered forever.
    det = IncrementalDetokenizer(tok, [], SamplingParams())
    for _ in range(50):
        det.add_token(lone)
    assert det.output_text.count("\ufffd") >= 40


def test_window_stays_small(smollm2_tokenizer, monkeypatch):
    tok = smollm2_tokenizer
    ids = tok.encode(" ".join(TEXTS) * 40, add_special_tokens=False)
    assert len(ids) > 1000
    sizes = []
    decode = tok.decode

    def spy(token_ids, **kwargs):
        sizes.append(len(token_ids))
        return decode(token_ids, **kwargs)

    monkeypatch.setattr(tok, "decode", spy)
    det = IncrementalDetokenizer(tok, ids[:50], SamplingParams())
    for token_id in ids:
        det.add_token(token_id)
    monkeypatch.undo()
    assert det.output_text == tok.decode(ids)
    assert max(sizes) <= _PROMPT_CONTEXT + 4
    assert len(sizes) <= 2 * len(ids)


def test_decode_token(smollm2_tokenizer):
    tok = smollm2_tokenizer
    det = IncrementalDetokenizer(tok, [], SamplingParams())
    (the,) = tok.encode(" the", add_special_tokens=False)
    assert det.decode_token(the) == " the"
    assert det.decode_token(tok.eos_token_id) == tok.eos_token
    assert det.decode_token(the) == " the"  # cached


# --- stop strings ----------------------------------------------------------------------------

SENTENCE = "The quick brown fox jumps over the lazy dog. 日本語 is here."


@pytest.fixture
def sentence_ids(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode(SENTENCE, add_special_tokens=False)
    tokens = [smollm2_tokenizer.decode([i]) for i in ids]
    # The stop strings below must straddle token boundaries to test anything.
    assert not any("own fo" in t or "本語" in t for t in tokens)
    return ids


def test_stop_across_tokens(smollm2_tokenizer, sentence_ids):
    params = SamplingParams(stop=["own fo"])
    det, deltas, stop, used = stream(smollm2_tokenizer, sentence_ids, params)
    assert stop == "own fo" == det.stop_reason
    assert det.output_text == "The quick br"
    assert smollm2_tokenizer.decode(sentence_ids[:used]).endswith("fox")  # stopped on the " fox" token


def test_stop_include_in_output(smollm2_tokenizer, sentence_ids):
    params = SamplingParams(stop=["own fo"], include_stop_str_in_output=True)
    det, _, stop, _ = stream(smollm2_tokenizer, sentence_ids, params)
    assert stop == "own fo"
    assert det.output_text == "The quick brown fo"


def test_stop_multibyte(smollm2_tokenizer, sentence_ids):
    det, deltas, stop, _ = stream(smollm2_tokenizer, sentence_ids, SamplingParams(stop=["本語"]))
    assert stop == "本語"
    assert det.output_text == "The quick brown fox jumps over the lazy dog. 日"
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("stops", [["own fox", "n f"], ["n f", "own fox"]])
def test_earliest_stop_wins(smollm2_tokenizer, sentence_ids, stops):
    # " fox" completes both stop strings at once; the one starting earlier wins regardless of order.
    det, _, stop, _ = stream(smollm2_tokenizer, sentence_ids, SamplingParams(stop=stops))
    assert stop == "own fox"
    assert det.output_text == "The quick br"


def test_first_completed_stop_wins(smollm2_tokenizer, sentence_ids):
    det, _, stop, _ = stream(smollm2_tokenizer, sentence_ids, SamplingParams(stop=["lazy", "jumps", "over"]))
    assert stop == "jumps"
    assert det.output_text == "The quick brown fox "


def test_stop_at_start(smollm2_tokenizer, sentence_ids):
    det, deltas, stop, used = stream(smollm2_tokenizer, sentence_ids, SamplingParams(stop=["The"]))
    assert (stop, det.output_text, used) == ("The", "", 1)


def test_unmatched_stop_holds_back_then_flushes(smollm2_tokenizer, sentence_ids):
    # "here!" never matches, but the last len("here!") - 1 chars are held back until the sequence finishes.
    det, deltas, stop, _ = stream(smollm2_tokenizer, sentence_ids, SamplingParams(stop=["here!"]))
    assert stop is None
    assert det.output_text == SENTENCE
    assert deltas[-1] == SENTENCE[-4:]


def test_deltas_never_leak_truncated_stop(tok):
    text = "abc the end the xyz"
    ids = tok.encode(text, add_special_tokens=False)
    for stop in ["the x", "e en", "end t", "z"]:
        det, deltas, got, _ = stream(tok, ids, SamplingParams(stop=[stop]))
        assert got == stop
        assert det.output_text == text[: text.index(stop)]


def test_add_token_after_stop_is_ignored(smollm2_tokenizer, sentence_ids):
    det = IncrementalDetokenizer(smollm2_tokenizer, [], SamplingParams(stop=["quick"]))
    results = [det.add_token(t) for t in sentence_ids]
    assert results.count("quick") == 1 and results.count(None) == len(sentence_ids) - 1
    assert det.output_text == "The "
