from __future__ import annotations

import math

import pytest

from rewards.base import REWARDS, required_columns
from rewards.format import (
    cosine_length,
    language_consistency,
    overlong_penalty,
    r1_format_soft,
    r1_format_strict,
    repetition_penalty,
    tag_count,
)
from rewards.scoring import RewardScorer, RewardSpec, bind_rewards

NAMES = [
    "r1_format_strict",
    "r1_format_soft",
    "tag_count",
    "language_consistency",
    "overlong_penalty",
    "cosine_length",
    "repetition_penalty",
]


def _one(fn, completion, **kw):
    return fn(["q"], [completion], **kw)[0]


def test_registered_and_columns():
    for name in NAMES:
        fn = REWARDS.get(name)
        # Only cosine_length reads a dataset column; every option has a default.
        assert required_columns(fn) == (["answer"] if name == "cosine_length" else []), name


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("\n <think>\nreason\n</think>\n\n<answer>\n42\n</answer>\n", 1.0),  # whitespace around/between blocks
        ("<think>a</think> so <answer>b</answer>", 0.0),  # words between the blocks
        ("Sure! <think>a</think><answer>b</answer>", 0.0),  # words before
        ("<think>a</think><answer>b</answer> Done.", 0.0),  # words after
        ("<answer>b</answer><think>a</think>", 0.0),  # wrong order
        ("<think>a</think>", 0.0),  # no answer block
        ("<answer>b</answer>", 0.0),  # no think block
        ("<think>a<think>b</think><answer>c</answer>", 0.0),  # a tag inside a block
        ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0),  # a second answer
        ("<think>\n</think><answer>b</answer>", 0.0),  # blank think
        ("<think>a</think><answer> </answer>", 0.0),  # blank answer
        ("<think>a</think><answer>b", 0.0),  # cut off
        ("", 0.0),
    ],
)
def test_r1_format_strict(completion, expected):
    assert _one(r1_format_strict, completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("Let me see. <think>a</think> Therefore <answer>b</answer> QED", 1.0),
        ("<think></think><answer></answer>", 1.0),  # soft: empty blocks still show the tags in order
        ("<answer>b</answer><think>a</think>", 0.0),
        ("<think>a</think><answer>b", 0.0),
        ("plain text", 0.0),
    ],
)
def test_r1_format_soft(completion, expected):
    assert _one(r1_format_soft, completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>b</answer>", 4 * 0.25),
        ("<think>a</think>", 2 * 0.25),
        ("<think>a</think><answer>b</answer></answer>", 3 * 0.25),  # </answer> twice earns nothing
        ("<think>a<think>b</think></think><answer>c</answer>", 2 * 0.25),
        ("no tags", 0.0),
    ],
)
def test_tag_count(completion, expected):
    assert _one(tag_count, completion) == expected


def test_conversational_completions_are_scored_by_their_last_message():
    chat = [{"role": "assistant", "content": "<think>a</think><answer>b</answer>"}]
    assert r1_format_strict(["q"], [chat]) == [1.0]
    assert tag_count(["q"], [chat]) == [1.0]
    with pytest.raises(TypeError, match="chat messages"):
        r1_format_strict(["q"], [42])


@pytest.mark.parametrize(
    ("completion", "language", "expected"),
    [
        ("<think>We add two numbers</think><answer>5</answer>", "en", 1.0),
        # words: 我们, 计算 (4 Han characters) + "then" -> 4 of 5 are Chinese
        ("<think>我们计算 then</think>", "zh", 4 / 5),
        ("<think>我们计算 then</think>", "en", 1 / 5),
        # only the think block counts: the English answer is ignored
        ("<think>我们计算</think><answer>The answer is five</answer>", "zh", 1.0),
        # no think block: the whole text is the reasoning
        ("Add them: 先加", "zh", 2 / 4),
        # the prompt opened <think>: the completion starts inside it
        ("reason here</think><answer>数</answer>", "en", 1.0),
        # Japanese: kanji, hiragana and katakana all count; Hangul does not. 計算します = 5 characters; 다 = 1 word
        ("<think>計算します 다</think>", "ja", 5 / 6),
        ("<think>計算します</think>", "zh", 2 / 5),  # kana are not Chinese
        # math, LaTeX commands and numbers are not words: only "So" and "is" are
        ("<think>So $x = \\frac{a}{b}$ is 3 \\cdot 4</think>", "zh", 0 / 2),
        ("<think>Скажем так</think>", "en", 0 / 2),  # Cyrillic is foreign to en
        ("<think>Скажем так</think>", "ru", 2 / 2),
        ("<think>αβ and γ</think>", "en", 1 / 3),  # Greek letters: words of another script
    ],
)
def test_language_consistency(completion, language, expected):
    assert _one(language_consistency, completion, language=language) == pytest.approx(expected)


def test_language_consistency_abstains_without_words_and_rejects_unknown_languages():
    assert language_consistency(["q"], ["<think>2+3=5</think><answer>5</answer>"]) == [None]
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        language_consistency(["q"], ["a"], language="xx")


