"""Dataset adapters: one row in a dataset's published schema -> the question and the columns rewards read.

Selected by ``data.adapter``; the question is then formatted with ``data.template`` (``format_prompt``)::

    gsm8k    {question, answer: "...reasoning...\\n#### 72"}          -> answer "72", solution (the reasoning)
    math     {problem, solution: "...\\boxed{\\frac{1}{2}}", level, type} -> answer "\\frac{1}{2}", + the other columns
    numina   {problem, solution, [answer], source, ...}              -> answer (the ``answer`` column when it holds
                                                                        one, else the solution's last \\boxed{})
    generic  {<data.prompt_column>, answer | tests | ...}              -> every other column unchanged

A row an adapter cannot use (no final answer to check against) maps to None and is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.registry import Registry
from rollouts.tasks import R1_SYSTEM_PROMPT, TEMPLATES


@dataclass(frozen=True)
class Adapted:
    question: str
    columns: dict[str, Any] = field(default_factory=dict)


Adapter = Callable[[dict[str, Any], str], "Adapted | None"]
ADAPTERS: Registry[Adapter] = Registry("dataset adapter")


def _require(row: dict[str, Any], *names: str, adapter: str) -> None:
    missing = [n for n in names if n not in row]
    if missing:
        raise ValueError(
            f"data.adapter={adapter}: the dataset has no column(s) {missing} (it has {sorted(row)}); "
            "pick the adapter matching the dataset's schema, or `generic` with data.prompt_column"
        )


@ADAPTERS.register("gsm8k")
def gsm8k(row: dict[str, Any], prompt_column: str = "question") -> Adapted | None:
    """GSM8K: the gold number follows ``####`` at the end of the worked answer; thousands separators dropped.

    >>> gsm8k({"question": "2 apples and 3 more?", "answer": "2+3=<<2+3=5>>5\\n#### 5"})
    Adapted(question='2 apples and 3 more?', columns={'answer': '5', 'solution': '2+3=<<2+3=5>>5'})
    """
    _require(row, "question", "answer", adapter="gsm8k")
    reasoning, sep, final = str(row["answer"]).rpartition("####")
    final = final.strip().replace(",", "")
    if not sep or not final:
        return None
    return Adapted(str(row["question"]), {"answer": final, "solution": reasoning.strip()})


@ADAPTERS.register("math")
def math_dataset(row: dict[str, Any], prompt_column: str = "problem") -> Adapted | None:
    """MATH (Hendrycks et al.): the gold answer is the solution's last ``\\boxed{}``; level/type are kept for
    ``data.filter``.

    >>> math_dataset({"problem": "1/2+0?", "solution": "It is $\\\\boxed{\\\\frac12}$.", "level": "Level 3"}).columns
    {'answer': '\\\\frac12', 'solution': 'It is $\\\\boxed{\\\\frac12}$.', 'level': 'Level 3'}
    """
    from rewards.math.extract import last_boxed  # here: importing rewards.math loads sympy (~0.5 s)

    _require(row, "problem", "solution", adapter="math")
    answer = last_boxed(str(row["solution"]))
    if not answer:
        return None
    rest = {k: v for k, v in row.items() if k not in ("problem", "answer")}
    return Adapted(str(row["problem"]), {"answer": answer, **rest})


# NuminaMath-1.5 marks rows without a checkable final answer with these in its ``answer`` column.
_NO_ANSWER = {"proof", "notfound"}


@ADAPTERS.register("numina")
def numina(row: dict[str, Any], prompt_column: str = "problem") -> Adapted | None:
    """NuminaMath (CoT / 1.5): ``answer`` column when present and checkable, else the solution's last box.

    >>> numina({"problem": "x?", "solution": "so \\\\boxed{3}", "source": "amc"}).columns["answer"]
    '3'
    >>> numina({"problem": "Show that...", "solution": "QED", "answer": "proof"}) is None
    True
    """
    from rewards.math.extract import last_boxed  # here: importing rewards.math loads sympy (~0.5 s)

    _require(row, "problem", "solution", adapter="numina")
    answer = str(row.get("answer") or "").strip()
    if answer.lower() in _NO_ANSWER:
        return None
    answer = answer or last_boxed(str(row["solution"])) or ""
    if not answer:
        return None
    rest = {k: v for k, v in row.items() if k not in ("problem", "answer", "messages")}
    return Adapted(str(row["problem"]), {"answer": answer, **rest})


@ADAPTERS.register("generic")
def generic(row: dict[str, Any], prompt_column: str = "prompt") -> Adapted | None:
    """``{prompt, answer}`` (math) or ``{prompt, tests}`` (code) JSONL: the question column is named by
    ``data.prompt_column``; every other column goes to the rewards unchanged.

    >>> generic({"prompt": "2+2?", "answer": "4"})
    Adapted(question='2+2?', columns={'answer': '4'})
    """
    if prompt_column not in row:
        raise ValueError(f"data.prompt_column: {prompt_column!r} is not a dataset column (it has {sorted(row)})")
    return Adapted(str(row[prompt_column]), {k: v for k, v in row.items() if k != prompt_column})


PROMPT_TEMPLATES = [*TEMPLATES.names(), "chat"]


def prompt_formatter(template: str, tokenizer=None) -> Callable[[str], str]:
    """``question -> prompt text``: a plain template (``qa``, ``r1``) or ``chat``, the tokenizer's chat template
    with the R1 instruction as the system message and the generation prompt appended.

    >>> prompt_formatter("qa")("1+1")
    'Q: 1+1\\nA:'
    """
    if template != "chat":
        tpl = TEMPLATES.get(template)
        return lambda q: tpl.format(question=q)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "data.template: `chat` needs a tokenizer with a chat template (instruct models); this model's has none, "
            "use data.template: r1"
        )

    def chat(question: str) -> str:
        return tokenizer.apply_chat_template(chat_messages(question), tokenize=False, add_generation_prompt=True)

    return chat


def chat_messages(question: str) -> list[dict[str, str]]:
    """The conversation the ``chat`` template renders (and conversational rewards receive as the prompt).

    >>> [m["role"] for m in chat_messages("1+1?")]
    ['system', 'user']
    """
    return [{"role": "system", "content": R1_SYSTEM_PROMPT}, {"role": "user", "content": question}]
