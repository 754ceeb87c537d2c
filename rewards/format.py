"""Format, language and length rewards for R1-style completions (``<think>...</think><answer>...</answer>``).

Every reward is a plain batch function ``(prompts, completions, ..., **kwargs)``, so it works both in r1kit's
scorer and as a TRL ``reward_funcs`` entry. Completions may be strings or TRL's conversational form (a list of
``{"role", "content"}`` messages; the last message is scored). Options are keyword arguments with defaults (set
them with ``RewardSpec.kwargs``); the only dataset column any of them needs is ``answer`` (``cosine_length``).

Lengths (``overlong_penalty``, ``cosine_length``, ``len_reward``) are counted in tokens when a ``completion_ids``
keyword is passed (r1kit's trainer, its evaluation and ``rollouts.rescore`` of rollouts that stored the ids, and TRL,
all pass one list of token ids per completion: the unit of ``rollout.max_new_tokens``), otherwise (a direct call) in
characters - about 4 per token in English, so a limit meant in tokens cuts in 4x too early on characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from rewards.base import Scored, completion_texts, register_reward
from rewards.math.verify import DEFAULT_TIMEOUT_S, warm_pool

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_NO_TAG = r"(?:(?!</?(?:think|answer)>).)*"  # block content: anything but another R1 tag
_STRICT_RE = re.compile(rf"\s*<think>({_NO_TAG})</think>\s*<answer>({_NO_TAG})</answer>\s*", re.S)


@register_reward("r1_format_strict")
def r1_format_strict(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 when the whole completion is one think block then one answer block, else 0.0.

    Whitespace (newlines included) may surround and separate the blocks; nothing else may. Each block must hold
    some non-blank text and no other R1 tag, so ``<answer>1</answer><answer>2</answer>`` tails do not pass.

    >>> r1_format_strict(["q"] * 4, ["<think>2+2</think>\\n<answer>4</answer>\\n", "<think>2+2</think> So 4.",
    ...     "<think>a</think><answer>4</answer><answer>5</answer>", "<think> </think><answer>4</answer>"])
    [1.0, 0.0, 0.0, 0.0]
    """
    out = []
    for text in completion_texts(completions):
        m = _STRICT_RE.fullmatch(text)
        out.append(float(m is not None and bool(m.group(1).strip()) and bool(m.group(2).strip())))
    return out