def test_overlong_penalty_boundaries_in_characters():
    # soft window starts at 100 - 20 = 80: 0 up to 80, (80 - n) / 20 within (80, 100], -1 past 100
    lengths = [0, 80, 81, 90, 100, 101, 500]
    out = overlong_penalty(["q"] * 7, ["x" * n for n in lengths], max_completion_len=100, cache_len=20)
    assert out == [0.0, 0.0, (80 - 81) / 20, (80 - 90) / 20, -1.0, -1.0, -1.0]


def test_overlong_penalty_uses_token_ids_when_given():
    ids = [[1] * 5, [1] * 9]  # 5 tokens (inside the budget) and 9 (half-way through the window 8..10)
    out = overlong_penalty(["q", "q"], ["short", "x" * 1000], max_completion_len=10, cache_len=2, completion_ids=ids)
    assert out == [0.0, (8 - 9) / 2]
    with pytest.raises(ValueError, match="completion_ids has 1 rows for 2"):
        overlong_penalty(["q", "q"], ["a", "b"], completion_ids=[[1]])
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(["q"], ["a"], max_completion_len=10, cache_len=11)


def test_cosine_length_arithmetic():
    # max_len 100; a correct answer at 25 chars: 0.5 + 0.5 * (1.0 - 0.5) * (1 + cos(0.25 pi))
    correct = "\\boxed{7}".rjust(25, ".")
    wrong = "\\boxed{8}".rjust(25, ".")
    out = cosine_length(["q", "q"], [correct, wrong], answer=["7", "7"], max_len=100)
    c = math.cos(0.25 * math.pi)
    assert out == pytest.approx([0.5 + 0.5 * (1.0 - 0.5) * (1 + c), -0.5 + 0.5 * (-1.0 - -0.5) * (1 + c)])


def test_cosine_length_clamps_past_max_len_and_abstains_on_bad_gold():
    long_right = "x" * 300 + "\\boxed{7}"
    out = cosine_length(["q", "q"], [long_right, "\\boxed{7}"], answer=["7", "\\frac{"], max_len=100)
    assert out == [0.5, None]  # past max_len keeps the max_len value (min_value_correct), not cos > pi
    detailed = REWARDS.get("cosine_length").score(["q"], ["\\boxed{7}"], answer=["7"], completion_ids=[[1, 2]])
    assert detailed[0].info == {"correct": True, "length": 2, "reason": "correct"}
    bad_gold = REWARDS.get("cosine_length").score(["q"], ["\\boxed{7}"], answer=["\\frac{"], completion_ids=[[1]])
    assert bad_gold[0].value is None and bad_gold[0].info["reason"] == "gold does not parse"


@pytest.mark.parametrize(
    ("completion", "kw", "expected"),
    [
        # 3-grams of "a b a b a b": aba, bab, aba, bab -> 2 unique of 4
        ("a b a b a b", {}, -1.0 * (1 - 2 / 4)),
        ("A b a B a b", {}, -1.0 * (1 - 2 / 4)),  # lower-cased
        ("a b c d", {}, 0.0),
        ("a b", {}, 0.0),  # fewer words than ngram_size
        ("", {}, 0.0),
        # 2-grams of "x y x y x": xy, yx, xy, yx -> 2 unique of 4, scaled by -0.5
        ("x y x y x", {"ngram_size": 2, "max_penalty": -0.5}, -0.5 * (1 - 2 / 4)),
        # zh: one word per Han character; 2-grams of 好好好好: 好好 x3 -> 1 unique of 3
        ("好好好好", {"ngram_size": 2, "language": "zh"}, -1.0 * (1 - 1 / 3)),
    ],
)
def test_repetition_penalty(completion, kw, expected):
    assert _one(repetition_penalty, completion, **kw) == pytest.approx(expected)


def test_repetition_penalty_rejects_a_positive_penalty():
    with pytest.raises(ValueError, match="max_penalty must be <= 0"):
        repetition_penalty(["q"], ["a"], max_penalty=0.5)


def test_trl_style_call_with_keywords_and_extra_columns():
    # TRL calls reward_func(prompts=..., completions=..., completion_ids=..., **dataset_columns)
    kw = {"prompts": ["q"], "completions": ["<think>a</think><answer>3</answer>"], "completion_ids": [[1, 2, 3]]}
    for name in NAMES:
        out = REWARDS.get(name)(**kw, answer=["3"], solution=["unused"])
        assert len(out) == 1, name


def test_tiny_recipe_rewards_through_the_scorer():
    specs = [RewardSpec("math_accuracy", 1.0), RewardSpec("r1_format_strict", 0.2)]
    scorer = RewardScorer(bind_rewards(specs, ["answer"]))
    done = ["<think>3+5=8</think><answer>8</answer>", "<think>3+5=8</think>8", "<answer>9</answer>"]
    scores = scorer.score(["q"] * 3, done, {"answer": ["8"] * 3})
    assert scores["r1_format_strict"].values == (1.0, 0.0, 0.0)
    assert scores.total == pytest.approx([1.0 + 0.2, 1.0, 0.0])
