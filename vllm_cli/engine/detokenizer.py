"""Incremental detokenization and stop-string handling for one sequence.

Uses vLLM's prefix_offset/read_offset method: each new token decodes only a small window
(a few already-emitted tokens of context + the not-yet-emitted ones), and text is emitted
only once it no longer ends in U+FFFD, so a multi-byte character split across tokens is
emitted whole. The window is trimmed after every emission, keeping add_token O(window).
"""

from __future__ import annotations

import weakref
from typing import Any

from vllm_cli.sampling_params import SamplingParams

# Prompt tokens kept as left context, so the first generated token decodes with its leading
# space (SentencePiece decoders strip the space of a sequence's first token).
_PROMPT_CONTEXT = 5
# A UTF-8 character spans at most 4 tokens; beyond this many pending tokens the bytes are
# invalid (e.g. from a random-weight model): emit them with U+FFFD instead of growing the window.
_MAX_PENDING = 8
_REPLACEMENT = "\ufffd"

# Per-tokenizer cache for decode_token (logprobs decode the same top-k ids over and over).
_token_text_cache: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self._skip_special = params.skip_special_tokens
        # Filtering special ids up front keeps them out of the window entirely.
        self._special: frozenset[int] = frozenset(tokenizer.all_special_ids) if self._skip_special else frozenset()
        self._stops: list[str] = list(params.stop or ())
        self._include_stop = params.include_stop_str_in_output
        # Characters that might be the start of a stop string and must not be streamed yet.
        self._hold = max(map(len, self._stops), default=1) - 1

        # Window of token ids: [_prefix, _read) already emitted (context), [_read, end) pending.
        self._ids: list[int] = [t for t in prompt_token_ids[-_PROMPT_CONTEXT:] if t not in self._special]
        self._prefix = 0
        self._read = len(self._ids)
        self._prefix_text: str | None = None  # decode of [_prefix, _read), cached until the window moves

        self._text = ""
        self._sent = 0  # chars of _text already returned by get_delta
        self.stop_reason: str | None = None  # the matched stop string, once one matched

    @property
    def output_text(self) -> str:
        return self._text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self._skip_special, clean_up_tokenization_spaces=False)

    def add_token(self, token_id: int) -> str | None:
        """Append one generated token; return the stop string it completed, if any."""
        if self.stop_reason is not None or token_id in self._special:
            return None
        self._ids.append(token_id)
        return self._advance(force=False)

    def _advance(self, force: bool) -> str | None:
        ids = self._ids
        if self._prefix_text is None:
            self._prefix_text = self._decode(ids[self._prefix : self._read])
        new_text = self._decode(ids[self._prefix :])
        if len(new_text) <= len(self._prefix_text):
            return None  # nothing visible yet (e.g. a token that decodes to "")
        if new_text.endswith(_REPLACEMENT) and not force and len(ids) - self._read < _MAX_PENDING:
            return None  # an incomplete multi-byte character: wait for its remaining bytes
        delta = new_text[len(self._prefix_text) :]
        # Slide the window: what was pending becomes the context; drop the old context.
        del ids[: self._read]
        self._prefix, self._read, self._prefix_text = 0, len(ids), None
        return self._append(delta)

    def _append(self, delta: str) -> str | None:
        self._text += delta
        if not self._stops:
            return None
        # A new match must end inside delta, so it starts at most len(stop)-1 chars before it.
        start = max(0, len(self._text) - len(delta) - self._hold)
        best_at, best = -1, None
        for stop in self._stops:
            at = self._text.find(stop, start)
            if at != -1 and (best is None or at < best_at):
                best_at, best = at, stop
        if best is None:
            return None
        self._text = self._text[: best_at + len(best) if self._include_stop else best_at]
        self.stop_reason = best
        return best

    def get_delta(self, finished: bool) -> str:
        """Text not returned before. Unless finished, hold back a possible stop-string prefix."""
        if finished and self.stop_reason is None and self._read < len(self._ids):
            self._advance(force=True)  # flush bytes that never formed a complete character
        end = len(self._text)
        if not finished and self.stop_reason is None:
            end -= self._hold
        if end <= self._sent:
            return ""
        delta = self._text[self._sent : end]
        self._sent = end
        return delta

    def decode_token(self, token_id: int) -> str:
        """Standalone text of one token (special tokens included), for logprobs."""
        try:
            cache = _token_text_cache.setdefault(self.tokenizer, {})
        except TypeError:  # tokenizer not weak-referenceable/hashable: no cache
            cache = {}
        text = cache.get(token_id)
        if text is None:
            text = cache[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text
