"""Stop strings (``rollout.stop``): a completion ends at the token at which its decoded text first contains one.

The semantics are those of transformers' ``stop_strings`` and of vLLM with ``include_stop_str_in_output=True``:
the token that completes the stop string is kept (the trainer scores exactly the sampled tokens, with their
log-probs) and so is any text it carries past the stop string; nothing after it is. A format reward then sees
``</answer>``.

One definition serves every sampler: token t ends the completion when the decode of a short window of tokens
ending at t (``StopStrings.window`` of them) contains a stop string, and no earlier token's window did. The r1kit
sampler checks it as it decodes (one short decode per live row per step, never the whole row), and
``TransformersBackend.completion`` finds the same token in any finished row, so the samplers cut alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Window slack, in tokens, beyond the stop string's byte length: a sentencepiece decode drops the leading space of
# its first token, and a window may open inside a multi-byte character; neither may reach the stop string itself.
WINDOW_SLACK = 3
CHUNK = 32
"""Tokens per chunk when ``StopStrings.first_stop`` searches a finished row."""


@dataclass(frozen=True)
class StopStrings:
    """The stop strings of one backend, with the tokenizer that decodes completions.

    >>> class Chars:  # token id = code point
    ...     def decode(self, ids, skip_special_tokens=False):
    ...         return "".join(map(chr, ids))
    ...     def batch_decode(self, rows, skip_special_tokens=False):
    ...         return [self.decode(r) for r in rows]
    >>> stops = StopStrings(Chars(), ("ab",))
    >>> stops.first_stop([ord(c) for c in "xxabyy"])  # 'a' at index 2, 'b' at 3: kept through 'b'
    4
    >>> stops.hits([[ord("a")], [ord("a"), ord("b")]]), stops.first_stop([ord(c) for c in "xxa"])
    ([False, True], None)
    """

    tokenizer: Any
    strings: tuple[str, ...]

    @property
    def window(self) -> int:
        """Tokens decoded per check: a stop string of n UTF-8 bytes spans at most n tokens (every token but a
        special one decodes to at least one byte), plus ``WINDOW_SLACK``."""
        return max(len(s.encode("utf-8")) for s in self.strings) + WINDOW_SLACK

    def hits(self, tails: Sequence[Sequence[int]]) -> list[bool]:
        """Per row, whether the decode of its last tokens (``tails``, at most ``window`` of them) holds a stop."""
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=False)
        return [any(s in text for s in self.strings) for text in texts]

    def first_stop(self, tokens: Sequence[int], text: str | None = None) -> int | None:
        """How many of ``tokens`` to keep: through the first one whose window holds a stop string; None if none.

        ``text``: the decode of ``tokens`` if already known; a row whose whole text holds no stop string costs
        nothing more. Otherwise the row is searched in chunks of ``CHUNK`` tokens (each decoded with the ``window``
        before it, so it holds every window ending in it), then window by window in the first chunk that hits:
        about T / CHUNK + CHUNK short decodes for T tokens, not T.
        """
        if text is None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        if not any(s in text for s in self.strings):
            return None
        w, starts = self.window, range(0, len(tokens), CHUNK)
        chunk_hits = self.hits([tokens[max(0, c + 1 - w) : c + CHUNK] for c in starts])
        for c in (c for c, hit in zip(starts, chunk_hits, strict=True) if hit):
            ends = range(c, min(c + CHUNK, len(tokens)))
            found = self.hits([tokens[max(0, t + 1 - w) : t + 1] for t in ends])
            first = next((t + 1 for t, hit in zip(ends, found, strict=True) if hit), None)
            if first is not None:
                return first
        return None


def generated_stop_criteria(stops: StopStrings, prompt_len: int):
    """``model.generate(stopping_criteria=...)`` for ``stops``: transformers' own ``StopStringCriteria``, shown only
    the generated tokens (after ``prompt_len`` columns of left-padded prompt).

    Given the whole sequence, as ``generate(stop_strings=...)`` gives it, the criterion also fires on a stop string
    that the prompt's tail begins and the first tokens finish (``:H`` after a prompt ending in ``:``): that row would
    end early and be padded, though its completion holds no stop string. vLLM searches the output text only, and
    so does the r1kit sampler."""
    from transformers import StoppingCriteriaList, StopStringCriteria

    whole = StopStringCriteria(stops.tokenizer, list(stops.strings))

    def generated_only(input_ids_BL, scores, **kwargs):
        return whole(input_ids_BL[:, prompt_len:], scores)

    return StoppingCriteriaList([generated_only])


def stop_strings(tokenizer, strings: Sequence[str]) -> StopStrings | None:
    """``StopStrings`` for a backend, or None when there are none (no check runs at all: the default path is
    unchanged)."""
    strings = tuple(strings)
    bad = [s for s in strings if not isinstance(s, str) or not s]
    if bad:
        raise ValueError(f"stop strings must be non-empty strings, got {bad!r}")
    return StopStrings(tokenizer, strings) if strings else None
