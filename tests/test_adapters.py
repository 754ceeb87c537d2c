"""Dataset adapters on rows in each dataset's published schema, checked by hand; loading, filtering, templates."""

from __future__ import annotations

import json

import pytest

from core.configio import ConfigError
from rl.config import load_recipe
from rollouts.adapters import ADAPTERS, prompt_formatter
from rollouts.data import load_prompt_sets
from rollouts.tasks import R1_SYSTEM_PROMPT, TEMPLATES

# openai/gsm8k (main), train row 0
GSM8K_ROW = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
    "altogether in April and May.\n#### 72",
}
# Hendrycks MATH: problem, level, type, solution (the answer is the last box, braces nested)
MATH_ROW = {
    "problem": "Compute $\\sin 60^\\circ$.",
    "level": "Level 3",
    "type": "Geometry",
    "solution": "The point is $\\left(\\frac12,\\frac{\\sqrt{3}}{2}\\right)$, so $\\sin 60^\\circ = "
    "\\boxed{\\frac{\\sqrt{3}}{2}}$.",
}
# AI-MO/NuminaMath-CoT: source, problem, solution, messages
NUMINA_COT_ROW = {
    "source": "synthetic_math",
    "problem": "What is $2+3$?",
    "solution": "Adding, $2+3=\\boxed{5}$.",
    "messages": [{"role": "user", "content": "What is $2+3$?"}, {"role": "assistant", "content": "..."}],
}


def test_gsm8k_takes_the_number_after_the_hashes():
    out = ADAPTERS.get("gsm8k")(GSM8K_ROW)
    assert out.question == GSM8K_ROW["question"]
    assert out.columns["answer"] == "72"
    assert out.columns["solution"].endswith("72 clips altogether in April and May.")
    assert ADAPTERS.get("gsm8k")({"question": "q", "answer": "so 1,000 + 234 =\n#### 1,234"}).columns["answer"] == (
        "1234"
    )  # thousands separators dropped
    assert ADAPTERS.get("gsm8k")({"question": "q", "answer": "no final line"}) is None


def test_gsm8k_on_another_schema_names_the_missing_columns():
    with pytest.raises(ValueError, match=r"data\.adapter=gsm8k: the dataset has no column\(s\) \['question'\]"):
        ADAPTERS.get("gsm8k")({"problem": "q", "answer": "#### 1"})


def test_math_takes_the_last_box_with_nested_braces_and_keeps_level():
    out = ADAPTERS.get("math")(MATH_ROW)
    assert out.question == "Compute $\\sin 60^\\circ$."
    assert out.columns["answer"] == "\\frac{\\sqrt{3}}{2}"
    assert out.columns["level"] == "Level 3" and out.columns["type"] == "Geometry"
    assert ADAPTERS.get("math")({**MATH_ROW, "solution": "no box here"}) is None


def test_numina_cot_box_and_numina_15_answer_column():
    out = ADAPTERS.get("numina")(NUMINA_COT_ROW)
    assert (out.question, out.columns["answer"], out.columns["source"]) == ("What is $2+3$?", "5", "synthetic_math")
    assert "messages" not in out.columns  # the worked solution as chat turns: not a reward column
    # NuminaMath-1.5 has an `answer` column; it wins over the box, and "proof" / "notfound" rows are dropped
    row15 = {"problem": "p", "solution": "... \\boxed{6}", "answer": "6", "problem_type": "Algebra"}
    assert ADAPTERS.get("numina")({**row15, "answer": "12"}).columns["answer"] == "12"
    assert ADAPTERS.get("numina")({**row15, "answer": "proof"}) is None
    assert ADAPTERS.get("numina")({**row15, "answer": "notfound"}) is None
    assert ADAPTERS.get("numina")({**row15, "answer": ""}).columns["answer"] == "6"  # empty: the box


def test_generic_passes_every_other_column():
    assert ADAPTERS.get("generic")({"prompt": "2+2?", "answer": "4"}).columns == {"answer": "4"}
    tests = ["assert f(1) == 2"]
    out = ADAPTERS.get("generic")({"question": "write f", "tests": tests, "id": 7}, "question")
    assert (out.question, out.columns) == ("write f", {"tests": tests, "id": 7})
    with pytest.raises(ValueError, match=r"data\.prompt_column: 'prompt' is not a dataset column"):
        ADAPTERS.get("generic")({"question": "q"})


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_load_math_levels_3_to_5_with_the_r1_template(tmp_path):
    rows = [
        {**MATH_ROW, "problem": f"p{i}", "level": f"Level {i % 5 + 1}", "solution": f"\\boxed{{{i}}}"}
        for i in range(20)
    ]
    rows[2]["solution"] = "no box"  # level 3, unusable
    path = _jsonl(tmp_path / "math.jsonl", rows)
    sets = load_prompt_sets(
        task=None,
        path=path,
        split="train",
        prompt_column="prompt",
        template="r1",
        num_train=100,
        num_eval=2,
        seed=0,
        adapter="math",
        filters={"level": ["Level 3", "Level 4", "Level 5"]},
    )
    kept = sets.eval + sets.train
    # levels 3-5 are i % 5 in {2, 3, 4}: 12 of 20 rows, minus the one without a box
    assert len(kept) == 12 - 1 and len(sets.eval) == 2
    assert {p.columns["level"] for p in kept} == {"Level 3", "Level 4", "Level 5"}
    i = int(kept[0].prompt_id.removeprefix("row-"))
    assert kept[0].text == TEMPLATES.get("r1").format(question=f"p{i}") and kept[0].columns["answer"] == str(i)
    assert kept[0].text.endswith(f"User: p{i}. Assistant:")