@register_reward("r1_format_soft")
def r1_format_soft(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 when ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` appear in this order anywhere, else 0.0.

    >>> r1_format_soft(["q"] * 3, ["Sure. <think>x</think> so <answer>4</answer> done",
    ...     "<answer>4</answer><think>x</think>", "<think>x</think>4"])
    [1.0, 0.0, 0.0]
    """
    return [float(_tags_in_order(text)) for text in completion_texts(completions)]


def _tags_in_order(text: str) -> bool:
    # Earliest match of each tag after the previous one: linear, where a lazy regex backtracks on many tags.
    pos = 0
    for tag in _TAGS:
        pos = text.find(tag, pos)
        if pos < 0:
            return False
        pos += len(tag)
    return True


@register_reward("tag_count")
def tag_count(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """0.25 for each of the four R1 tags that appears exactly once (open-r1's ``tag_count_reward``).

    open-r1 counts the tags with the newlines of its own template (``"\\n</think>\\n"``); here the bare tags are
    counted, matching ``r1_format_strict``, which allows but does not require newlines.

    >>> tag_count(["q"] * 3, ["<think>a</think><answer>1</answer>", "<think>a</think><think>b</think>", "42"])
    [1.0, 0.0, 0.0]
    >>> tag_count(["q"], ["<think>a</think><answer>1"])
    [0.75]
    """
    return [0.25 * sum(text.count(tag) == 1 for tag in _TAGS) for text in completion_texts(completions)]


# ---- language consistency (DeepSeek-R1 §2.3.3) -------------------------------------------------------------

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U00030000-\U0003134f"
_HIRAGANA = "\u3040-\u309f"
_KATAKANA = "\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\uff21-\uff3a\uff41-\uff5a"
_CYRILLIC = "\u0400-\u04ff"
_SCRIPT_RES = {
    "han": re.compile(f"[{_HAN}]"),
    "hiragana": re.compile(f"[{_HIRAGANA}]"),
    "katakana": re.compile(f"[{_KATAKANA}]"),
    "hangul": re.compile(f"[{_HANGUL}]"),
    "latin": re.compile(f"[{_LATIN}]"),
    "cyrillic": re.compile(f"[{_CYRILLIC}]"),
}
# Han and kana are counted per character (no spaces between words); other scripts per run of letters of one
# script. The last branch catches letters of any other script (Greek, Arabic, ...) so that they count as foreign.
_WORD_RE = re.compile(
    f"[{_HAN}{_HIRAGANA}{_KATAKANA}]|[{_LATIN}]+|[{_CYRILLIC}]+|[{_HANGUL}]+"
    f"|[^\\W\\d_{_HAN}{_HIRAGANA}{_KATAKANA}{_LATIN}{_CYRILLIC}{_HANGUL}]+"
)
_MATH_RE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+", re.S)
LANGUAGE_SCRIPTS = {
    "en": ("latin",),
    "zh": ("han",),
    "ja": ("han", "hiragana", "katakana"),
    "ko": ("hangul", "han"),
    "ru": ("cyrillic",),
}
"""Scripts whose words count as the target language. A script is not a language: French counts as ``en``."""


def script_words(text: str) -> list[str]:
    """The words of ``text`` for counting languages: math and LaTeX commands dropped, CJK one word per character.

    >>> script_words("So $x^2$ is 答案是 4 \\\\frac ok")
    ['So', 'is', '答', '案', '是', 'ok']
    """
    return _WORD_RE.findall(_MATH_RE.sub(" ", text))


def _script(word: str) -> str:
    return next((name for name, r in _SCRIPT_RES.items() if r.match(word)), "other")


def reasoning_text(text: str) -> str:
    """The think block (also when the prompt opened it, or it was cut off), else the whole text."""
    if "</think>" in text:
        return text.split("</think>", 1)[0].split("<think>")[-1]
    if "<think>" in text:
        return text.split("<think>", 1)[1]
    return text


@register_reward("language_consistency")
def language_consistency(prompts: list, completions: list, language: str = "en", **kwargs: Any) -> list[float | None]:
    """Share of the reasoning's words written in the ``language`` script (DeepSeek-R1's language-consistency
    reward, §2.3.3); abstains (None) when the reasoning has no words (``<think>2+3=5</think>``).

    Words are found by Unicode script ranges, never a model: Han/kana count per character, other scripts per run
    of letters; numbers, punctuation, ``$...$`` math and LaTeX commands are not words. ``language`` is one of
    ``LANGUAGE_SCRIPTS`` (en, zh, ja, ko, ru).

    >>> language_consistency(["q"] * 3, ["<think>We add 2 and 3</think><answer>5</answer>",
    ...     "<think>We 相加</think>5", "<think>1+1=2</think><answer>2</answer>"])
    [1.0, 0.3333333333333333, None]
    >>> language_consistency(["q"], ["<think>先算 2+3，then 乘</think>"], language="zh")
    [0.75]
    """
    if language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"language_consistency: unknown language {language!r}; known: {sorted(LANGUAGE_SCRIPTS)}")
    target = LANGUAGE_SCRIPTS[language]
    out: list[float | None] = []
    for text in completion_texts(completions):
        words = script_words(reasoning_text(text))
        out.append(sum(_script(w) in target for w in words) / len(words) if words else None)
    return out


# ---- length ------------------------------------------------------------------------------------------------


def completion_lengths(completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None) -> list[int]:
    """Tokens per completion when ``completion_ids`` is given (as TRL passes it: the completion's tokens only, no
    prompt, no padding), else characters.

    >>> completion_lengths(["four", "a b"], [[11, 12], [13]]), completion_lengths(["four", "a b"], None)
    ([2, 1], [4, 3])
    """
    if completion_ids is None:
        return [len(t) for t in completion_texts(completions)]
    if len(completion_ids) != len(completions):
        raise ValueError(f"completion_ids has {len(completion_ids)} rows for {len(completions)} completions")
    bad = next(
        (i for i, ids in enumerate(completion_ids) if isinstance(ids, str | bytes) or not hasattr(ids, "__len__")),
        None,
    )
    if bad is not None:  # a text passed as ids would be measured in characters without a word
        raise TypeError(f"completion_ids[{bad}] is a {type(completion_ids[bad]).__name__}, not a list of token ids")
    return [len(ids) for ids in completion_ids]


@register_reward("overlong_penalty")
def overlong_penalty(
    prompts: list,
    completions: list,
    max_completion_len: int = 4096,
    cache_len: int = 1024,
    completion_ids: list[list[int]] | None = None,
    **kwargs: Any,
) -> list[float]:
    """DAPO's soft overlong punishment (eq. 13): 0 up to ``max_completion_len - cache_len``, then falling linearly
    to -1 at ``max_completion_len``, and -1 beyond. Length in tokens with ``completion_ids`` (eq. 13's unit; the
    trainer passes them), else characters.

    >>> overlong_penalty(["q"] * 4, ["x" * 6, "x" * 8, "x" * 10, "x" * 12], max_completion_len=10, cache_len=4)
    [0.0, -0.5, -1.0, -1.0]
    >>> overlong_penalty(["q"], ["a long text"], max_completion_len=10, cache_len=4, completion_ids=[[1, 2, 3]])
    [0.0]
    """
    if not 0 < cache_len <= max_completion_len:
        raise ValueError(
            f"overlong_penalty: need 0 < cache_len <= max_completion_len, got {cache_len}, {max_completion_len}"
        )
    soft_start = max_completion_len - cache_len
    out = []
    for n in completion_lengths(completions, completion_ids):
        if n <= soft_start:
            out.append(0.0)
        elif n <= max_completion_len:
            out.append((soft_start - n) / cache_len)
        else:
            out.append(-1.0)
    return out


def cosine_scale(progress: float, at_zero: float, at_full: float) -> float:
    """``at_zero`` at length 0 falling (or rising) along a half cosine to ``at_full`` at ``progress`` 1."""
    p = min(max(progress, 0.0), 1.0)
    return at_full + 0.5 * (at_zero - at_full) * (1.0 + math.cos(p * math.pi))


@register_reward("cosine_length", detailed=True)
def cosine_length(
    prompts: list,
    completions: list,
    answer: list[str],
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
    completion_ids: list[list[int]] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **kwargs: Any,
) -> list[Scored]:
    """Cosine length-scaled correctness (Yeo et al. 2025, open-r1 ``get_cosine_scaled_reward``).

    A correct answer earns ``max_value_correct`` at length 0 falling to ``min_value_correct`` at ``max_len``; a
    wrong one ``min_value_wrong`` at length 0 rising to ``max_value_wrong`` (short wrong answers are punished
    most, long ones less: the model is pushed to think longer when it fails). Lengths past ``max_len`` keep the
    ``max_len`` value (open-r1's cosine would swing back); ``overlong_penalty`` handles those. Correctness is
    ``rewards.math`` against the ``answer`` column, as ``math_accuracy`` judges it (the prompt's rounding request
    included); abstains, with the reason, when the gold cannot be checked against (empty, prose, a number in words,
    unparsable), so a correct answer to such a gold is never punished for its length. Length in tokens with
    ``completion_ids``, else characters.

    >>> done = ["\\\\boxed{4}", "so \\\\boxed{4}", "so \\\\boxed{5}"]
    >>> cosine_length(["q"] * 3, done, answer=["4"] * 3, max_len=100, completion_ids=[[], [7] * 50, [7] * 50])
    [1.0, 0.75, -0.75]
    >>> cosine_length.score(["q"], ["\\\\boxed{5}"], answer=["five"])[0].info["reason"]
    'gold is not math: a number in words'
    """
    # Imported here: the module's imports belong to the other rewards of this file.
    from rewards.math.reward import task_rules
    from rewards.math.verify import judge_batch

    texts = completion_texts(completions)
    judged = judge_batch(answer, texts, timeout_s, task_rules(prompts, len(texts)))
    out = []
    for j, n in zip(judged, completion_lengths(completions, completion_ids), strict=True):
        info = {"length": n, "reason": j.reason}
        if j.verdict is None:
            out.append(Scored(None, info))
            continue
        ok = j.verdict
        at_zero, at_full = (max_value_correct, min_value_correct) if ok else (min_value_wrong, max_value_wrong)
        out.append(Scored(cosine_scale(n / max_len, at_zero, at_full), {"correct": ok, **info}))
    return out


# ---- repetition --------------------------------------------------------------------------------------------


@register_reward("repetition_penalty")
def repetition_penalty(
    prompts: list,
    completions: list,
    ngram_size: int = 3,
    max_penalty: float = -1.0,
    language: str = "en",
    **kwargs: Any,
) -> list[float]:
    """open-r1's n-gram repetition penalty (Yeo et al. 2025, App. C.2): ``max_penalty * (1 - unique / total)``
    over the completion's word n-grams; 0.0 when it has fewer than ``ngram_size`` words.

    Words are lower-cased whitespace tokens for ``language="en"``; for ``zh``/``ja`` the script words of
    ``script_words`` (one per Han/kana character) stand in for open-r1's jieba segmentation.

    >>> repetition_penalty(["q"] * 3, ["a b c a b c", "one two three four", "hi"], max_penalty=-1.0)
    [-0.25, 0.0, 0.0]
    """
    if max_penalty > 0:
        raise ValueError(f"repetition_penalty: max_penalty must be <= 0, got {max_penalty}")
    if ngram_size < 1:
        raise ValueError(f"repetition_penalty: ngram_size must be >= 1, got {ngram_size}")
    out = []
    for text in completion_texts(completions):
        words = text.lower().split() if language == "en" else script_words(text.lower())
        ngrams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        repeated = 1 - len(set(ngrams)) / len(ngrams) if ngrams else 0.0
        out.append(max_penalty * repeated if repeated else 0.0)  # not -0.0
    return out


# ---- peers' format and length rewards (TRL ``think_format_reward``; open-r1 ``reasoning_steps_reward``,
# ``len_reward``, ``get_code_format_reward``), same numbers as theirs: tests/test_rewards_hardening.py ----------

_THINK_FORMAT_RE = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.S | re.M)


@register_reward("think_format_reward")
def think_format_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """TRL's ``think_format_reward``: 1.0 when the completion opens with ``<think>``, closes it, and opens no second
    one; whatever follows ``</think>`` is free. Also takes plain-string completions (TRL's needs chat messages).

    >>> think_format_reward(["q"] * 4, ["<think>\\nhmm\\n</think>\\n4", "<think>\\nhmm\\n4", " <think>a</think>4",
    ...     "<think>a</think><think>b</think>"])
    [1.0, 0.0, 0.0, 0.0]
    """
    return [float(_THINK_FORMAT_RE.match(text) is not None) for text in completion_texts(completions)]


# No re.M: open-r1's ``^\d+\.`` matches a numbered list only at the very start of the text, and so does this.
_STEP_RE = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)")


@register_reward("reasoning_steps_reward")
def reasoning_steps_reward(prompts: list, completions: list, min_steps: int = 3, **kwargs: Any) -> list[float]:
    """open-r1's ``reasoning_steps_reward``: ``min(1, markers / min_steps)``, counting step markers ("Step 2:",
    "First,", "Next,", "Finally,", a line starting with ``-`` or ``*``, a leading "1."). open-r1 fixes
    ``min_steps`` at 3.

    >>> reasoning_steps_reward(["q"] * 3, ["Step 1: add.\\nStep 2: carry.\\nStep 3: done.", "First, add. Next, carry.",
    ...     "It is 4."])
    [1.0, 0.6666666666666666, 0.0]
    """
    if min_steps < 1:
        raise ValueError(f"reasoning_steps_reward: min_steps must be >= 1, got {min_steps}")
    return [min(1.0, len(_STEP_RE.findall(text)) / min_steps) for text in completion_texts(completions)]


def _prompt_key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else repr(prompt)  # chat prompts: lists of message dicts


@register_reward("len_reward", detailed=True)
def len_reward(
    prompts: list,
    completions: list,
    answer: list[str],
    completion_ids: list[list[int]] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **kwargs: Any,
) -> list[Scored]:
    """Kimi 1.5's length reward (§2.3.3; open-r1 ``len_reward``): with ``lam = 0.5 - (len - min_len) /
    (max_len - min_len)`` over the completions of the same prompt, ``lam`` for a correct answer and ``min(0, lam)``
    for a wrong one; 0.0 for every completion of a prompt whose completions all have one length.

    Differences from open-r1, on purpose: min and max are taken per prompt (Kimi's "sampled responses" of one
    question), not over whatever batch the call holds, so they do not depend on how groups are batched (the same
    numbers when the call holds one prompt's group); a gold that cannot be checked against abstains (None, with the
    reason) where open-r1 scores it as correct; correctness is ``rewards.math`` against the ``answer`` column, as
    ``math_accuracy`` judges it (open-r1's ``solution``: map it with ``columns: {answer: solution}``); lengths are
    tokens with ``completion_ids``, else characters (open-r1's unit).

    >>> done = ["\\\\boxed{4}", "so it is \\\\boxed{4}", "so it is \\\\boxed{5}"]
    >>> len_reward(["q"] * 3, done, answer=["4"] * 3, completion_ids=[[7] * 10, [7] * 30, [7] * 20])
    [0.5, -0.5, 0.0]
    """
    from rewards.math.reward import task_rules  # as cosine_length: math_accuracy's verdict, rounding rules included
    from rewards.math.verify import judge_batch

    texts = completion_texts(completions)
    judged = judge_batch(answer, texts, timeout_s, task_rules(prompts, len(texts)))
    lengths = completion_lengths(completions, completion_ids)
    keys = [_prompt_key(p) for p in prompts]
    if len(keys) != len(lengths):
        raise ValueError(f"len_reward: {len(keys)} prompts for {len(lengths)} completions")
    span: dict[str, tuple[int, int]] = {}  # prompt -> (shortest, longest) of its completions
    for k, n in zip(keys, lengths, strict=True):
        lo, hi = span.get(k, (n, n))
        span[k] = (min(lo, n), max(hi, n))
    out = []
    for j, n, k in zip(judged, lengths, keys, strict=True):
        info = {"length": n, "reason": j.reason}
        if j.verdict is None:
            out.append(Scored(None, info))
            continue
        lo, hi = span[k]
        lam = 0.0 if hi == lo else 0.5 - (n - lo) / (hi - lo)
        out.append(Scored(lam if j.verdict else min(0.0, lam), {"correct": j.verdict, **info}))
    return out


@register_reward("code_format_reward")
def code_format_reward(prompts: list, completions: list, language: str = "python", **kwargs: Any) -> list[float]:
    """open-r1's ``get_code_format_reward(language)``: 1.0 for
    ``<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>`` (newlines as written) whose answer holds a fenced
    block tagged ``language``, else 0.0. As with open-r1's pattern (``re.M``), lines after ``</answer>`` are not
    checked.

    >>> ok = "<think>\\nloop\\n</think>\\n<answer>\\n```python\\nprint(1)\\n```\\n</answer>"
    >>> code_format_reward(["q"] * 3, [ok, ok.replace("python", "cpp"), "```python\\nprint(1)\\n```"])
    [1.0, 0.0, 0.0]
    >>> code_format_reward(["q"], [ok.replace("python", "cpp")], language="cpp")
    [1.0]
    """
    pattern = _code_format_re(language)
    return [float(pattern.match(text) is not None) for text in completion_texts(completions)]


def _code_format_re(language: str) -> re.Pattern[str]:
    # open-r1 puts the language into its pattern unescaped; escaped here so that "c++" means the tag c++.
    return re.compile(
        rf"^<think>\n.*?\n</think>\n<answer>\n.*?```{re.escape(language)}.*?```.*?\n</answer>$", re.S | re.M
    )


# The correctness-scaled length rewards check answers as math_accuracy does: its workers start at binding too.
cosine_length.prepare = len_reward.prepare = warm_pool