def test_load_gsm8k_stops_at_num_train_and_is_seeded(tmp_path):
    path = _jsonl(tmp_path / "gsm8k.jsonl", [{"question": f"q{i}", "answer": f"x\n#### {i}"} for i in range(50)])
    kw = dict(task=None, path=path, split="train", prompt_column="prompt", template="qa", num_eval=3, adapter="gsm8k")
    a = load_prompt_sets(num_train=5, seed=1, **kw)
    assert (len(a.eval), len(a.train)) == (3, 5)
    assert [p.prompt_id for p in a.train] == [p.prompt_id for p in load_prompt_sets(num_train=5, seed=1, **kw).train]
    assert [p.prompt_id for p in a.train] != [p.prompt_id for p in load_prompt_sets(num_train=5, seed=2, **kw).train]
    assert all(p.text == f"Q: q{p.columns['answer']}\nA:" for p in a.train)


def test_filter_on_a_missing_column_fails(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "answer": "1"}] * 3)
    with pytest.raises(ValueError, match=r"data\.filter: \['level'\] not column"):
        load_prompt_sets(
            task=None,
            path=path,
            split="train",
            prompt_column="prompt",
            template="qa",
            num_train=2,
            num_eval=1,
            seed=0,
            filters={"level": ["Level 3"]},
        )


def test_local_parquet_and_saved_dataset_directory(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"question": f"q{i}", "answer": f"#### {i}"} for i in range(6)])
    ds.to_parquet(str(tmp_path / "g.parquet"))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    for path, split in ((tmp_path / "g.parquet", "train"), (tmp_path / "saved", "test")):
        sets = load_prompt_sets(
            task=None,
            path=str(path),
            split=split,
            prompt_column="prompt",
            template="qa",
            num_train=10,
            num_eval=1,
            seed=0,
            adapter="gsm8k",
        )
        assert len(sets.train) == 5


class _ChatTokenizer:
    chat_template = "{% for m in messages %}<{{m.role}}>{{m.content}}\n{% endfor %}<assistant>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


def test_chat_template_puts_the_r1_instruction_in_the_system_message():
    fmt = prompt_formatter("chat", _ChatTokenizer())
    assert fmt("What is 2+3?") == f"<system>{R1_SYSTEM_PROMPT}\n<user>What is 2+3?\n<assistant>"


def test_chat_template_with_a_real_tokenizer(tiny_random_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_random_model_dir("qwen3_moe"))
    with pytest.raises(ValueError, match=r"data\.template: `chat` needs a tokenizer with a chat template"):
        prompt_formatter("chat", tok)
    tok.chat_template = _ChatTokenizer.chat_template
    assert prompt_formatter("chat", tok)("2+3?") == f"<system>{R1_SYSTEM_PROMPT}\n<user>2+3?\n<assistant>"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            [
                "data.task=null",
                "data.path=x.jsonl",
                "data.adapter=gsm8",
            ],
            r"data\.adapter: unknown 'gsm8'; known:",
        ),
        (["data.template=r2"], r"data\.template: unknown 'r2'; known: \['none', 'qa', 'r1', 'chat'\]"),
        (["data.adapter=math"], r"data\.adapter / data\.filter: apply to data\.path datasets"),
    ],
)
def test_data_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, overrides)


class _BosTokenizer:
    """A tokenizer that prepends BOS (id 1) as Llama's does: one id per character otherwise."""

    bos_token = "<s>"

    def encode(self, text, add_special_tokens=True):
        body = [1] if text.startswith("<s>") else []
        body += [ord(c) for c in text.removeprefix("<s>")]
        return ([1] if add_special_tokens else []) + body


def test_a_chat_rendered_prompt_gets_one_bos():
    from rollouts.backends import encode_prompt

    tok = _BosTokenizer()
    assert encode_prompt(tok, "<s>User: hi") == [1, *map(ord, "User: hi")]  # the template's BOS, not a second one
    assert encode_prompt(tok, "Q: 1+1\nA:") == [1, *map(ord, "Q: 1+1\nA:")]  # a plain prompt gets the tokenizer's
